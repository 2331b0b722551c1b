"""Audio -> LivePortrait motion nodes: ProceduralMotion (no motion model needed), AudioToEmbedding and
MotionDiT (Ditto LMDM / JoyVASA)."""
from __future__ import annotations

from ..core import liveportrait as lp
from ..core.device import DEVICE_CHOICES, PRECISION_CHOICES
from ..core.motion import procedural
from .base import CATEGORY, register
from .liveportrait import MOTION_TYPE
from .portrait import PORTRAIT_TYPE

_LP_MODEL = ("model", (list(lp.VARIANTS), {"default": "human", "tooltip": "LivePortrait model set used to read "
                                                                          "the portrait's own pose (use the "
                                                                          "renderer's)."}))


def _source(portrait, device, precision, download, model):
    models = lp.get_liveportrait(model, device=device, download=download)
    return lp.portrait_source(models, portrait, device=device, precision=precision)


@register("ProceduralMotion", "ProceduralMotion")
class ProceduralMotion:
    DESCRIPTION = ("A talking head without any motion model: the mouth opens with the loudness of the speech, "
                   "the eyes blink naturally and the head moves a little. Needs only the LivePortrait weights. "
                   "Connect the motion to LivePortraitRender, which drives the mouth and eyes through "
                   "LivePortrait's retargeting networks.")
    CATEGORY = f"{CATEGORY}/motion"
    FUNCTION = "run"
    RETURN_TYPES = (MOTION_TYPE, "FLOAT")
    RETURN_NAMES = ("motion", "fps")
    OUTPUT_TOOLTIPS = ("Per-frame motion for this portrait (one frame per video frame of the audio).",
                       "The frame rate (connect it to MuxVideo).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "portrait": (PORTRAIT_TYPE, {"tooltip": "From LoadPortrait (its own pose is the starting point)."}),
                "audio": ("AUDIO", {"tooltip": "The speech."}),
                "fps": ("FLOAT", {"default": 25.0, "min": 1.0, "max": 120.0, "step": 0.01,
                                  "tooltip": "Frames per second of the video."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2 ** 32 - 1,
                                 "tooltip": "Blinks and head motion; the same seed gives the same motion."}),
                "lip_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.5, "step": 0.05,
                                           "tooltip": "How wide the mouth opens on loud speech."}),
                "head_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05,
                                            "tooltip": "Amount of head motion (0 = still)."}),
                "blinks": ("BOOLEAN", {"default": True, "tooltip": "Natural blinks every 2.5 to 6 seconds."}),
            },
            "optional": {
                "precision": (PRECISION_CHOICES, {"default": "auto", "tooltip": "auto = fp16 on GPU, fp32 on CPU."}),
                "device": (DEVICE_CHOICES, {"default": "auto", "tooltip": "Where the networks run."}),
                "auto_download": ("BOOLEAN", {"default": True, "tooltip": "Download missing LivePortrait weights."}),
                _LP_MODEL[0]: _LP_MODEL[1],
            },
        }

    def run(self, portrait, audio, fps, seed, lip_strength, head_strength, blinks, precision="auto", device="auto",
            auto_download=True, model="human"):
        source = _source(portrait, device, precision, auto_download, model)
        motion = procedural.procedural_motion(
            audio, source.motion, seed=seed, lip_strength=lip_strength, head_strength=head_strength, fps=fps,
            blink_interval=procedural.DEFAULT_BLINK_INTERVAL if blinks else None)
        return (motion, float(fps))


__all__ = ["ProceduralMotion"]
