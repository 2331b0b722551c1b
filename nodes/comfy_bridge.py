"""Connect the core to ComfyUI when (and only when) the pack runs inside it.

Imported by the pack's ``__init__``; outside ComfyUI ``install()`` finds no ``folder_paths`` /
``comfy`` modules and leaves the standalone defaults of :data:`core.host.HOST` in place.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from ..core import weights
from ..core.host import HOST


class ComfyModelManager:
    """Our cached modules as ComfyUI ModelPatchers, loaded through ``load_models_gpu``."""

    def __init__(self, mm, patcher_cls) -> None:
        self.mm = mm
        self.patcher_cls = patcher_cls

    def register(self, module, device):
        if _read_only_device(module):
            # ComfyUI's ModelPatcher assigns ``model.device`` when it loads/offloads; modules that expose
            # ``device`` as a read-only property (transformers models, SDAModel) travel in a holder
            module = _DeviceHolder(module, device)
        return self.patcher_cls(module, load_device=device, offload_device=self.mm.unet_offload_device())

    def load(self, patchers) -> None:
        # one call for all parts of a model: ComfyUI frees memory for the whole list and keeps the
        # list's members loaded, where one call per part could evict the parts loaded just before
        self.mm.load_models_gpu(list(patchers))

    def release(self, patcher) -> None:
        loaded = self.mm.current_loaded_models
        for lm in list(loaded):
            if lm.model is patcher:
                lm.model_unload()
                loaded.remove(lm)
        patcher.model.to(self.mm.unet_offload_device())


def _read_only_device(module) -> bool:
    attr = getattr(type(module), "device", None)
    return isinstance(attr, property) and attr.fset is None


class _DeviceHolder(torch.nn.Module):
    """A plain module around ``inner`` with a writable ``device`` attribute (moving it moves ``inner``)."""

    def __init__(self, inner, device) -> None:
        super().__init__()
        self.inner = inner
        self.device = torch.device(device) if device is not None else None


def _preview(preview):
    """Our previews are IMAGE tensors [H,W,3] 0..1; ComfyUI wants ("JPEG", PIL image, size)."""
    if preview is None:
        return None
    from PIL import Image
    import numpy as np

    arr = (preview.detach().float().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    return ("JPEG", Image.fromarray(arr), 512)


def install() -> bool:
    try:
        import folder_paths
        import comfy.model_management as mm
        import comfy.utils
        from comfy.model_patcher import ModelPatcher
    except ImportError:
        return False

    for key in weights.model_folders():
        path = os.path.join(folder_paths.models_dir, key)
        if hasattr(folder_paths, "add_model_folder_path"):
            folder_paths.add_model_folder_path(key, path)
        elif key not in folder_paths.folder_names_and_paths:
            folder_paths.folder_names_and_paths[key] = ([path], set())

    def model_folders(key):
        try:
            return [Path(p) for p in folder_paths.get_folder_paths(key)]
        except KeyError:
            return [Path(folder_paths.models_dir) / key]

    def save_path(output_dir, prefix, ext, width=0, height=0):
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, str(output_dir), width, height)
        filename = f"{name}_{counter:05}_.{ext}"
        return Path(folder) / filename, subfolder, filename

    def progress_factory(label=""):
        bars = []

        def update(done, total, preview=None):
            if not bars:
                bars.append(comfy.utils.ProgressBar(total))
            bars[0].update_absolute(done, total, _preview(preview))
        return update

    HOST.configure(
        name="comfyui",
        models_dir=Path(folder_paths.models_dir),
        model_folders=model_folders,
        default_device=mm.get_torch_device,
        should_use_fp16=lambda device: bool(mm.should_use_fp16(device)),
        empty_cache=mm.soft_empty_cache,
        check_interrupt=mm.throw_exception_if_processing_interrupted,
        model_manager=ComfyModelManager(mm, ModelPatcher),
        progress_factory=progress_factory,
        input_dirs=lambda: [Path(folder_paths.get_input_directory())],
        output_dir=lambda: Path(folder_paths.get_output_directory()),
        temp_dir=lambda: Path(folder_paths.get_temp_directory()),
        save_path=save_path,
    )
    return True
