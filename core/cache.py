"""One process-wide model cache: each checkpoint is loaded once and reused across runs.

Entries are keyed by (family, file, file size + mtime, device, dtype, extra), so a replaced
file loads anew. :meth:`ModelCache.unload` really frees memory: the cache drops its only
reference, the host's memory manager lets go, and the device cache is emptied.

Inside ComfyUI a :class:`ModelManager` bridge (installed through :data:`.host.HOST`) wraps each
module in ComfyUI's ModelPatcher and asks ComfyUI to load it before every use, so ComfyUI's
"free memory" and other packs' models can evict ours (they move to the offload device and
come back on the next use). Standalone, models simply live on their compute device.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, List, Optional, Protocol, Tuple

import torch

from .device import empty_cache
from .host import HOST


class ModelManager(Protocol):
    """What a host memory manager offers the cache (see ``nodes/comfy_bridge.py``)."""

    def register(self, module: torch.nn.Module, device: torch.device) -> Any: ...

    def load(self, handles: List[Any]) -> None:
        """Make all of one model's parts resident together (one request, so loading one part can
        never evict another part of the same model)."""

    def release(self, handle: Any) -> None: ...


@dataclass
class CachedModel:
    key: Tuple
    family: str
    model: Any
    device: torch.device
    dtype: torch.dtype
    handle: Any = None
    info: Dict[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.family}: {self.info.get('file', self.key[1])} on {self.device} ({str(self.dtype).replace('torch.', '')})"


def file_key(path) -> Tuple:
    """Identity of a file on disk: path, size and modification time."""
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_size, st.st_mtime_ns)


def _modules(model: Any) -> List[torch.nn.Module]:
    if isinstance(model, torch.nn.Module):
        return [model]
    if isinstance(model, dict):
        return [m for m in model.values() if isinstance(m, torch.nn.Module)]
    if isinstance(model, (list, tuple)):
        return [m for m in model if isinstance(m, torch.nn.Module)]
    mods = getattr(model, "modules_for_cache", None)
    return list(mods()) if callable(mods) else []


class ModelCache:
    def __init__(self) -> None:
        self._entries: Dict[Tuple, CachedModel] = {}
        self._lock = threading.RLock()

    def get(self, family: str, key: Hashable, loader: Callable[[], Any], device: torch.device,
            dtype: torch.dtype = torch.float32, info: Optional[Dict[str, Any]] = None) -> Any:
        """The cached model for ``key``, loading it with ``loader()`` the first time.

        ``loader`` returns a module (or a dict/list of modules, or an object with
        ``modules_for_cache()``); the cache puts it in eval mode on ``device``/``dtype`` and, inside
        ComfyUI, hands it to ComfyUI's memory manager. Every call makes sure it is on the device.
        """
        full_key = (family, key, str(device), str(dtype))
        with self._lock:
            entry = self._entries.get(full_key)
            if entry is None:
                model = loader()
                manager = HOST.model_manager
                for m in _modules(model):
                    m.eval().requires_grad_(False)
                    # with a host manager the module waits on the CPU; the manager moves it
                    m.to(dtype=dtype) if manager is not None else m.to(device=device, dtype=dtype)
                entry = CachedModel(full_key, family, model, device, dtype, info=dict(info or {}))
                if manager is not None:
                    entry.handle = [manager.register(m, device) for m in _modules(model)]
                self._entries[full_key] = entry
            manager = HOST.model_manager
            if manager is not None and entry.handle:
                manager.load(list(entry.handle))
            return entry.model

    def entries(self, family: Optional[str] = None) -> List[CachedModel]:
        with self._lock:
            return [e for e in self._entries.values() if family in (None, "all", e.family)]

    def families(self) -> List[str]:
        return sorted({e.family for e in self.entries()})

    def unload(self, family: Optional[str] = None, key: Optional[Hashable] = None) -> int:
        """Drop cached models (all, one family, or one key); returns how many were dropped."""
        with self._lock:
            victims = [k for k, e in self._entries.items()
                       if family in (None, "all", e.family) and (key is None or k[1] == key)]
            dropped = [self._entries.pop(k) for k in victims]
        manager = HOST.model_manager
        for entry in dropped:
            if manager is not None and entry.handle:
                for h in entry.handle:
                    manager.release(h)
            for m in _modules(entry.model):
                # move parameters off the GPU even if someone else still holds a reference
                if any(p.device.type != "cpu" for p in m.parameters()):
                    m.to("cpu")
            entry.model = None
            entry.handle = None
        del dropped
        empty_cache()
        return len(victims)


#: the pack's one cache
CACHE = ModelCache()
