"""JoyVASA (jdh-algo/JoyVASA, MIT): audio -> LivePortrait motion with a HuBERT-conditioned diffusion
transformer, re-implemented in plain torch (+ a stock ``transformers.HubertModel``).

Library use::

    from core.motion.joyvasa import load_joyvasa, load_template, audio_features, generate, to_motion
    model = load_joyvasa("motion_generator_hubert_chinese.pt")           # pe_mode="constant_row"
    template = load_template("motion_template.pkl")
    feats, n_pad = audio_features(model, audio_16k)                      # optional: precompute
    gen = generate(model, (feats, n_pad), template, cfg_scale=2.8, seed=0)
    motion = to_motion(gen, source_motion)                               # Motion(composed=True)
    x_d = driving_keypoints(source_motion, motion, drive_options("cli"), stitching_net, lip_net)

Modules: :mod:`.model` (network), :mod:`.load` (checkpoints), :mod:`.sampler` (DDPM + CFG),
:mod:`.stream` (window loop, draw order), :mod:`.template` (de-normalisation, EMA), :mod:`.compose`
(combination with the source). The audio front end (windows, features) is
:mod:`core.audio_features.joyvasa`.
"""
from ...audio_features.joyvasa import WindowPlan, audio_features, plan_windows
from .compose import CLI_OPTIONS, GRADIO_OPTIONS, drive_options, to_motion
from .load import load_joyvasa
from .model import PE_MODES, JoyVASA
from .stream import generate, generate_normalized
from .template import MotionTemplate, load_template

__all__ = ["CLI_OPTIONS", "GRADIO_OPTIONS", "JoyVASA", "MotionTemplate", "PE_MODES", "WindowPlan", "audio_features",
           "drive_options", "generate", "generate_normalized", "load_joyvasa", "load_template", "plan_windows",
           "to_motion"]
