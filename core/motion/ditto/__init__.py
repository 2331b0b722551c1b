"""Ditto (antgroup/ditto-talkinghead): audio features -> LivePortrait motion with the LMDM diffusion
model, in plain torch, matching the official implementation (see ``tests/test_ditto.py``).

Library use::

    from core.motion import ditto
    lmdm = ditto.load_lmdm("lmdm_v0.4_hubert.pth")                       # or a safetensors twin
    src = ditto.source_vector(raw)              # raw = LivePortrait motion-extractor heads of the source
    eye_open, eye_ball = ditto.eye_features(lmk478)                       # MediaPipe 478 landmarks
    cond = ditto.Conditions(emo=4, eye_open=eye_open, eye_ball=eye_ball, sc=raw["kp"])
    seq = ditto.generate(lmdm, features, cond, src, steps=50, seed=0)     # (T, 265), offline
    motion = ditto.to_motion(seq, raw, fps=25)                            # Motion(composed=True)

Streaming: ``gen = ditto.OnlineGenerator(lmdm, cond, src, steps=10, init_features=silence)``, then
``gen.push(chunk)`` / ``gen.flush()`` give (10, 265) blocks; compose them with ``d0=gen.d0``.
"""
from .compose import (BLINK_LEN, MOTION_DIM, blink_indices, clip_motion, compose_motion, driving_keypoints,
                      source_motion, source_vector, split_vector, to_motion)
from .conditions import EMOTIONS, NEUTRAL, Conditions, emo_track, emo_vector, emotion_index, eye_features
from .load import DittoCfg, load_cfg, load_lmdm, lmdm_state_dict, parse_cfg
from .model import LMDM, infer_config
from .sampler import cosine_alphas_cumprod, guided_denoiser, make_generator, make_schedule, sample, time_pairs
from .stream import OnlineGenerator, as_conditions, generate, num_windows, smooth_rows

__all__ = ["BLINK_LEN", "Conditions", "DittoCfg", "EMOTIONS", "LMDM", "MOTION_DIM", "NEUTRAL", "OnlineGenerator",
           "as_conditions", "blink_indices", "clip_motion", "compose_motion", "cosine_alphas_cumprod",
           "driving_keypoints", "emo_track", "emo_vector", "emotion_index", "eye_features", "generate",
           "guided_denoiser", "infer_config", "lmdm_state_dict", "load_cfg", "load_lmdm", "make_generator",
           "make_schedule", "num_windows", "parse_cfg", "sample", "smooth_rows", "source_motion", "source_vector",
           "split_vector", "time_pairs", "to_motion"]
