"""Hooks through which a host application (ComfyUI) plugs into the core.

The core works standalone with the defaults below. ``nodes/comfy_bridge.py`` replaces
them when the pack is loaded inside ComfyUI, so that model folders come from
``folder_paths`` (``extra_model_paths.yaml`` included), the device follows ComfyUI's
choice, cached models take part in ComfyUI's memory management and cancel works.
Only plain callables live here; this module never imports ComfyUI.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, List, Optional

ENV_MODELS = "TALKINGHEAD_MODELS"
ENV_OFFLINE = "TALKINGHEAD_OFFLINE"


def _default_models_dir() -> Path:
    return Path(os.environ.get("TALKINGHEAD_MODELS_DIR", "models")).resolve()


class Host:
    """The currently installed host hooks (one process-wide instance: :data:`HOST`)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.name = "standalone"
        #: root of the models folder used standalone (``<models_dir>/<folder key>/``)
        self.models_dir: Path = _default_models_dir()
        #: folder key -> directories to search, in order (ComfyUI: folder_paths)
        self.model_folders: Optional[Callable[[str], List[Path]]] = None
        #: "auto" device of the host (ComfyUI: model_management.get_torch_device)
        self.default_device: Optional[Callable[[], object]] = None
        #: device -> bool, whether the host recommends fp16 there
        self.should_use_fp16: Optional[Callable[[object], bool]] = None
        #: called with no argument to empty the device cache (ComfyUI: soft_empty_cache)
        self.empty_cache: Optional[Callable[[], None]] = None
        #: raises when the user asked to cancel (ComfyUI: throw_exception_if_processing_interrupted)
        self.check_interrupt: Optional[Callable[[], None]] = None
        #: memory-manager bridge used by :mod:`.cache` (see ``cache.ModelManager``)
        self.model_manager = None
        #: label -> progress callback ``f(done, total, preview=None)`` (None: nobody listens)
        self.progress_factory: Optional[Callable[[str], Optional[Callable]]] = None
        #: folders file-name inputs are read from (ComfyUI: the input directory)
        self.input_dirs: Callable[[], List[Path]] = lambda: [Path.cwd() / "input", Path.cwd()]
        #: where results are written (ComfyUI: the output / temp directories)
        self.output_dir: Callable[[], Path] = lambda: Path.cwd() / "output"
        self.temp_dir: Callable[[], Path] = lambda: Path.cwd() / "temp"
        #: save-path naming hook (ComfyUI: folder_paths.get_save_image_path), None = core naming
        self.save_path: Optional[Callable] = None

    def configure(self, **hooks) -> None:
        """Install several hooks at once, by name: what a host does when it plugs in (the ComfyUI
        bridge, the headless command line, the frontend stand-in, each with its own values)::

            HOST.configure(output_dir=lambda: out, progress_factory=make_bar)

        A name that is not a hook of :meth:`reset` is refused (a misspelt one would otherwise leave
        the default silently in place); nothing is set then."""
        unknown = sorted(set(hooks) - HOOKS)
        if unknown:
            raise TypeError(f"unknown host hook(s) {', '.join(unknown)}; the hooks are {', '.join(sorted(HOOKS))}")
        for name, value in hooks.items():
            setattr(self, name, value)

    def progress(self, label: str = ""):
        """A progress callback ``f(done, total, preview=None)`` for one loop (None when nobody listens)."""
        return self.progress_factory(label) if self.progress_factory is not None else None

    def folders_for(self, key: str) -> List[Path]:
        if self.model_folders is not None:
            return [Path(p) for p in self.model_folders(key)]
        return [self.models_dir / key]


#: the names :meth:`Host.configure` takes: every attribute :meth:`Host.reset` sets
HOOKS = frozenset(vars(Host()))
HOST = Host()
