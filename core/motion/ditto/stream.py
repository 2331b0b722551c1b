"""Ditto's window logic (official ``audio2motion.py`` + ``stream_pipeline_offline.py`` /
``stream_pipeline_online.py``): 80-frame windows of the LMDM sampler, cross-faded and smoothed.

Offline (:func:`generate`, ``overlap`` 10): windows start at 0, 70, 140, ... (a short last window's
cond is padded by repeating its last row). Window 0 is kept whole; for every later window the last
10 frames of the result are cross-faded with the new window's frames 0..9 (new weight ``j / 10``)
and its frames 10..79 are appended. ``cond_frame`` of the next window = the result frame just before
that window's start. Smoothing (``smooth`` = 3): a centred moving average (truncated at the ends,
read from an unsmoothed copy) of dims 0..201 only (scale, pose, t) over the whole first window and,
after each fuse, over ``[L - valid - 10, L - valid + 1)``; at the end the result is cut to the
number of feature frames and smoothed once more as a whole.

Online (:class:`OnlineGenerator`, ``overlap`` 70, 10 steps, ``fix_kp_cond`` 1): the timeline starts
with 70 frames of silence features; a window runs whenever 10 new feature frames exist (window k =
timeline frames [10k, 10k+80)); the first window only gives the anchor ``d0`` (its frame 0); after
that each window's frames 60..69 are cross-faded into the result's last 10 frames and frames 70..79
appended, and the just-fused 10 frames are final: they are returned as one block (real frames
[10(k-1), 10k)). ``cond_frame`` = the source vector with dims 0..201 replaced by the previous frame's.
At the end of the stream (:meth:`OnlineGenerator.flush`) the last window is padded and its whole
valid slice returned, which may run up to 10 frames past the real audio (as the reference does;
``flush(trim=True)`` cuts it to the number of pushed frames).

Random numbers (reference order): the S-1 step noises once per run, then ``x_T`` per window.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import torch

from ...errors import InputError
from ...progress import Progress, ProgressFn, as_progress
from .compose import POSE_DIMS, clip_motion
from .conditions import AUDIO_DIM, Conditions
from .sampler import draw_step_noise, draw_x_T, guided_denoiser, make_generator, make_schedule, sample

CondLike = Union[Conditions, torch.Tensor, Tuple]


def as_conditions(cond: CondLike) -> Conditions:
    """A :class:`Conditions`, a fixed (79,) ``[emo | eye_open | eye_ball | sc]`` vector, or a tuple
    ``(emo, eye_open, eye_ball, sc)``."""
    if isinstance(cond, Conditions):
        return cond
    if isinstance(cond, (tuple, list)) and len(cond) == 4:
        return Conditions(emo=cond[0], eye_open=cond[1], eye_ball=cond[2], sc=cond[3])
    if isinstance(cond, torch.Tensor) or hasattr(cond, "shape"):
        return Conditions.from_extra(cond)
    raise InputError("cond must be Conditions, a 79-value vector [emo|eye_open|eye_ball|sc], "
                     "or a tuple (emo, eye_open, eye_ball, sc)")


def smooth_rows(seq: torch.Tensor, start: int, stop: int, k: int = 3, dims: int = POSE_DIMS) -> torch.Tensor:
    """Rows ``start..stop-1`` of (n, D) ``seq`` -> centred mean over ``k`` frames (truncated at the
    ends) of the unsmoothed values, dims ``:dims`` only. Returns a new tensor."""
    if k <= 1:
        return seq
    n = seq.shape[0]
    half = k // 2
    out = seq.clone()
    start, stop = max(start, 0), min(stop, n)
    for i in range(start, stop):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        acc = seq[lo, :dims]
        for j in range(lo + 1, hi):
            acc = acc + seq[j, :dims]
        out[i, :dims] = acc / (hi - lo)
    return out


class _Windows:
    """Shared window state: the fused result, ``cond_frame`` updates, noise and sampling.

    ``progress``: a :class:`~core.progress.Progress` every window's steps count into, or a callback
    (or None) given a new ``Progress(steps)`` per window."""

    def __init__(self, lmdm, source_vec, steps: int, guidance: float, overlap: int, fuse_length: int,
                 smooth_k: int, fix_kp_cond: int, fix_kp_cond_dims: Optional[Sequence[int]],
                 generator: Optional[torch.Generator], noise,
                 progress: Union[Progress, ProgressFn, None] = None):
        cfg = lmdm.config
        self.lmdm = lmdm
        self.seq_frames = int(cfg["seq_frames"])
        self.motion_dim = int(cfg["motion_dim"])
        if not 0 <= overlap < self.seq_frames:
            raise InputError(f"overlap must be in [0, {self.seq_frames}), got {overlap}")
        self.steps, self.guidance = int(steps), float(guidance)
        self.overlap = int(overlap)
        self.valid = self.seq_frames - self.overlap
        self.fuse_length = int(fuse_length)
        self.fuse_alpha = (torch.arange(self.fuse_length, dtype=torch.float32) / self.fuse_length)[:, None]
        self.smooth_k = int(smooth_k)
        self.fix_kp_cond = int(fix_kp_cond)
        self.fix_dims = tuple(fix_kp_cond_dims) if fix_kp_cond_dims is not None else None
        sv = torch.as_tensor(source_vec).float().reshape(-1)
        if sv.numel() != self.motion_dim:
            raise InputError(f"source vector must have {self.motion_dim} values, got {sv.numel()}")
        self.source_vec = sv
        self.kp_cond = sv.clone()
        self.res: Optional[torch.Tensor] = None
        self.clip_idx = 0
        self.schedule = make_schedule(lmdm.alphas_cumprod, self.steps)
        shape = (1, self.seq_frames, self.motion_dim)
        self.shape = shape
        if noise is not None:  # explicit (step_noise (S-1, 1, L, D), x_T (W, 1, L, D)) for tests
            self.step_noise = torch.as_tensor(noise[0]).float()
            self._x_T = list(torch.as_tensor(noise[1]).float())
            self.generator = None
        else:
            self.generator = generator
            self.step_noise = draw_step_noise(self.steps, shape, generator)
            self._x_T = None
        self.progress = progress

    def next_x_T(self) -> torch.Tensor:
        if self._x_T is not None:
            if not self._x_T:
                raise InputError("not enough x_T noise tensors for the windows")
            return self._x_T.pop(0).reshape(self.shape)
        return draw_x_T(self.shape, self.generator)

    def sample(self, cond_window: torch.Tensor) -> torch.Tensor:
        x_T = self.next_x_T().to(self.lmdm.final_layer.weight.device)
        denoiser = guided_denoiser(self.lmdm, self.kp_cond[None], cond_window[None], self.guidance)
        out = sample(denoiser, x_T, self.schedule, self.step_noise, as_progress(self.progress, self.steps))
        return out[0].float().cpu()

    def run(self, cond_window: torch.Tensor, trace: Optional[list] = None) -> torch.Tensor:
        """Sample one (L, C) window, fuse it into the result, update ``cond_frame``."""
        kp_cond = self.kp_cond.clone()
        pred = self.sample(cond_window)
        if self.res is None:
            self.res = smooth_rows(pred, 0, pred.shape[0], self.smooth_k)
        else:
            res = self.res
            r1s = res.shape[0] - self.fuse_length
            r2s = self.seq_frames - self.valid - self.fuse_length
            r2e = self.seq_frames - self.valid
            fused = res[r1s:] * (1 - self.fuse_alpha) + pred[r2s:r2e] * self.fuse_alpha
            res = torch.cat([res[:r1s], fused, pred[r2e:]], 0)
            n = res.shape[0]
            self.res = smooth_rows(res, n - self.valid - self.fuse_length, n - self.valid + 1, self.smooth_k)
        self.clip_idx += 1
        idx = self.res.shape[0] - self.overlap
        prev = self.res[idx - 1]
        if self.fix_kp_cond > 0 and self.clip_idx % self.fix_kp_cond == 0:
            self.kp_cond = self.source_vec.clone()
            if self.fix_dims is not None:
                ds, de = self.fix_dims
                self.kp_cond[ds:de] = prev[ds:de]
        else:
            self.kp_cond = prev.clone()
        if trace is not None:
            trace.append({"kp_cond": kp_cond, "pred": pred})
        return self.res


def _features(features) -> torch.Tensor:
    f = torch.as_tensor(features).float()
    if f.ndim != 2 or f.shape[1] != AUDIO_DIM:
        raise InputError(f"audio features must be (frames, {AUDIO_DIM}) at 25 fps, got {tuple(f.shape)}")
    return f


def _pad_window(c: torch.Tensor, n: int) -> torch.Tensor:
    if c.shape[0] < n:
        c = torch.cat([c, c[-1:].expand(n - c.shape[0], -1)], 0)
    return c


def num_windows(frames: int, overlap: int = 10, seq_frames: int = 80) -> int:
    valid = seq_frames - overlap
    return max(0, -(-frames // valid))


@torch.no_grad()
def generate(lmdm, features, cond: CondLike, source_vec, steps: int = 50, guidance: float = 2.0,
             seed: Optional[int] = None, generator: Optional[torch.Generator] = None, overlap: int = 10,
             smooth: int = 3, progress: Union[Progress, ProgressFn, None] = None, noise=None,
             trace: Optional[list] = None, fix_kp_cond: int = 0,
             fix_kp_cond_dims: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Offline motion (T, 265) for (T, 1024) 25-fps audio features.

    ``cond``: see :func:`as_conditions`; ``source_vec`` (265,) the source's motion vector
    (:func:`~.compose.source_vector`), the first window's ``cond_frame``. Randomness: ``generator``
    (a CPU ``torch.Generator``), else ``seed`` (same seed -> same motion; None = random); or
    ``noise = (step_noise (S-1, 1, 80, 265), x_T (windows, 1, 80, 265))`` exactly. ``progress(done,
    total)`` (or a :class:`~core.progress.Progress`) counts DDIM steps over all windows; cancelling
    goes through it (:mod:`core.progress`). ``trace``, when a list, receives per window
    ``{start, n_real, kp_cond, pred}``.
    """
    feats = _features(features)
    conds = as_conditions(cond)
    cond_all = conds(feats, 0)
    if cond_all.shape[1] != lmdm.config["cond_dim"]:
        raise InputError(f"the condition has {cond_all.shape[1]} values per frame but the model expects "
                         f"{lmdm.config['cond_dim']} (use_emo/eye/sc flags?)")
    n = feats.shape[0]
    if n == 0:
        raise InputError("no audio feature frames")
    bar = as_progress(progress, num_windows(n, overlap, lmdm.config["seq_frames"]) * steps)
    gen = None if noise is not None else make_generator(seed, generator)
    win = _Windows(lmdm, source_vec, steps, guidance, overlap, overlap, smooth, fix_kp_cond, fix_kp_cond_dims,
                   gen, noise, progress=bar)
    idx = 0
    while idx < n:
        c = _pad_window(cond_all[idx:idx + win.seq_frames], win.seq_frames)
        win.run(c, trace)
        if trace is not None:
            trace[-1].update(start=idx, n_real=min(win.seq_frames, n - idx))
        idx += win.valid
    res = win.res[:n]
    return smooth_rows(res, 0, res.shape[0], smooth)


class OnlineGenerator:
    """Streaming Ditto motion: push 25-fps audio features as they arrive, get finished 10-frame blocks.

    ``init_features`` (overlap, 1024): the features of ``overlap`` frames of silence that pre-fill the
    buffer (the reference computes them with HuBERT on ``overlap * 640`` zero samples; zeros are used
    when not given, which is only an approximation). ``cond_start`` (default ``-overlap``) is the
    timeline index of the first buffer frame given to the conditions (emotion tracks are read at
    ``max(i, 0) % m``). ``v_min_max`` (4, 265) the cfg's optional clip ranges. ``d0`` (265,) is the
    relative-motion anchor, set by the first window (use it in :func:`~.compose.to_motion`).
    ``progress``: ``progress(done, steps)`` per window's DDIM steps (or a :class:`~core.progress.Progress`
    all windows count into); cancelling goes through it (:mod:`core.progress`).
    """

    def __init__(self, lmdm, cond: CondLike, source_vec, steps: int = 10, guidance: float = 2.0,
                 seed: Optional[int] = None, generator: Optional[torch.Generator] = None, overlap: int = 70,
                 smooth: int = 3, fix_kp_cond: int = 1, fix_kp_cond_dims: Optional[Sequence[int]] = (0, POSE_DIMS),
                 v_min_max=None, init_features=None, cond_start: Optional[int] = None, noise=None,
                 progress: Union[Progress, ProgressFn, None] = None):
        self.conds = as_conditions(cond)
        if self.conds.dim != lmdm.config["cond_dim"]:
            raise InputError(f"the condition has {self.conds.dim} values per frame but the model expects "
                             f"{lmdm.config['cond_dim']}")
        gen = None if noise is not None else make_generator(seed, generator)
        seq = int(lmdm.config["seq_frames"])
        valid = seq - overlap
        self._win = _Windows(lmdm, source_vec, steps, guidance, overlap, min(overlap, valid), smooth, fix_kp_cond,
                             fix_kp_cond_dims, gen, noise, progress=progress)
        self.v_min_max = v_min_max
        init = torch.zeros(overlap, AUDIO_DIM) if init_features is None else _features(init_features)
        self._buffer = init.clone()          # timeline features not yet dropped
        self._local = 0                      # buffer index of the next window start
        self._global = 0                     # timeline index of the next window start
        self._cond_start = -init.shape[0] if cond_start is None else int(cond_start)
        self._valid_start: Optional[int] = None
        self.d0: Optional[torch.Tensor] = None
        self.pushed = 0
        self.emitted = 0
        self.finished = False
        self.trace: Optional[list] = None

    @property
    def seq_frames(self) -> int:
        return self._win.seq_frames

    def _window(self) -> Optional[torch.Tensor]:
        """Run the window at the current buffer position (padded when short); the new block or None."""
        seq = self._win.seq_frames
        feats = self._buffer[self._local:self._local + seq]
        real = self._win.valid if feats.shape[0] == seq else feats.shape[0]
        feats = _pad_window(feats, seq)
        cond = self.conds(feats, self._global + self._cond_start)
        res = self._win.run(cond, self.trace)
        if self.trace is not None:
            self.trace[-1].update(start=self._global, n_real=min(seq, self._buffer.shape[0] - self._local),
                                  valid=real, cond_idx=self._global + self._cond_start)
        out = None
        if self._valid_start is None:   # first window: only the anchor d0
            self._valid_start = res.shape[0] - self._win.fuse_length
            self.d0 = clip_motion(res[0], self.v_min_max)
        else:
            out = clip_motion(res[self._valid_start:self._valid_start + real], self.v_min_max)
            self._valid_start += real
        self._local += real
        self._global += real
        cap = 2 * seq                   # bound memory like the reference (values are unaffected)
        if res.shape[0] > cap:
            cut = res.shape[0] - cap
            self._win.res = res[cut:]
            self._valid_start -= cut
        return out

    def _drain(self, final: bool) -> List[torch.Tensor]:
        out = []
        seq = self._win.seq_frames
        while self._local < self._buffer.shape[0]:
            if self._buffer.shape[0] - self._local < seq and not final:
                break
            block = self._window()
            if block is not None and block.shape[0]:
                out.append(block)
                self.emitted += block.shape[0]
        if self._buffer.shape[0] > 2 * seq:
            cut = min(self._buffer.shape[0] - 2 * seq, self._local)
            self._buffer = self._buffer[cut:]
            self._local -= cut
        return out

    @torch.no_grad()
    def push(self, features) -> List[torch.Tensor]:
        """Append (n, 1024) feature frames; returns the finished (10, 265) blocks (maybe none)."""
        if self.finished:
            raise InputError("this stream was flushed; start a new OnlineGenerator")
        f = _features(features)
        self._buffer = torch.cat([self._buffer, f], 0)
        self.pushed += f.shape[0]
        return self._drain(final=False)

    @torch.no_grad()
    def flush(self, trim: bool = False) -> List[torch.Tensor]:
        """End of stream: run the padded last window and return the remaining blocks. With ``trim``,
        frames past the pushed audio are dropped (the reference keeps up to 10 of them)."""
        if self.finished:
            return []
        self.finished = True
        out = self._drain(final=True)
        if trim:
            extra = self.emitted - self.pushed
            while extra > 0 and out:
                last = out[-1]
                keep = max(last.shape[0] - extra, 0)
                extra -= last.shape[0] - keep
                self.emitted -= last.shape[0] - keep
                if keep:
                    out[-1] = last[:keep]
                else:
                    out.pop()
        return out


__all__ = ["OnlineGenerator", "as_conditions", "generate", "num_windows", "smooth_rows"]
