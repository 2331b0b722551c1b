"""First Order Motion Model (vox-256): networks, official-checkpoint loading, batched inference.

Library use::

    from core.fom import get_fom, animate
    fom = get_fom("vox-cpk.pth.tar")                      # cached; or load_fom(path) uncached
    frames = animate(fom, portrait, driving, relative=True, adapt_movement_scale=True)
"""
from __future__ import annotations

import torch

from .. import weights
from ..cache import CACHE, file_key
from ..device import resolve_device
from .animate import (RESOLUTION, animate, animate_stream, find_best_frame, hull_area, keypoints,
                      movement_scale, normalize_kp, prepare_source, render, to_model_input)
from .load import FOM, infer_config, load_fom, preset

FILE_ID = "fom/vox-256"


def get_fom(checkpoint: str = "vox-cpk.pth.tar", device="auto", download: bool = True) -> FOM:
    """The checkpoint (a name in the ``fom`` models folder, or the official file) loaded once,
    optimised for inference (:meth:`FOM.optimize_for_inference`) and cached; the networks stay in
    float32 (half precision comes from autocast at run time)."""
    path = weights.resolve_choice(FILE_ID, checkpoint, download=download)
    dev = resolve_device(device)
    return CACHE.get("fom", file_key(path), lambda: load_fom(path).optimize_for_inference(), dev, torch.float32,
                     info={"file": path.name})


__all__ = ["FOM", "FILE_ID", "RESOLUTION", "animate", "animate_stream", "find_best_frame", "get_fom", "hull_area",
           "infer_config", "keypoints", "load_fom", "movement_scale", "normalize_kp", "prepare_source", "preset",
           "render", "to_model_input"]
