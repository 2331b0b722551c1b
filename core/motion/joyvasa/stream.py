"""JoyVASA's window loop (``gen_motion_sequence``): audio -> normalised motion -> per-frame pose.

* Windows of L = 100 frames (:mod:`core.audio_features.joyvasa`), no overlap. Window 0's context is the learned
  ``start_motion_feat`` / ``start_audio_feat``; window i > 0 uses the last Lp = 10 generated frames
  and the last 10 audio features of window i - 1 (the conditional features, not the null ones).
* Random draws (CPU): ``x_T = randn(1, L, m)`` once, **reused as x_T for every window**; then per
  window ``z = randn(1, L, m)`` for t = T..2 in that order. With a seed, the numbers are those of
  the official code run after ``torch.manual_seed(seed)`` on the CPU.
* The last window drops ``n_pad_frames`` frames. The indicator (0 on padded frames) is passed to
  networks with an indicator channel only (the released one has none).
"""
from __future__ import annotations

from typing import Dict, Iterator, List, Optional, Tuple, Union

import torch

from ...audio_features.joyvasa import iter_windows
from ...errors import InputError
from ...progress import Progress, ProgressFn, as_progress
from .sampler import NoiseFn, cpu_noise, guided_denoiser, make_schedule, sample
from .template import MotionTemplate, load_template, to_pose_sequence

AudioOrFeatures = Union[torch.Tensor, Tuple[torch.Tensor, int]]


def _model_device(model) -> torch.device:
    return model.audio_feature_map.weight.device


def _feature_windows(model, source: AudioOrFeatures, n_pad_frames: Optional[int]
                     ) -> Tuple[int, int, Iterator[torch.Tensor]]:
    """``(n_windows, n_pad_frames, iterator of (1, L, d) features)`` from audio or precomputed features."""
    L = model.n_motions
    device = _model_device(model)
    if isinstance(source, (tuple, list)):
        source, n_pad_frames = source[0], int(source[1])
    source = torch.as_tensor(source)
    if source.ndim == 2 and source.shape[1] == model.config["feature_dim"] and source.shape[0] >= L:
        if source.shape[0] % L:
            raise InputError(f"JoyVASA features must come in windows of {L} frames; got {source.shape[0]} frames")
        feats = source.detach().float()
        n_windows = feats.shape[0] // L
        return n_windows, int(n_pad_frames or 0), (feats[i * L:(i + 1) * L][None].to(device) for i in range(n_windows))
    plan, windows = iter_windows(source, model.fps, L)
    return plan.n_windows, plan.n_pad_frames, (model.encode_audio(w) for w in windows)


@torch.no_grad()
def generate_normalized(model, audio_or_features: AudioOrFeatures, cfg_scale: float = 2.8,
                        x_T: Optional[torch.Tensor] = None, noise: Optional[NoiseFn] = None,
                        generator: Optional[torch.Generator] = None, n_pad_frames: Optional[int] = None,
                        progress: Union[Progress, ProgressFn, None] = None,
                        return_windows: bool = False) -> Dict[str, object]:
    """Normalised motion ``{"motion": (T, m)}`` (+ ``window_motion`` (W, L, m) / ``window_audio_feat`` (W, L, d)
    when ``return_windows``). ``x_T``/``noise`` override the draws from ``generator``. ``progress``
    (a callback or a :class:`~core.progress.Progress`) counts denoising steps over all windows;
    cancelling goes through it (:mod:`core.progress`)."""
    L, Lp, m = model.n_motions, model.n_prev_motions, model.config["motion_feat_dim"]
    n_windows, n_pad, feats_iter = _feature_windows(model, audio_or_features, n_pad_frames)
    if n_pad < 0 or n_pad >= L:
        raise InputError(f"n_pad_frames must be in [0, {L}), got {n_pad}")
    device = _model_device(model)
    shape = (1, L, m)
    draw = noise if noise is not None else cpu_noise(generator, shape)
    if x_T is None:
        x_T = torch.randn(shape, generator=generator, dtype=torch.float32)
    schedule = make_schedule(model.diffusion_sched)
    bar = as_progress(progress, n_windows * schedule.steps)
    x_T = x_T.to(device=device, dtype=model.null_audio_feat.dtype)

    prev_motion = prev_audio = None
    motion = torch.empty(n_windows * L - n_pad, m, dtype=torch.float32)  # filled window by window
    win_motion: List[torch.Tensor] = []
    win_audio: List[torch.Tensor] = []
    for i, feat in enumerate(feats_iter):
        feat = feat.to(device=device, dtype=model.null_audio_feat.dtype)
        last = i == n_windows - 1
        indicator = None
        if model.denoising_net.use_indicator:
            indicator = torch.ones(1, L, device=device)
            if last and n_pad > 0:
                indicator[:, -n_pad:] = 0
        # this window's z for t = T..2, drawn in that order (as the reference does, step by step)
        z = torch.stack([draw(t) for t in schedule.timesteps[:-1]]) if schedule.steps > 1 else None
        denoiser = guided_denoiser(model, feat, prev_motion, prev_audio, cfg_scale=cfg_scale, indicator=indicator)
        x0 = sample(denoiser, x_T, schedule, z, bar)
        prev_motion = x0[:, -Lp:].clone()
        prev_audio = feat[:, -Lp:]
        if return_windows:
            win_motion.append(x0[0].float().cpu())
            win_audio.append(feat[0].float().cpu())
        keep = x0[0, :L - n_pad] if (last and n_pad > 0) else x0[0]
        motion[i * L:i * L + keep.shape[0]] = keep
    out: Dict[str, object] = {"motion": motion, "n_pad_frames": n_pad}
    if return_windows:
        out["window_motion"] = torch.stack(win_motion)
        out["window_audio_feat"] = torch.stack(win_audio)
    return out


def generate(model, audio_or_features: AudioOrFeatures, template: Union[MotionTemplate, str, object],
             cfg_scale: float = 2.8, seed: Optional[int] = None, generator: Optional[torch.Generator] = None,
             smooth: bool = True, progress: Union[Progress, ProgressFn, None] = None,
             n_pad_frames: Optional[int] = None,
             x_T: Optional[torch.Tensor] = None, noise: Optional[NoiseFn] = None) -> Dict[str, torch.Tensor]:
    """De-normalised per-frame motion (float32 CPU): ``exp`` [T, 21, 3], ``scale`` [T], ``t`` [T, 3],
    ``pitch``/``yaw``/``roll`` [T] degrees, ``R`` [T, 3, 3] (row-vector convention).

    ``audio_or_features``: 1-D 16 kHz audio, or the output of :func:`.audio.audio_features`
    (``(features, n_pad_frames)``, or the features with ``n_pad_frames=``). ``seed`` (or a CPU
    ``generator``) fixes the draws; neither = the global RNG. ``cfg_scale``: the official CLI uses
    2.8, its README examples 2.0, its Gradio demo 4.0. ``progress(done, total)`` counts
    denoising steps; cancelling goes through it (:mod:`core.progress`)."""
    if generator is None and seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(int(seed))
    tpl = load_template(template)
    res = generate_normalized(model, audio_or_features, cfg_scale=cfg_scale, x_T=x_T, noise=noise,
                              generator=generator, n_pad_frames=n_pad_frames, progress=progress)
    return to_pose_sequence(tpl, res["motion"], smooth=smooth)


__all__ = ["generate", "generate_normalized"]
