"""Workflows saved before LoadLivePortrait (pack 0.2): read them as they were, run them as they are now.

Up to 0.2 every LivePortrait node (LivePortraitExtractMotion, LivePortraitRender, LivePortraitRenderVideo,
ProceduralMotion, MotionDiT) chose and loaded the model set itself, with its own ``model``, ``precision``,
``device`` and ``auto_download`` widgets. Since 0.3 one LoadLivePortrait node makes that choice and every
one of them takes its ``liveportrait`` output.

* :func:`upgrade_api` turns an old API-format prompt into the new graph: one LoadLivePortrait node per
  distinct choice of the old widgets, linked to every node that made it.
* :func:`legacy_registry` is the node registry with those five nodes declared as they were, so that an old
  UI-format file (whose widget values are stored by position) converts to an API prompt correctly before
  :func:`upgrade_api`; :func:`is_legacy_ui` says whether a UI workflow needs it.

The headless runner applies both and says what it changed. Inside ComfyUI an old file fails validation with
"Required input is missing: liveportrait"; the fix is the same: add LoadLivePortrait (category
TalkingHead/loaders) and connect it to those nodes' ``liveportrait`` inputs.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..core import liveportrait as lp
from . import specs
from .base import NODE_CLASS_MAPPINGS, PREFIX

#: the old widgets that chose the model set, with their old defaults
SETTINGS = {"model": "human", "precision": "auto", "device": "auto", "auto_download": True}
_OLD_SPECS = {"model": (list(lp.VARIANTS), {"default": "human"}), "precision": specs.precision(),
              "device": specs.device(), "auto_download": specs.auto_download()}
_RENDER = (["portrait", "motion", "relative", "region", "stitching", "multiplier", "batch_size", "precision"],
           ["expression_friendly", "normalize_lip", "paste_back", "device", "keep_model_loaded", "auto_download",
            "model"])
#: node -> (required, optional) input names in their 0.2 order (which is the order of a UI file's widgets)
OLD_INPUTS = {
    "LivePortraitExtractMotion": (["driving", "fps", "crop", "detector", "batch_size", "precision"],
                                  ["device", "auto_download", "model"]),
    "LivePortraitRender": _RENDER,
    "LivePortraitRenderVideo": (_RENDER[0] + ["fps", "filename_prefix"],
                                _RENDER[1] + ["audio", "crf", "preset", "save_output"]),
    "ProceduralMotion": (["portrait", "audio", "fps", "seed", "lip_strength", "head_strength", "blinks"],
                         ["precision", "device", "auto_download", "model"]),
    "MotionDiT": (["embeddings", "portrait", "checkpoint", "steps", "guidance_scale", "seed", "pose_strength",
                   "expression_strength", "lip_strength", "emotion"],
                  ["eye_open", "precision", "device", "keep_model_loaded", "auto_download", "model"]),
}
#: MotionDiT keeps its own device and auto_download (for the motion model); the others lose all four
_KEPT = {"MotionDiT": ("device", "auto_download")}


def _legacy_class(cls: type, required: List[str], optional: List[str]) -> type:
    def input_types(c):
        now = cls.INPUT_TYPES()
        known = {**now.get("required", {}), **now.get("optional", {})}
        out = {"required": {n: known.get(n, _OLD_SPECS.get(n)) for n in required},
               "optional": {n: known.get(n, _OLD_SPECS.get(n)) for n in optional}}
        if "hidden" in now:
            out["hidden"] = now["hidden"]
        return out
    return type(cls.__name__ + "_0_2", (cls,), {"INPUT_TYPES": classmethod(input_types)})


def legacy_registry(registry: Dict[str, type]) -> Dict[str, type]:
    """``registry`` with the five LivePortrait nodes declared as in 0.2 (for converting old UI files)."""
    out = dict(registry)
    for name, (required, optional) in OLD_INPUTS.items():
        node_id = PREFIX + name
        if node_id in NODE_CLASS_MAPPINGS:
            out[node_id] = _legacy_class(NODE_CLASS_MAPPINGS[node_id], required, optional)
    return out


def _is_old(class_type: Any) -> bool:
    return isinstance(class_type, str) and class_type.startswith(PREFIX) and class_type[len(PREFIX):] in OLD_INPUTS


def is_legacy_ui(workflow: dict) -> bool:
    """True when a UI-format workflow has a LivePortrait node without a ``liveportrait`` input slot."""
    for node in workflow.get("nodes", []) if isinstance(workflow, dict) else []:
        if isinstance(node, dict) and _is_old(node.get("type")):
            slots = {s.get("name") for s in node.get("inputs") or [] if isinstance(s, dict)}
            if "liveportrait" not in slots:
                return True
    return False


def upgrade_api(prompt: Dict[str, dict]) -> Tuple[Dict[str, dict], List[str]]:
    """An API prompt with every 0.2 LivePortrait node rewired to a LoadLivePortrait node; returns the new
    prompt and one line per change (empty when nothing was old). The input prompt is not modified."""
    out = {key: dict(node, inputs=dict(node.get("inputs", {}))) if isinstance(node, dict) else node
           for key, node in prompt.items()}
    loaders: Dict[Tuple, str] = {}
    notes: List[str] = []
    numeric = [int(k) for k in out if str(k).isdigit()]
    next_id = max(numeric, default=0) + 1
    for key in list(out):
        node = out[key]
        if not isinstance(node, dict) or not _is_old(node.get("class_type")) or "liveportrait" in node["inputs"]:
            continue
        name = node["class_type"][len(PREFIX):]
        inputs = node["inputs"]
        kept = _KEPT.get(name, ())
        choice = {s: (inputs.get(s, default) if s in kept else inputs.pop(s, default))
                  for s, default in SETTINGS.items()}
        linked = [s for s, v in choice.items() if isinstance(v, list)]
        if linked:
            raise ValueError(f"node {key} ({name}) has a linked {', '.join(linked)} input, which LoadLivePortrait "
                             f"cannot take over; add LoadLivePortrait by hand")
        spot = tuple(sorted(choice.items()))
        if spot not in loaders:
            while str(next_id) in out:
                next_id += 1
            loaders[spot] = str(next_id)
            out[str(next_id)] = {"inputs": dict(choice), "class_type": PREFIX + "LoadLivePortrait",
                                 "_meta": {"title": "liveportrait"}}
            next_id += 1
        inputs["liveportrait"] = [loaders[spot], 0]
        notes.append(f"node {key} ({name}): its model set ({choice['model']}, precision {choice['precision']}, "
                     f"device {choice['device']}) now comes from LoadLivePortrait node {loaders[spot]}")
    if notes:
        notes.append("in ComfyUI this file fails with \"Required input is missing: liveportrait\": add a "
                     "LoadLivePortrait node (TalkingHead/loaders), connect it to those nodes' liveportrait input "
                     "and save the workflow again")
    return out, notes


__all__ = ["OLD_INPUTS", "is_legacy_ui", "legacy_registry", "upgrade_api"]
