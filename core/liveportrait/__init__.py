"""LivePortrait: the five official networks, checkpoint loading, the shared motion type, the
official driving-keypoint rules, batched rendering, the official crop and paste-back.

Library use::

    from core.liveportrait import get_liveportrait, prepare_source, extract_motion, render_frames
    models = get_liveportrait()                                # cached; official files from models/liveportrait
    source = prepare_source(models, face_crop_256)             # once per portrait
    motion = extract_motion(models, driving_crops, fps=25)     # or a Motion from MotionDiT / procedural
    x_d = driving_keypoints(source.motion, motion, DriveOptions(), models.stitching, models.lip, models.eye)
    for frames in render_frames(models, source, x_d, batch_size=4): ...
    # or, from LoadPortrait's portrait, straight into an mp4 with memory bounded by one batch:
    source = portrait_source(models, portrait)
    x_d = motion_keypoints(models, source, motion)
    with VideoWriter(path, fps=motion.fps, audio=audio, expected_frames=len(x_d)) as writer:
        render_to_video(models, source, x_d, writer, full=portrait.full)
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from .. import weights
from ..cache import CACHE, file_key
from ..device import resolve_device
from ..errors import CheckpointError, WeightsMissingError
from .load import (INPUT_SIZE, KINDS, OUTPUT_SIZE, LivePortraitConfig, LivePortraitModels, load_liveportrait,
                   load_module, load_retargeting, preset)
from .motion import DriveOptions, Motion, SourceMotion, driving_keypoints
from .render import (MASK_TEMPLATE, LivePortraitSource, extract_motion, mask_template, motion_keypoints,
                     portrait_source, prepare_source, render_frames, render_pasted, render_to_video, warp_decode)

PRESETS = ("liveportrait", "tiny")


#: model sets: the human models, and the animal ones (v1.1 the official default, v1.0 the first release).
#: The animal sets reuse the human stitching/retargeting file, as the official code does.
VARIANTS = ("human", "animal", "animal v1.0")
_VARIANT_PREFIX = {"human": "liveportrait", "animal": "liveportrait_animals", "animal v1.0": "liveportrait_animals_v1.0"}


def file_ids(variant: str = "human") -> Dict[str, str]:
    """Manifest ids of the five files of a model set (see :data:`VARIANTS`)."""
    if variant not in _VARIANT_PREFIX:
        raise ValueError(f"unknown LivePortrait model set {variant!r}; choose one of {', '.join(VARIANTS)}")
    prefix = _VARIANT_PREFIX[variant]
    return {kind: f"{'liveportrait' if kind == 'stitching_retargeting_module' else prefix}/{kind}" for kind in KINDS}


def detect_preset(appearance_path) -> dict:
    """The shipped config whose appearance-extractor shapes match the file (official or tiny)."""
    from ..weights import load_state_dict
    from .appearance import AppearanceFeatureExtractor

    state = load_state_dict(appearance_path)
    official = None
    for name in PRESETS:
        cfg = preset(name)
        with torch.device("meta"):
            module = AppearanceFeatureExtractor(**cfg["model_params"]["appearance_feature_extractor_params"])
        official = official or module
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        if expected == {k: tuple(v.shape) for k, v in state.items()}:
            return cfg
    # say what the file is instead: the family it looks like, and its keys against the official model's
    details = ""
    try:
        weights.check_state_dict(official, state, "the file")
    except CheckpointError as exc:
        details = "\n" + str(exc).split("\n", 1)[-1] + " (compared with the official file)"
    raise CheckpointError(f"{Path(appearance_path).name} matches no known LivePortrait configuration "
                          f"({', '.join(PRESETS)}); is it a LivePortrait appearance_feature_extractor?"
                          f"{weights.looks_like(state, 'liveportrait/appearance')}{details}")


def resolve_paths(variant: str = "human", download: bool = True, folder: Optional[Path] = None) -> Dict[str, Path]:
    """The five files: all from ``folder`` if given, else through the weights manager.

    A folder is one model set: when any of its five files is missing it is an error, never a fallback
    to the models folders or a download, which could mix files of different sets (human and animal,
    official and fine-tuned) into one renderer."""
    ids = file_ids(variant)
    if folder is None:
        return {kind: weights.resolve(fid, download=download) for kind, fid in ids.items()}
    folder = Path(folder).expanduser()
    out, missing = {}, []
    for kind, fid in ids.items():
        names = weights.model_file(fid).names
        found = next((folder / n for n in names if (folder / n).is_file()), None)
        if found is None:
            missing.append(kind)
        else:
            out[kind] = found.resolve()
    if missing:
        raise WeightsMissingError(
            f"The LivePortrait folder {folder} lacks {len(missing)} of the five files of the {variant!r} set: "
            f"{', '.join(missing)} (as NAME.pth or NAME.safetensors, directly in the folder or under "
            f"base_models/ and retargeting_models/ as the official release lays them out).\n"
            f"A folder given for LivePortrait must hold the whole set (the files of one release, as listed "
            f"in weights/README.md); nothing is taken from elsewhere, so sets are never mixed. Put the "
            f"missing files there, or leave the folder unset to use the models folders.")
    return out


def get_liveportrait(variant: str = "human", device="auto", download: bool = True,
                     folder: Optional[Path] = None) -> LivePortraitModels:
    """All networks, loaded once (configuration detected from the files), optimised for inference
    (:meth:`LivePortraitModels.optimize_for_inference`) and cached."""
    paths = resolve_paths(variant, download, folder)
    dev = resolve_device(device)
    key = tuple(file_key(p) for p in paths.values())

    def load() -> LivePortraitModels:
        return load_liveportrait(paths, detect_preset(paths[KINDS[0]])).optimize_for_inference()

    return CACHE.get("liveportrait", key, load, dev, torch.float32, info={"file": f"LivePortrait ({variant})"})


__all__ = ["DriveOptions", "INPUT_SIZE", "KINDS", "OUTPUT_SIZE", "VARIANTS", "LivePortraitConfig",
           "LivePortraitModels", "LivePortraitSource", "MASK_TEMPLATE", "Motion", "SourceMotion", "detect_preset",
           "driving_keypoints", "extract_motion", "file_ids", "get_liveportrait", "load_liveportrait", "load_module",
           "load_retargeting", "mask_template", "motion_keypoints", "portrait_source", "preset", "prepare_source",
           "render_frames", "render_pasted", "render_to_video", "resolve_paths", "warp_decode"]
