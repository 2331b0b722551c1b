"""Input declarations shared by the nodes, written once.

A node declares its inputs as data, ``INPUTS = {"required": {...}, "optional": {...}, "hidden": {...}}``;
:func:`nodes.base.register` turns that into ComfyUI's ``INPUT_TYPES``. A value may be a zero-argument
callable (:func:`dynamic`) for what must be read anew each time ComfyUI asks, such as the files in the
input or models folders. The specs below are the ones many nodes share (device, precision,
auto_download, keep loaded, the pack's own sockets), so their wording and defaults agree everywhere.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping

from ..core.device import DEVICE_CHOICES, PRECISION_CHOICES

#: the pack's own socket types
PORTRAIT_TYPE = "TALKINGHEAD_PORTRAIT"
MOTION_TYPE = "TALKINGHEAD_MOTION"
EMBEDS_TYPE = "TALKINGHEAD_AUDIO_EMBEDS"
LIVEPORTRAIT_TYPE = "TALKINGHEAD_LIVEPORTRAIT"
#: a video as a :class:`core.frames.FrameStream`: made batch by batch when the next node pulls it
FRAMES_TYPE = "TALKINGHEAD_FRAMES"


class dynamic:  # noqa: N801 - reads as a marker in the declarations
    """An input spec computed each time ComfyUI reads the node's inputs (file lists, checkpoints)."""

    def __init__(self, make: Callable[[], tuple]) -> None:
        self.make = make

    def __call__(self) -> tuple:
        return self.make()


def input_types(inputs: Mapping[str, Mapping[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """``INPUTS`` -> ComfyUI's ``INPUT_TYPES()`` dict (dynamic specs evaluated now)."""
    return {section: {name: (spec() if isinstance(spec, dynamic) else spec) for name, spec in entries.items()}
            for section, entries in inputs.items()}


def device(tooltip: str = "Where the networks run.") -> tuple:
    return (DEVICE_CHOICES, {"default": "auto", "tooltip": tooltip})


def precision(tooltip: str = "auto = fp16 on a GPU, fp32 on the CPU.") -> tuple:
    return (PRECISION_CHOICES, {"default": "auto", "tooltip": tooltip})


def auto_download(what: str = "missing weights") -> tuple:
    return ("BOOLEAN", {"default": True, "tooltip": f"Download {what} into the models folder."})


def keep_loaded(what: str = "the networks") -> tuple:
    return ("BOOLEAN", {"default": True, "tooltip": f"Keep {what} cached for the next run (off: free them "
                                                    f"when this node is done)."})


def seed(tooltip: str) -> tuple:
    return ("INT", {"default": 0, "min": 0, "max": 2 ** 32 - 1, "tooltip": tooltip})


def fps(tooltip: str, maximum: float = 240.0) -> tuple:
    return ("FLOAT", {"default": 25.0, "min": 1.0, "max": maximum, "step": 0.01, "tooltip": tooltip})


def batch_size(default: int, maximum: int, tooltip: str) -> tuple:
    return ("INT", {"default": default, "min": 1, "max": maximum, "step": 1, "tooltip": tooltip})


def liveportrait(tooltip: str = "The LivePortrait model set, from LoadLivePortrait (load it once, connect it to "
                                "every LivePortrait node).") -> tuple:
    return (LIVEPORTRAIT_TYPE, {"tooltip": tooltip})


def portrait(tooltip: str = "From LoadPortrait.") -> tuple:
    return (PORTRAIT_TYPE, {"tooltip": tooltip})


def frames(tooltip: str) -> tuple:
    return (FRAMES_TYPE, {"tooltip": tooltip})


def motion(tooltip: str) -> tuple:
    return (MOTION_TYPE, {"tooltip": tooltip})


#: the hidden inputs of nodes that embed the workflow in the files they write (like ComfyUI's save nodes)
SAVE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}
#: the hidden inputs of nodes with an IMAGE output made only when something is connected to it
#: (:func:`nodes.base.linked_outputs`)
GRAPH_HIDDEN = {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}

__all__ = ["EMBEDS_TYPE", "FRAMES_TYPE", "GRAPH_HIDDEN", "LIVEPORTRAIT_TYPE", "MOTION_TYPE", "PORTRAIT_TYPE",
           "SAVE_HIDDEN", "auto_download", "batch_size", "device", "dynamic", "fps", "frames", "input_types",
           "keep_loaded", "liveportrait", "motion", "portrait", "precision", "seed"]
