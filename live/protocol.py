"""The live protocol: what a client and the live server say to each other over one WebSocket.

Endpoint: ``GET /talkinghead/live/ws`` (the headless server of ``python run.py live`` and ComfyUI's own
server both serve it). A client on another machine adds ``?token=TOKEN`` (or the header
``Authorization: Bearer TOKEN``); clients on the loopback address need none.

Client -> server
  * text ``{"type": "start", "sample_rate": 48000, "format": "s16le", ...}`` first, once. Optional keys:
    ``portrait`` (one of ``GET /talkinghead/live/info``'s ``portraits``; default the first), ``realtime``
    (default true: the session keeps to the wall clock, feeds silence when no speech comes and drops
    frames it cannot make in time; false: every frame is made, however late), ``steps`` (DDIM steps per
    motion window), ``jpeg_quality`` (30..95).
  * binary: mono PCM at the declared rate, ``s16le`` (int16 little-endian) or ``f32le`` (float32
    little-endian, finite, within [-1, 1] give or take), any number of samples per message up to
    :data:`MAX_MESSAGE` bytes.
  * text ``{"type": "stop"}``: no more audio; the server sends the last frames, then ``end``, then closes.

Server -> client
  * text ``{"type": "ready", "session": ID, "fps": 25, "width": W, "height": H, "sample_rate": 16000,
    "latency": SECONDS, "protocol": 1, "realtime": BOOL, "steps": N}`` once the portrait is prepared.
    Timeline 0 is the moment ``ready`` was sent. A player shows timeline ``t`` at ``ready + latency + t``.
  * binary video frame: byte 0 = :data:`VIDEO` (1), bytes 1..4 = the frame index ``i`` (uint32
    little-endian), then a JPEG of the whole portrait with the face pasted back. It belongs at timeline
    ``i / fps`` seconds.
  * binary audio: byte 0 = :data:`AUDIO` (2), bytes 1..4 = the first sample's index ``s`` on the
    timeline (uint32 little-endian), then int16 little-endian mono PCM at 16 kHz. It belongs at timeline
    ``s / 16000`` seconds. This is the audio the frames were made from (the speech the client sent,
    resampled, and the silence fed in between), so a player that schedules both by their timeline keeps
    them in sync.
  * text ``{"type": "stats", ...}`` about once a second (:meth:`core.live.LiveSession.stats`): frames
    made and dropped, the DDIM steps in use, how far behind real time the session is.
  * text ``{"type": "error", "message": TEXT}``, after which the server closes the socket.
  * text ``{"type": "end", "frames": N, "samples": M}`` after ``stop``: N frames cover the M samples.

Video frames can be dropped (realtime sessions that fall behind, clients that read too slowly); their
indices are then missing. Audio is never dropped.
"""
from __future__ import annotations

import json
import struct
from typing import Optional, Tuple

PROTOCOL = 1
#: the path of the WebSocket, of the page and of the info route
WS_PATH = "/talkinghead/live/ws"
PAGE_PATH = "/talkinghead/live"
INFO_PATH = "/talkinghead/live/info"
VIDEO = 1
AUDIO = 2
#: the largest message a client may send (bytes): 4 s of 48 kHz float32 audio, with room
MAX_MESSAGE = 1 << 20
SAMPLE_FORMATS = {"s16le": 2, "f32le": 4}
MIN_RATE, MAX_RATE = 8000, 192000
_HEADER = struct.Struct("<BI")


def pack(kind: int, index: int, payload: bytes) -> bytes:
    """One binary message: the kind byte, the uint32 index, the payload."""
    return _HEADER.pack(kind, index & 0xFFFFFFFF) + payload


def unpack(message: bytes) -> Tuple[int, int, bytes]:
    """``(kind, index, payload)`` of a binary server message."""
    if len(message) < _HEADER.size:
        raise ValueError("a binary message is at least 5 bytes")
    kind, index = _HEADER.unpack_from(message)
    return kind, index, message[_HEADER.size:]


def text(kind: str, **fields) -> str:
    return json.dumps({"type": kind, **fields})


def parse_start(message: str) -> dict:
    """The ``start`` message's settings, checked; :class:`ValueError` with the reason otherwise."""
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise ValueError("a text message must be JSON") from None
    if not isinstance(data, dict) or data.get("type") != "start":
        raise ValueError('the first message must be {"type": "start", "sample_rate": ..., "format": ...}')
    rate = data.get("sample_rate")
    if isinstance(rate, bool) or not isinstance(rate, int) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"sample_rate must be a whole number of Hz in [{MIN_RATE}, {MAX_RATE}], got {rate!r}")
    fmt = data.get("format", "s16le")
    if fmt not in SAMPLE_FORMATS:
        raise ValueError(f"format must be one of {sorted(SAMPLE_FORMATS)}, got {fmt!r}")
    out = {"sample_rate": rate, "format": fmt, "portrait": data.get("portrait"),
           "realtime": data.get("realtime", True)}
    if not isinstance(out["realtime"], bool):
        raise ValueError("realtime must be true or false")
    if out["portrait"] is not None and not isinstance(out["portrait"], str):
        raise ValueError("portrait must be a name from /talkinghead/live/info")
    for key, lo, hi in (("steps", 1, 50), ("jpeg_quality", 30, 95)):
        value = data.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{key} must be a whole number in [{lo}, {hi}], got {value!r}")
            out[key] = value
    return out


def parse_control(message: str) -> Optional[str]:
    """The type of a later text message (``stop``); :class:`ValueError` for anything else."""
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        raise ValueError("a text message must be JSON") from None
    kind = data.get("type") if isinstance(data, dict) else None
    if kind != "stop":
        raise ValueError(f'after start only binary audio and {{"type": "stop"}} are understood, got {kind!r}')
    return kind
