"""Streaming talking head: audio arrives in chunks, rendered frames come out in 10-frame blocks.

The chain is Ditto's online mode end to end: :class:`~core.audio_features.DittoOnlineFeatures` turns
16 kHz samples into 25-fps HuBERT features as soon as each 6480-sample chunk is complete;
:class:`~core.motion.ditto.OnlineGenerator` runs an 80-frame LMDM window for every 10 new feature
frames and emits the 10 frames it just finished; each block is composed with the source
(:func:`~core.motion.ditto.to_motion`, relative to the stream's anchor ``d0``), stitched, and rendered
by LivePortrait. Memory stays bounded whatever the length.

Latency: a block of 10 frames needs audio up to about 22 frames past its first frame (the 80-frame
window looks 70 frames back and HuBERT needs its chunk complete), i.e. about 0.9 s of audio ahead,
plus the compute time of the window and the render. :attr:`TalkingHeadStream.stats` records the
audio consumed and the wall time when the first frame came out.

Usage::

    stream = TalkingHeadStream(lp_models, source, lmdm, encoder, steps=10, seed=0)
    for chunk in audio_chunks:                 # 1-D float tensors at 16 kHz, any size
        for frames in stream.push(chunk):      # [n, 3, S, S] float32 in (0, 1), CPU
            show(frames)
    for frames in stream.flush():
        show(frames)
"""
from __future__ import annotations

import time
from typing import Iterator, List, Optional, Tuple, Union

import torch

from ..audio_features import DittoOnlineFeatures
from ..errors import InputError
from ..liveportrait.motion import DriveOptions, driving_keypoints
from ..liveportrait.render import LivePortraitSource, render_frames
from ..progress import Progress, ProgressFn
from . import ditto

SAMPLE_RATE = 16000
FPS = 25.0


def silence_features(encoder, frames: int = 70) -> torch.Tensor:
    """The features of ``frames`` frames of silence that pre-fill the online buffer (as the reference)."""
    feats = DittoOnlineFeatures(encoder)
    rows = [feats.push(torch.zeros(frames * SAMPLE_RATE // int(FPS)))]
    rows.append(feats.flush())
    out = torch.cat([r for r in rows if r.numel()], 0)
    if out.shape[0] < frames:
        raise InputError("the audio encoder gave too few frames for the silence buffer")
    return out[:frames]


class MotionStream:
    """Audio chunks in, driving keypoints out: Ditto's online mode up to LivePortrait's keypoints.

    :meth:`push` / :meth:`flush` return ``(first_frame, x_d)`` blocks: ``x_d`` ``[n, 21, 3]`` the
    driving keypoints (stitched) of video frames ``first_frame .. first_frame + n - 1`` at 25 fps, in
    order and without gaps; after :meth:`flush` they cover exactly ``ceil(samples * 25 / 16000)``
    frames. Arguments as :class:`TalkingHeadStream`. :meth:`set_steps` changes the DDIM steps of the
    next windows (a live session that falls behind real time uses fewer).
    """

    def __init__(self, lp_models, source: LivePortraitSource, lmdm, encoder, steps: int = 10, guidance: float = 2.0,
                 seed: int = 0, emotion="Neutral", eye_open: float = 0.8, options: Optional[DriveOptions] = None,
                 progress: Union[Progress, ProgressFn, None] = None):
        if source.raw is None:
            raise InputError("the LivePortrait source lacks its raw motion-extractor outputs")
        self.models, self.source = lp_models, source
        self.options = options or DriveOptions(stitching=True)
        self.raw = {k: v.float().cpu() for k, v in source.raw.items()}
        self.features = DittoOnlineFeatures(encoder)
        cond = ditto.Conditions(emo=ditto.emotion_index(emotion), eye_open=[eye_open, eye_open], eye_ball=[0.0] * 6,
                                sc=self.raw["kp"])
        self.generator = ditto.OnlineGenerator(lmdm, cond, ditto.source_vector(self.raw), steps=steps,
                                               guidance=guidance, seed=seed, init_features=silence_features(encoder),
                                               progress=progress)
        self.samples_in = 0
        self.frames_out = 0

    @property
    def steps(self) -> int:
        return self.generator.steps

    def set_steps(self, steps: int) -> None:
        self.generator.set_steps(steps)

    def _keypoints(self, blocks, limit: Optional[int] = None) -> List[Tuple[int, torch.Tensor]]:
        out = []
        for block in blocks:
            if limit is not None:
                block = block[:max(0, limit - self.frames_out)]
            if not block.shape[0]:
                continue
            motion = ditto.to_motion(block, self.raw, fps=FPS, d0=self.generator.d0)
            x_d = driving_keypoints(self.source.motion, motion, self.options, self.models.stitching,
                                    self.models.lip, self.models.eye)
            out.append((self.frames_out, x_d))
            self.frames_out += int(x_d.shape[0])
        return out

    def push(self, samples) -> List[Tuple[int, torch.Tensor]]:
        """Feed 16 kHz mono samples (any length); returns the blocks finished so far."""
        x = torch.as_tensor(samples, dtype=torch.float32).reshape(-1)
        self.samples_in += x.numel()
        rows = self.features.push(x)
        return self._keypoints(self.generator.push(rows)) if rows.numel() else []

    def flush(self) -> List[Tuple[int, torch.Tensor]]:
        """End of the audio: the remaining blocks, cut to the audio's length."""
        rows = self.features.flush()
        blocks = self.generator.push(rows) if rows.numel() else []
        blocks += self.generator.flush(trim=True)
        return self._keypoints(blocks, limit=num_frames(self.samples_in))


def num_frames(samples: int) -> int:
    """Video frames at 25 fps that ``samples`` samples at 16 kHz cover (the last one partly)."""
    return -(-int(samples) * int(FPS) // SAMPLE_RATE)


class TalkingHeadStream:
    """Audio chunks in, rendered face frames out (Ditto online mode + LivePortrait).

    ``source``: the portrait's :class:`~core.liveportrait.render.LivePortraitSource` (with its raw
    motion-extractor heads); ``lmdm``: a loaded Ditto LMDM; ``encoder``: a Ditto audio encoder callable
    (``chunks [N, 6480] -> [N, 20, 1024]``, e.g. ``core.audio_features.get_encoder(...)``).
    ``steps`` DDIM steps per window (the online default is 10), ``eye_open`` / ``emotion`` the
    conditions, ``options`` the renderer's :class:`~core.liveportrait.motion.DriveOptions` (stitching on).
    ``progress``: ``progress(done, steps)`` per motion window's DDIM steps (or a
    :class:`~core.progress.Progress` they all count into); cancelling goes through it and through the
    renderer's batches (:mod:`core.progress`). The stages run one after another in the caller's thread;
    :class:`core.live.LiveSession` runs them as a pipeline.
    """

    def __init__(self, lp_models, source: LivePortraitSource, lmdm, encoder, steps: int = 10, guidance: float = 2.0,
                 seed: int = 0, emotion="Neutral", eye_open: float = 0.8, options: Optional[DriveOptions] = None,
                 device=None, precision: str = "fp32", batch_size: int = 10,
                 progress: Union[Progress, ProgressFn, None] = None):
        self.motion = MotionStream(lp_models, source, lmdm, encoder, steps=steps, guidance=guidance, seed=seed,
                                   emotion=emotion, eye_open=eye_open, options=options, progress=progress)
        self.models, self.source, self.device, self.precision = lp_models, source, device, precision
        self.batch_size = batch_size
        self.frames_out = 0
        self._t0: Optional[float] = None
        #: ``first_frame_audio_s``: seconds of audio pushed when the first frame came out;
        #: ``first_frame_wall_s``: wall time from the first push to the first frame
        self.stats = {"first_frame_audio_s": None, "first_frame_wall_s": None}

    @property
    def samples_in(self) -> int:
        return self.motion.samples_in

    def _render(self, blocks) -> Iterator[torch.Tensor]:
        for _, x_d in blocks:
            for frames in render_frames(self.models, self.source, x_d, batch_size=self.batch_size,
                                        device=self.device, precision=self.precision):
                if self.stats["first_frame_audio_s"] is None:
                    self.stats["first_frame_audio_s"] = self.samples_in / SAMPLE_RATE
                    self.stats["first_frame_wall_s"] = time.perf_counter() - self._t0
                self.frames_out += frames.shape[0]
                yield frames

    def push(self, samples) -> Iterator[torch.Tensor]:
        """Feed 16 kHz mono samples (any length); yields the frames finished so far."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        yield from self._render(self.motion.push(samples))

    def flush(self) -> Iterator[torch.Tensor]:
        """End of the audio: the remaining frames, cut to the audio's length."""
        if self._t0 is None:
            self._t0 = time.perf_counter()
        yield from self._render(self.motion.flush())


__all__ = ["MotionStream", "TalkingHeadStream", "num_frames", "silence_features"]
