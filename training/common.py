"""What every part of the training package shares: the layout constants of the cached data and of
the condition, the seed helpers every random draw goes through, and the log helper."""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Callable, Optional, Union

import torch

from ..core.motion.ditto.compose import LAYOUT, SLICES
from ..core.motion.ditto.conditions import AUDIO_DIM, EMO_DIM, EYE_BALL_DIM, EYE_OPEN_DIM, SC_DIM
from ..core.motion.ditto.model import RELEASED

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

#: the audio features the released LMDM was trained on (recorded in every checkpoint written here)
AUDIO_SPEC = {"encoder": "hubert-large-ls960-ft", "layer": "last_hidden_state", "chunking": "ditto-offline",
              "dim": 1024}
COND_LAYOUT = "hubert 1024 | emo 8 | eye_open 2 | eye_ball 6 | sc 63"
CLIP_FORMAT = "talkinghead.ditto-train-clip"
CLIP_VERSION = "1"
SEQ_FRAMES = RELEASED["seq_frames"]
MIN_FRAMES = SEQ_FRAMES + 1          # one window needs its cond_frame before it
EYE_DIM = EYE_OPEN_DIM + EYE_BALL_DIM
COND_DIM = AUDIO_DIM + EMO_DIM + EYE_DIM + SC_DIM
#: Ditto's eye-open ratio (sum of three lid distances / eye width, MediaPipe indices of
#: ``eye_features``) measured on MediaPipe's canonical face mesh (open eyes, identical for both
#: eyes); ``eye_ball`` of a centred iris is exactly 0. The neutral eye condition when no
#: landmark model is given.
NEUTRAL_EYE_OPEN = 0.7173
NEUTRAL_EYE = (NEUTRAL_EYE_OPEN, NEUTRAL_EYE_OPEN, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
#: loss parts: name -> dims of the motion vector (the reference's default ``part_w_dict``)
PARTS = {name: (SLICES[name].start, SLICES[name].stop) for name, _ in LAYOUT}


def mix_seed(*values) -> int:
    """A stable 63-bit seed from any tuple of ints/strings."""
    digest = hashlib.blake2b(repr(tuple(values)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def generator(*values) -> torch.Generator:
    """A CPU generator seeded from :func:`mix_seed` of ``values``."""
    return torch.Generator(device="cpu").manual_seed(mix_seed(*values))


def say(log_fn: Optional[Callable[[str], None]], text: str) -> None:
    """``text`` to the log and, when given, to ``log_fn`` (``print`` on the command line)."""
    log.info(text)
    if log_fn is not None:
        log_fn(text)


__all__ = ["AUDIO_SPEC", "CLIP_FORMAT", "CLIP_VERSION", "COND_DIM", "COND_LAYOUT", "EYE_DIM", "MIN_FRAMES",
           "NEUTRAL_EYE", "NEUTRAL_EYE_OPEN", "PARTS", "PathLike", "SEQ_FRAMES", "generator", "mix_seed",
           "say"]
