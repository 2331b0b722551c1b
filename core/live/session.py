"""A live talking head: speech pushed in as it arrives, encoded frames and the audio handed out as they are made.

:class:`LiveSession` runs Ditto's online motion and LivePortrait as a pipeline of three workers joined by
bounded queues (back-pressure, never unbounded growth):

* **motion** (:class:`~core.motion.streaming.MotionStream`): the audio waiting in the inbox, or, in a
  realtime session with nothing to say, silence up to the wall clock, goes through the audio encoder
  and the motion DiT into driving keypoints, 10 frames at a time. The audio it feeds is handed out at
  once (the player needs it before the frames). Feeding silence keeps the portrait alive between
  utterances (Ditto's own advice) and makes speech start and stop without a cut: it is one stream.
* **render**: LivePortrait's warp and decoder, then the paste-back into the portrait.
* **encode**: JPEG, handed to the ``sink``.

Everything is placed on one timeline at 25 fps and 16 kHz: frame ``i`` belongs at ``i / 25`` s, audio
sample ``s`` at ``s / 16000`` s, and timeline 0 is :meth:`LiveSession.start`. A player shows timeline
``t`` at ``start + latency + t``, so audio and video stay in sync however fast the machine is.

**When compute falls behind real time** (``realtime=True``), in this order:

1. the motion windows use fewer DDIM steps (halved, down to ``min_steps``; back up when there is slack);
2. frames that cannot be rendered before their time are dropped (the player keeps the last one); audio
   is never dropped;
3. while no speech is waiting and the motion is more than ``max_lag`` behind the clock, the silence in
   between is skipped: the timeline jumps ahead (those frame indices never come).

:meth:`LiveSession.stats` counts each of them. With ``realtime=False`` nothing is dropped or skipped
and no silence is added: every frame of the pushed audio is made, however late.

Memory is bounded whatever the length: the inbox holds at most ``max_audio_s`` of audio
(:meth:`LiveSession.push` refuses more, so a server stops reading its socket), the queues hold a few
blocks, and the motion stream keeps a fixed window.
"""
from __future__ import annotations

import collections
import contextlib
import io
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Deque, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..errors import InputError, TalkingHeadError
from ..face import paste_back
from ..image import image_to_uint8
from ..motion.streaming import FPS, SAMPLE_RATE, MotionStream
from ..liveportrait.render import LivePortraitSource, mask_template, render_frames

log = logging.getLogger(__name__)

#: samples of audio per video frame
HOP = SAMPLE_RATE // int(FPS)
#: ``sink(kind, index, payload)``: ``"video"`` (index = frame, payload = JPEG bytes), ``"audio"`` (index =
#: first sample, payload = int16 LE mono PCM at 16 kHz), ``"end"`` (index = frames, payload = samples, an
#: int), ``"error"`` (payload = the message, a str). It returns False when it had to drop a video frame (a
#: client that reads too slowly).
Sink = Callable[[str, int, object], Optional[bool]]
_END = object()


@dataclass
class LiveConfig:
    """How a live session runs (see the module docstring for the policy)."""

    realtime: bool = True
    #: seconds between timeline ``t`` and when a player shows it (what the deadlines of frames are set by)
    latency: float = 1.5
    steps: int = 10
    min_steps: int = 2
    guidance: float = 2.0
    seed: int = 0
    emotion: str = "Neutral"
    eye_open: float = 0.8
    #: frames rendered together (1 is fastest on a CPU)
    batch: int = 1
    jpeg_quality: int = 80
    #: audio that may wait in the inbox (seconds; 5 min of float32 at 16 kHz is 19 MB): a TTS stream that runs
    #: ahead of the renderer is read whole, and only beyond this does :meth:`LiveSession.push` refuse more
    #: (a server then stops reading its socket: TCP back-pressure, but also no answers to pings meanwhile)
    max_audio_s: float = 300.0
    #: how far (seconds) the motion may fall behind the clock while idle before silence is skipped
    max_lag: float = 1.0
    #: silence is fed in pieces of this many seconds
    idle_chunk_s: float = 0.2

    def __post_init__(self):
        if not 1 <= int(self.min_steps) <= int(self.steps):
            raise InputError(f"min_steps must be in [1, steps={self.steps}], got {self.min_steps}")
        if not 30 <= int(self.jpeg_quality) <= 95:
            raise InputError(f"jpeg_quality must be in [30, 95], got {self.jpeg_quality}")
        if not self.latency > 0 or not self.max_audio_s > 0 or int(self.batch) < 1:
            raise InputError("latency and max_audio_s must be positive and batch at least 1")


class FairLock:
    """A lock handed to its waiters in the order they came (``threading.Lock`` is not: a thread that releases
    and acquires again in a loop, as the motion worker does, can keep it for as long as it has work, and the
    renderer waits for the whole utterance). A context manager, like ``threading.Lock``."""

    def __init__(self):
        self._guard = threading.Lock()
        self._waiters: Deque[threading.Event] = collections.deque()
        self._held = False

    def acquire(self) -> None:
        with self._guard:
            if not self._held:
                self._held = True
                return
            turn = threading.Event()
            self._waiters.append(turn)
        turn.wait()                               # release() handed the lock over: it is ours, held

    def release(self) -> None:
        with self._guard:
            if self._waiters:
                self._waiters.popleft().set()
            else:
                self._held = False

    def __enter__(self) -> "FairLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@dataclass
class LiveParts:
    """The loaded networks a live session uses (shared by every session of a server)."""

    lp_models: object             # core.liveportrait.load.LivePortraitModels
    lmdm: object                  # a Ditto LMDM
    encoder: Callable             # a Ditto audio encoder: chunks [N, 6480] -> [N, 20, 1024]
    device: object = None
    precision: str = "auto"
    #: one render at a time across the sessions of a server (memory stays one model's worth); on a CPU the
    #: motion model takes it too: two torch thread pools on the same cores run slower together than in turn
    #: (on 2 cores, tiny weights: 11 frames/s against 7.4)
    render_lock: FairLock = field(default_factory=FairLock, repr=False)


def _ema(old: float, new: float) -> float:
    """A running estimate: the first value as it is, then 70% of the old one and 30% of the new."""
    return new if not old else 0.7 * old + 0.3 * new


def encode_jpeg(frame: torch.Tensor, quality: int = 80) -> bytes:
    """A JPEG of one ``[H, W, 3]`` float image in [0, 1]."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image_to_uint8(frame), "RGB").save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def pcm16(samples: np.ndarray) -> bytes:
    """float samples -> int16 little-endian bytes, ``v / 32768`` read back as it was (clipped at full scale)."""
    return np.clip(np.round(np.asarray(samples, np.float32) * 32768.0), -32768, 32767).astype("<i2").tobytes()


class LiveSession:
    """One live conversation with one portrait.

    ``parts``: the networks (:class:`LiveParts`); ``source``: the portrait's LivePortrait source (with
    its raw motion heads and crop record); ``full``: the portrait ``[1, H, W, 3]`` the faces are pasted
    into; ``sink``: where the output goes (:data:`Sink`; called from the session's threads).

    :meth:`start` starts the workers; :meth:`push` feeds 16 kHz mono float samples; :meth:`stop` ends
    the audio (the last frames follow, then ``sink("end", frames, samples)``); :meth:`close` aborts.
    """

    def __init__(self, parts: LiveParts, source: LivePortraitSource, full: torch.Tensor, sink: Sink,
                 config: Optional[LiveConfig] = None, clock: Callable[[], float] = time.monotonic):
        if source.record is None:
            raise InputError("a live session pastes faces back: make the source with portrait_source")
        self.parts, self.source, self.sink, self.clock = parts, source, sink, clock
        self.config = cfg = config or LiveConfig()
        self.full = full.float().cpu()
        self.mask = mask_template()
        cpu = parts.device is None or torch.device(parts.device).type == "cpu"
        self._motion_lock = parts.render_lock if cpu else contextlib.nullcontext()
        self.motion = MotionStream(parts.lp_models, source, parts.lmdm, parts.encoder, steps=cfg.steps,
                                   guidance=cfg.guidance, seed=cfg.seed, emotion=cfg.emotion, eye_open=cfg.eye_open)
        self._inbox: Deque[np.ndarray] = collections.deque()
        self._queued = 0                       # samples in the inbox
        self._cond = threading.Condition()
        self._stopping = False
        self._closed = threading.Event()
        self._blocks: "queue.Queue" = queue.Queue(maxsize=3)
        self._frames: "queue.Queue" = queue.Queue(maxsize=8)
        self._threads: List[threading.Thread] = []
        self.t0: Optional[float] = None
        self.error: Optional[str] = None
        self.ended = threading.Event()
        # the timeline: samples fed to the motion stream + silence skipped (whole frames)
        self._skipped_frames = 0
        self._speech_at: Optional[Tuple[int, float]] = None   # (timeline sample, wall) of the first speech
        self._render_s = 0.0                   # running estimates (s per frame): render, paste-back + JPEG
        self._post_s = 0.0
        self._paste_s = 0.0
        self._window_s = 0.0
        self.counters: Dict[str, float] = collections.defaultdict(float)
        self._first_frame_wall: Optional[float] = None
        self._speech_latency: Optional[float] = None

    # ------------------------------------------------------------------ control
    def start(self) -> "LiveSession":
        """Timeline 0 is now; start the workers."""
        if self.t0 is not None:
            raise InputError("this live session was started already")
        self.t0 = self.clock()
        for name, target in (("motion", self._motion_loop), ("render", self._render_loop),
                             ("encode", self._encode_loop)):
            t = threading.Thread(target=self._guarded, args=(target,), name=f"live-{name}", daemon=True)
            self._threads.append(t)
            t.start()
        return self

    @property
    def queued_s(self) -> float:
        """Seconds of pushed audio not yet fed to the motion model."""
        return self._queued / SAMPLE_RATE

    def push(self, samples) -> bool:
        """Queue 16 kHz mono float samples (finite). False (nothing queued) when the inbox is full: wait
        until :attr:`queued_s` drops, as a server does by not reading its socket."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if not np.isfinite(x).all():
            raise InputError("the audio has NaN or infinite samples")
        if self._stopping:
            raise InputError("this live session was stopped; start a new one")
        if not x.size:
            return True
        with self._cond:
            if self._queued and self._queued + x.size > self.config.max_audio_s * SAMPLE_RATE:
                return False
            if self._speech_at is None:
                self._speech_at = (-1, self.clock())      # its timeline place is set when it is fed
            self._inbox.append(x)
            self._queued += x.size
            self._cond.notify_all()
        return True

    def stop(self) -> None:
        """No more audio: the frames of what was pushed follow, then ``end``."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        """Abort: the workers end (their current batch finishes first) and the state is let go."""
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        for q in (self._blocks, self._frames):
            _drain(q)
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._inbox.clear()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait for the end (or an error); True when it came."""
        return self.ended.wait(timeout)

    # ------------------------------------------------------------------ timeline
    def _now_samples(self) -> int:
        return int((self.clock() - self.t0) * SAMPLE_RATE)

    def _fed_timeline(self) -> int:
        """Timeline samples fed so far (the motion stream's samples plus the skipped silence)."""
        return self.motion.samples_in + self._skipped_frames * HOP

    def _deadline(self, frame: int) -> float:
        return self.t0 + self.config.latency + frame / FPS

    # ------------------------------------------------------------------ workers
    def _guarded(self, target) -> None:
        try:
            target()
        except BaseException as exc:  # noqa: BLE001 - reported to the client, the session ends
            if not self._closed.is_set():
                message = str(exc) if isinstance(exc, TalkingHeadError) else f"{type(exc).__name__}: {exc}"
                log.exception("live session failed")
                self._fail(message)

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.error = message
            self._emit("error", 0, message)
        self._closed.set()
        with self._cond:
            self._cond.notify_all()
        self.ended.set()

    def _emit(self, kind: str, index: int, payload) -> Optional[bool]:
        try:
            return self.sink(kind, index, payload)
        except Exception:  # noqa: BLE001 - a sink that fails ends the session, quietly
            log.debug("live sink failed", exc_info=True)
            self._closed.set()
            return False

    def _next_audio(self) -> Optional[np.ndarray]:
        """Block until there is audio to feed (speech, or silence in a realtime session); None at the end."""
        cfg = self.config
        idle = int(cfg.idle_chunk_s * SAMPLE_RATE)
        with self._cond:
            while not self._closed.is_set():
                if self._inbox:
                    parts, n = [], 0
                    while self._inbox and n < SAMPLE_RATE:         # up to a second at a time
                        parts.append(self._inbox.popleft())
                        n += parts[-1].size
                    self._queued -= n
                    x = np.concatenate(parts)
                    if self._speech_at is not None and self._speech_at[0] < 0:
                        self._speech_at = (self._fed_timeline(), self._speech_at[1])
                    return x
                if self._stopping:
                    return None
                if cfg.realtime:
                    behind = self._now_samples() - self._fed_timeline()
                    if behind > cfg.max_lag * SAMPLE_RATE:         # policy 3: skip idle time
                        skip = (behind - idle) // HOP
                        if skip > 0:
                            self._skipped_frames += skip
                            self.counters["skipped_s"] += skip * HOP / SAMPLE_RATE
                            behind -= skip * HOP
                    if behind >= idle:
                        self.counters["silence_s"] += idle / SAMPLE_RATE
                        return np.zeros(idle, np.float32)
                    self._cond.wait((idle - behind) / SAMPLE_RATE + 1e-3)
                else:
                    self._cond.wait(0.5)
        return None

    def _motion_loop(self) -> None:
        while not self._closed.is_set():
            x = self._next_audio()
            if x is None:
                break
            at = self._fed_timeline()
            self._emit("audio", at, pcm16(x))
            t = time.perf_counter()
            with self._motion_lock:
                blocks = self.motion.push(x)
            self._handoff(blocks, time.perf_counter() - t)
        if not self._closed.is_set():
            self._handoff(self.motion.flush(), None)
            self._put(self._blocks, _END)

    def _handoff(self, blocks, seconds: Optional[float]) -> None:
        cfg = self.config
        for first, x_d in blocks:
            if seconds is not None:
                self._window_s = _ema(self._window_s, seconds)
            first += self._skipped_frames
            if cfg.realtime:                                       # policy 1: fewer DDIM steps
                slack = self._deadline(first + int(x_d.shape[0]) - 1) - self.clock()
                need = self._render_s * x_d.shape[0] / 2 + self._window_s
                steps = self.motion.steps
                if slack < need and steps > cfg.min_steps:
                    self.motion.set_steps(max(cfg.min_steps, steps // 2))
                    self.counters["steps_lowered"] += 1
                elif slack > 3 * need + 0.5 and steps < cfg.steps:
                    self.motion.set_steps(min(cfg.steps, steps * 2))
                    self.counters["steps_raised"] += 1
            self._put(self._blocks, (first, x_d))

    def _put(self, q: "queue.Queue", item) -> None:
        while not self._closed.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _get(self, q: "queue.Queue"):
        while not self._closed.is_set():
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _render_loop(self) -> None:
        cfg, parts = self.config, self.parts
        while True:
            item = self._get(self._blocks)
            if item is _END:
                break
            first, x_d = item
            idx = list(range(first, first + int(x_d.shape[0])))
            for b in range(0, len(idx), cfg.batch):
                sel = idx[b:b + cfg.batch]
                with parts.render_lock:                            # (on a CPU the motion may hold it a while)
                    if cfg.realtime:                               # policy 2: drop what would be late
                        done = self.clock() + self._render_s * len(sel) + self._post_s
                        keep = [i for i in sel if done <= self._deadline(i)]
                        self.counters["dropped_late"] += len(sel) - len(keep)
                        sel = keep
                        if not sel:
                            continue
                    rows = x_d[[i - first for i in sel]]
                    t = time.perf_counter()
                    faces = torch.cat(list(render_frames(parts.lp_models, self.source, rows, batch_size=len(sel),
                                                         device=parts.device, precision=parts.precision)))
                    per = (time.perf_counter() - t) / len(sel)
                self._render_s = _ema(self._render_s, per)
                if not torch.isfinite(faces).all():
                    raise TalkingHeadError("the renderer made a frame with NaN or infinite values")
                t = time.perf_counter()
                frames = paste_back(self.full, faces.permute(0, 2, 3, 1), self.source.record, mask=self.mask,
                                    device=parts.device, antialias=False, premultiplied=False)
                self._paste_s = (time.perf_counter() - t) / len(sel)
                for i, frame in zip(sel, frames):
                    self._put(self._frames, (i, frame))
                if self._closed.is_set():
                    return
        self._put(self._frames, _END)

    def _encode_loop(self) -> None:
        cfg = self.config
        while True:
            item = self._get(self._frames)
            if item is _END:
                break
            i, frame = item
            t = time.perf_counter()
            jpeg = encode_jpeg(frame, cfg.jpeg_quality)
            post = self._paste_s + time.perf_counter() - t
            self._post_s = _ema(self._post_s, post)
            if self._emit("video", i, jpeg) is False:
                self.counters["dropped_client"] += 1
                continue
            now = self.clock()
            self.counters["frames_sent"] += 1
            if self._first_frame_wall is None:
                self._first_frame_wall = now - self.t0
            at = self._speech_at
            if self._speech_latency is None and at is not None and at[0] >= 0 and i * HOP >= at[0]:
                self._speech_latency = now - at[1]
        if not self._closed.is_set():
            self._finish()

    def _finish(self) -> None:
        samples = self._fed_timeline()
        frames = -(-samples // HOP)
        self.counters["frames_total"] = frames
        self._emit("end", frames, samples)
        self.ended.set()

    # ------------------------------------------------------------------ report
    def stats(self) -> dict:
        """What the session has done so far (all times in seconds)."""
        c = self.counters
        now = self.clock()
        elapsed = max(now - self.t0, 1e-9) if self.t0 is not None else 0.0
        fed = self._fed_timeline()
        return {
            "timeline_s": round(fed / SAMPLE_RATE, 3),
            "behind_s": round(max(0.0, elapsed - fed / SAMPLE_RATE), 3) if self.config.realtime else None,
            "frames_sent": int(c["frames_sent"]),
            "frames_dropped_late": int(c["dropped_late"]),
            "frames_dropped_client": int(c["dropped_client"]),
            "fps": round(c["frames_sent"] / elapsed, 2) if elapsed else 0.0,
            "steps": self.motion.steps,
            "steps_lowered": int(c["steps_lowered"]),
            "silence_fed_s": round(c["silence_s"], 3),
            "silence_skipped_s": round(c["skipped_s"], 3),
            "render_s_per_frame": round(self._render_s, 4),
            "motion_s_per_push": round(self._window_s, 4),
            "first_frame_s": None if self._first_frame_wall is None else round(self._first_frame_wall, 3),
            "speech_to_frame_s": None if self._speech_latency is None else round(self._speech_latency, 3),
            "queued_audio_s": round(self.queued_s, 3),
        }


def _drain(q: "queue.Queue") -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return


__all__ = ["FairLock", "HOP", "LiveConfig", "LiveParts", "LiveSession", "encode_jpeg", "pcm16"]
