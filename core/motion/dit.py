"""MotionDiT: one entry point over the public audio-to-motion checkpoints (Ditto's LMDM, JoyVASA).

* :func:`checkpoint_choices` / :func:`resolve_checkpoint`: the combo values (``<folder>/<file>``, the
  official files first, then whatever is in the ``ditto`` and ``joyvasa`` model folders) and the file
  plus its family.
* :func:`generate_motion`: audio embeddings (from AudioToEmbedding) + the LivePortrait source of the
  portrait -> a composed :class:`~core.liveportrait.motion.Motion`, checking that the embeddings were
  made the way the checkpoint expects.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Tuple

import torch

from .. import weights
from ..audio_features import DITTO_EXPECTED, AudioEmbeddings, check_spec
from ..cache import CACHE, file_key
from ..device import resolve_device
from ..errors import InputError, WeightsMissingError
from ..liveportrait.motion import LIP_KPS, Motion

FAMILIES = {"ditto": "ditto/lmdm_v0.4_hubert", "joyvasa": "joyvasa/motion_generator"}
#: Ditto's eye condition comes from MediaPipe's 478 landmarks, which this pack does not run: the
#: eye-open value of a typical open eye in that measure (three lid distances over the eye width) and a
#: centred gaze are used instead (the node exposes the openness)
DEFAULT_EYE_OPEN = 0.8
CACHE_FAMILY = "motion"


def checkpoint_choices() -> List[str]:
    out = []
    for fam, fid in FAMILIES.items():
        mf = weights.model_file(fid)
        official = f"{mf.folder}/{mf.filename}"
        out.append(official)
        out += [f"{mf.folder}/{n}" for n in weights.list_files(mf.folder, (".pth", ".pt", ".safetensors"))
                if f"{mf.folder}/{n}" != official and _family_of_name(f"{mf.folder}/{n}") == fam]
    return list(dict.fromkeys(out))


def _family_of_name(choice: str) -> Optional[str]:
    """``ditto/…lmdm…`` -> ditto; ``joyvasa/…`` except the motion template -> joyvasa; else None."""
    folder, _, rest = choice.replace("\\", "/").partition("/")
    name = Path(rest).name.lower()
    if folder == "ditto" and "lmdm" in name:
        return "ditto"
    if folder == "joyvasa" and rest and "template" not in name:
        return "joyvasa"
    return None


def resolve_checkpoint(choice: str, download: bool = True) -> Tuple[str, Path]:
    """A combo value -> (family, file). The official names download when allowed."""
    choice = (choice or "").replace("\\", "/")
    fam = _family_of_name(choice)
    if fam is None:
        raise InputError(f"{choice!r} is not a motion checkpoint; choose a file in the 'ditto' (Ditto LMDM) or "
                         f"'joyvasa' (JoyVASA motion generator) models folder")
    return fam, weights.resolve_choice(FAMILIES[fam], choice.split("/", 1)[1], download=download)


def _load(fam: str, path: Path, device, **kw):
    dev = resolve_device(device)
    if fam == "ditto":
        from . import ditto

        loader = lambda: ditto.load_lmdm(path)  # noqa: E731
    else:
        from . import joyvasa

        loader = lambda: joyvasa.load_joyvasa(path, **kw)  # noqa: E731
    key = (file_key(path), tuple(sorted(kw.items())))
    return CACHE.get(CACHE_FAMILY, key, loader, dev, torch.float32, info={"file": f"{fam} ({path.name})"})


def _ditto_cfg(download: bool):
    from . import ditto

    try:
        path = weights.resolve("ditto/cfg_pytorch", download=download)
    except WeightsMissingError:  # the cfg is optional: the reference defaults apply without it
        return ditto.DittoCfg()
    # a cfg that is there but unreadable, or that tries to run code, is an error, not silently skipped
    return ditto.load_cfg(path)


def generate_motion(embeddings: AudioEmbeddings, source, checkpoint: str, steps: int = 50, guidance: float = 2.0,
                    seed: int = 0, pose_strength: float = 1.0, expression_strength: float = 1.0,
                    lip_strength: float = 1.0, emotion: str = "Neutral", eye_open: float = DEFAULT_EYE_OPEN, device="auto",
                    download: bool = True, progress: Optional[Callable[[int, int], None]] = None) -> Motion:
    """Audio embeddings + ``source`` (a :class:`~core.liveportrait.render.LivePortraitSource` with its
    raw motion-extractor heads) -> a composed Motion at the embeddings' frame rate.

    Ditto: ``steps`` DDIM steps, classifier-free ``guidance``, ``emotion`` one of
    :data:`core.motion.ditto.EMOTIONS`. JoyVASA: its fixed 50-step sampler, ``guidance`` = its cfg scale;
    ``steps`` and ``emotion`` do not apply. ``progress(done, total)`` counts denoising steps; cancelling
    goes through it (:mod:`core.progress`).
    """
    if not isinstance(embeddings, AudioEmbeddings):
        raise InputError("MotionDiT needs audio embeddings from AudioToEmbedding")
    if source.raw is None:
        raise InputError("the LivePortrait source lacks its raw motion-extractor outputs")
    fam, path = resolve_checkpoint(checkpoint, download)
    if fam == "ditto":
        motion = _ditto(embeddings, source, path, steps, guidance, seed, pose_strength, expression_strength,
                        emotion, eye_open, device, download, progress)
    else:
        motion = _joyvasa(embeddings, source, path, guidance, seed, pose_strength, expression_strength, device,
                          progress)
    return scale_lips(motion, source.motion.exp, lip_strength)


def scale_lips(motion: Motion, exp_source: torch.Tensor, strength: float) -> Motion:
    """Scale the lip keypoints' expression away from the portrait's own (1 = as generated, 0 = the
    portrait's mouth, above 1 = wider articulation) in a composed motion."""
    if strength == 1:
        return motion
    if strength < 0:
        raise InputError("lip_strength must be 0 or more")
    idx = list(LIP_KPS)
    base = exp_source.reshape(1, -1, 3)[:, idx].float()
    motion.exp[:, idx] = base + (motion.exp[:, idx] - base) * float(strength)
    return motion


def _ditto(emb, source, path, steps, guidance, seed, pose_strength, expression_strength, emotion, eye_open,
           device, download, progress) -> Motion:
    from . import ditto

    check_spec(emb, DITTO_EXPECTED, "Ditto")
    if steps < 1:
        raise InputError("steps must be at least 1")
    lmdm = _load("ditto", path, device)
    cfg = _ditto_cfg(download)
    raw = {k: v.float().cpu() for k, v in source.raw.items()}
    cond = ditto.Conditions(emo=ditto.emotion_index(emotion), eye_open=[eye_open, eye_open], eye_ball=[0.0] * 6,
                            sc=raw["kp"], use_emo=cfg.use_emo, use_eye_open=cfg.use_eye_open,
                            use_eye_ball=cfg.use_eye_ball, use_sc=cfg.use_sc)
    feats = emb.aligned()
    seq = ditto.generate(lmdm, feats, cond, ditto.source_vector(raw), steps=int(steps), guidance=float(guidance),
                         seed=int(seed), overlap=int(cfg.overlap_v2), smooth=int(cfg.smo_k_d), progress=progress)
    return ditto.to_motion(seq, raw, fps=emb.fps, pose_strength=pose_strength, exp_strength=expression_strength,
                           v_min_max=cfg.v_min_max_for_clip, **({"delta_pitch": cfg.overall_ctrl_info["delta_pitch"]}
                                                                 if "delta_pitch" in cfg.overall_ctrl_info else {}))


def _joyvasa(emb, source, path, guidance, seed, pose_strength, expression_strength, device, progress) -> Motion:
    from . import joyvasa
    from ..audio_features.joyvasa import FRONT_PAD, SAMPLE_RATE

    check_spec(emb, {"encoder": JOYVASA_ENCODER, "chunking": JOYVASA_ENCODER, "checkpoint": path.name},
               f"JoyVASA ({path.name})")
    model = _load("joyvasa", path, device)
    template = joyvasa.load_template(weights.resolve("joyvasa/motion_template"))
    n_pad = int(emb.features.shape[0]) - int(emb.num_frames)
    gen = joyvasa.generate(model, emb.features, template, cfg_scale=float(guidance), seed=int(seed),
                           n_pad_frames=n_pad, progress=progress)
    # JoyVASA's frame n covers audio [640 n - 1280, 640 n - 640): its first frames belong to the 1280 zeros
    # put in front of the audio. Dropping them aligns frame n with audio [640 n, 640 n + 640), one frame per
    # video frame of the audio (the official demo keeps them, showing the mouth 2 frames late).
    lead = FRONT_PAD * 25 // SAMPLE_RATE
    total = -(-int(emb.audio_samples) * 25 // SAMPLE_RATE) if emb.audio_samples else int(emb.num_frames) - lead
    motion = joyvasa.to_motion(gen, source.motion, fps=emb.fps, pose_strength=pose_strength,
                               expression_strength=expression_strength)
    del gen  # not held while the frames are taken below (the motion's size again)
    # frames lead .. lead+total-1; the last frame repeats where the audio ends inside the last window's padding
    return motion.take((torch.arange(max(total, 1)) + lead).clamp(max=len(motion) - 1))


# --------------------------------------------------------------------------- JoyVASA as an audio encoder
JOYVASA_ENCODER = "joyvasa"


class _JoyVASAEncoder:
    """The HuBERT inside a JoyVASA checkpoint, as an AudioToEmbedding encoder (4 s windows)."""

    name = JOYVASA_ENCODER
    sample_rate = 16000
    layer = "audio_feature_map"

    def __init__(self, model, path: Path):
        self.model = model
        self.spec = {"checkpoint": path.name}


def _load_joyvasa_encoder(device, dtype, path=None, download=True, layer=None):
    if path is None:
        path = weights.resolve(FAMILIES["joyvasa"], download=download)
    path = Path(path)
    return _JoyVASAEncoder(_load("joyvasa", path, device), path)


def _joyvasa_chunking(samples, enc, batch_size=None, progress=None):
    from . import joyvasa

    if not isinstance(enc, _JoyVASAEncoder):
        raise InputError("the JoyVASA chunking needs the JoyVASA encoder")
    feats, n_pad = joyvasa.audio_features(enc.model, samples, progress=progress)
    return feats, int(feats.shape[0]) - int(n_pad)


def _register() -> None:
    from ..audio_features import CHUNKINGS, ENCODERS, ChunkingInfo, EncoderInfo, register_chunking, register_encoder

    if JOYVASA_ENCODER not in ENCODERS:
        register_encoder(EncoderInfo(JOYVASA_ENCODER, _load_joyvasa_encoder, 256,
                                     description="the fine-tuned Chinese HuBERT-base inside a JoyVASA checkpoint",
                                     options=("layer", "path", "download")))
    if JOYVASA_ENCODER not in CHUNKINGS:
        register_chunking(ChunkingInfo(JOYVASA_ENCODER, _joyvasa_chunking, 25.0, 16000,
                                       description="JoyVASA: 1280/640 zero padding, 4 s windows (100 frames), "
                                                   "HuBERT frame pairs averaged"))


_register()


__all__ = ["DEFAULT_EYE_OPEN", "JOYVASA_ENCODER", "scale_lips", "FAMILIES", "checkpoint_choices", "generate_motion", "resolve_checkpoint"]
