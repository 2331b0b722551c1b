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


#: rows smoothed at a time by :func:`smooth_rows_` (a copy of this many rows is all it adds)
SMOOTH_BLOCK = 1024


def _smoothed(src: torch.Tensor, base: int, start: int, stop: int, n: int, half: int) -> torch.Tensor:
    """Rows ``start..stop-1`` of a sequence of ``n`` rows smoothed over ``i - half .. i + half`` (truncated at the
    ends), read from ``src`` = its unsmoothed rows ``base ..``. Each row is summed in the order of the reference
    loop (first row, then + each next one) and divided by the window size: the same float results."""
    out = torch.empty(stop - start, src.shape[1], dtype=src.dtype)
    inner_lo, inner_hi = max(start, half), min(stop, n - half)  # rows whose window is not truncated
    if inner_hi <= inner_lo:
        inner_lo = inner_hi = stop
    for i in list(range(start, inner_lo)) + list(range(inner_hi, stop)):
        lo, hi = max(0, i - half), min(n, i + half + 1)
        acc = src[lo - base]
        for j in range(lo + 1, hi):
            acc = acc + src[j - base]
        out[i - start] = acc / (hi - lo)
    if inner_hi > inner_lo:
        width = 2 * half + 1
        first = inner_lo - half - base
        acc = src[first:first + inner_hi - inner_lo]
        for d in range(1, width):
            acc = acc + src[first + d:first + d + inner_hi - inner_lo]
        out[inner_lo - start:inner_hi - start] = acc / width
    return out


def smooth_rows_(seq: torch.Tensor, start: int, stop: int, k: int = 3, dims: int = POSE_DIMS) -> torch.Tensor:
    """:func:`smooth_rows` in place (returns ``seq``): the rows are done :data:`SMOOTH_BLOCK` at a time, each
    block from a copy of its unsmoothed rows (plus the ``k // 2`` around it), so no copy of the whole
    sequence is made."""
    if k <= 1:
        return seq
    n = seq.shape[0]
    half = k // 2
    start, stop = max(start, 0), min(stop, n)
    if stop <= start:
        return seq
    before = seq[max(0, start - half):start, :dims].clone()  # unsmoothed rows just before the block
    b0 = start
    while b0 < stop:
        b1 = min(b0 + SMOOTH_BLOCK, stop)
        lo, hi = max(0, b0 - half), min(n, b1 + half)
        src = torch.cat([before, seq[b0:hi, :dims]])  # unsmoothed rows lo .. hi-1
        before = src[max(lo, b1 - half) - lo:b1 - lo].clone()
        seq[b0:b1, :dims] = _smoothed(src, lo, b0, b1, n, half)
        b0 = b1
    return seq


def smooth_rows(seq: torch.Tensor, start: int, stop: int, k: int = 3, dims: int = POSE_DIMS) -> torch.Tensor:
    """Rows ``start..stop-1`` of (n, D) ``seq`` -> centred mean over ``k`` frames (truncated at the
    ends) of the unsmoothed values, dims ``:dims`` only. Returns a new tensor."""
    if k <= 1:
        return seq
    return smooth_rows_(seq.clone(), start, stop, k, dims)


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
        self._buf: Optional[torch.Tensor] = None  # the fused result is _buf[:_len] (room to grow after it)
        self._len = 0
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

    @property
    def res(self) -> Optional[torch.Tensor]:
        """The fused result so far ``(n, 265)`` (None before the first window)."""
        return None if self._buf is None else self._buf[:self._len]

    @res.setter
    def res(self, value: Optional[torch.Tensor]) -> None:
        self._buf = value
        self._len = 0 if value is None else int(value.shape[0])

    def reserve(self, rows: int) -> None:
        """Room for ``rows`` result rows, so windows are fused in place (no copy of the result per window)."""
        if self._buf is None:
            self._buf = torch.empty(rows, self.motion_dim, dtype=torch.float32)
        elif self._buf.shape[0] < rows:  # doubling: a stream that keeps growing copies its result rarely
            grown = torch.empty(max(rows, 2 * self._buf.shape[0]), self._buf.shape[1], dtype=self._buf.dtype)
            grown[:self._len] = self._buf[:self._len]
            self._buf = grown

    def set_steps(self, steps: int) -> None:
        """Sample the next windows with ``steps`` DDIM steps (a live session that falls behind uses fewer)."""
        steps = int(steps)
        if steps < 1:
            raise InputError("steps must be at least 1")
        if steps == self.steps:
            return
        if self.generator is None:
            raise InputError("the steps of a generator given explicit noise cannot change")
        self.steps = steps
        self.schedule = make_schedule(self.lmdm.alphas_cumprod, steps)
        self.step_noise = draw_step_noise(steps, self.shape, self.generator)

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
        if self._len == 0:
            self.reserve(pred.shape[0])
            self._buf[:pred.shape[0]] = pred
            self._len = pred.shape[0]
            smooth_rows_(self.res, 0, self._len, self.smooth_k)
        else:
            n0 = self._len
            r1s = n0 - self.fuse_length
            r2s = self.seq_frames - self.valid - self.fuse_length
            r2e = self.seq_frames - self.valid
            fused = self._buf[r1s:n0] * (1 - self.fuse_alpha) + pred[r2s:r2e] * self.fuse_alpha
            self.reserve(n0 + pred.shape[0] - r2e)
            self._buf[r1s:n0] = fused
            self._buf[n0:n0 + pred.shape[0] - r2e] = pred[r2e:]
            self._len = n = n0 + pred.shape[0] - r2e
            smooth_rows_(self.res, n - self.valid - self.fuse_length, n - self.valid + 1, self.smooth_k)
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
    if conds.dim != lmdm.config["cond_dim"]:
        raise InputError(f"the condition has {conds.dim} values per frame but the model expects "
                         f"{lmdm.config['cond_dim']} (use_emo/eye/sc flags?)")
    n = feats.shape[0]
    if n == 0:
        raise InputError("no audio feature frames")
    windows = num_windows(n, overlap, lmdm.config["seq_frames"])
    bar = as_progress(progress, windows * steps)
    gen = None if noise is not None else make_generator(seed, generator)
    win = _Windows(lmdm, source_vec, steps, guidance, overlap, overlap, smooth, fix_kp_cond, fix_kp_cond_dims,
                   gen, noise, progress=bar)
    win.reserve(win.seq_frames + (windows - 1) * win.valid)  # the whole result, filled window by window
    idx = 0
    while idx < n:  # each window's conditions are built from its own features (no (n, 1103) copy of them all)
        c = _pad_window(conds(feats[idx:idx + win.seq_frames], idx), win.seq_frames)
        win.run(c, trace)
        if trace is not None:
            trace[-1].update(start=idx, n_real=min(win.seq_frames, n - idx))
        idx += win.valid
    return smooth_rows_(win.res[:n], 0, n, smooth)


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

    @property
    def steps(self) -> int:
        """DDIM steps per window (:meth:`set_steps` changes them for the next windows)."""
        return self._win.steps

    def set_steps(self, steps: int) -> None:
        self._win.set_steps(steps)

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
            self.d0 = clip_motion(res[0].clone(), self.v_min_max)
        else:
            out = clip_motion(res[self._valid_start:self._valid_start + real].clone(), self.v_min_max)
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


__all__ = ["OnlineGenerator", "as_conditions", "generate", "num_windows", "smooth_rows", "smooth_rows_"]
