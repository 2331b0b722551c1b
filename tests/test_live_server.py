"""Live mode's server (live/server.py) over real sockets: the wire protocol of live/protocol.py end to end, hostile
clients, access, several sessions, clients that vanish or stop reading, and ``run.py live`` on the command line.

Each server runs in-process (an aiohttp ``AppRunner`` on 127.0.0.1, a free port, its own event loop in a
thread) on the tiny test weights, with example_inputs/portrait.png cropped by the ``center`` detector at 128
pixels. The pack is imported as a package (``run.load_pack``) because its code uses relative imports; the
tiny parts come from the same ``<pack>.core`` so that its classes and exceptions are the server's.
Clients: the ``websockets`` package's sync client, and :class:`RawClient` (a WebSocket on a plain socket)
where a client must misbehave below the protocol (stop reading, vanish without a close frame).
"""
from __future__ import annotations

import asyncio
import base64
import importlib
import inspect
import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

websockets = pytest.importorskip("websockets")
aiohttp_web = pytest.importorskip("aiohttp.web")
soxr = pytest.importorskip("soxr")

from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from live_common import speech, tiny_parts  # noqa: E402
from run import load_pack  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PORTRAIT = ROOT / "example_inputs" / "portrait.png"
PACK = load_pack().__name__
SRV = importlib.import_module(f"{PACK}.live.server")
P = importlib.import_module(f"{PACK}.live.protocol")
FPS, RATE = 25, 16000
SIDE = 128
WAIT = 90.0                       # the longest any one session may take on a busy 2-core machine

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- an in-process server


class Running:
    """A :class:`LiveServer` served on 127.0.0.1 (or ``host``) at a free port by a thread of its own."""

    def __init__(self, server, host: str = "127.0.0.1"):
        self.server, self.host = server, host
        self.loop = asyncio.new_event_loop()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.errors = []
        started = threading.Event()

        def main():
            asyncio.set_event_loop(self.loop)
            try:
                self.runner = aiohttp_web.AppRunner(SRV.make_app(server), handle_signals=False, shutdown_timeout=2)
                self.loop.run_until_complete(self.runner.setup())
                self.loop.run_until_complete(aiohttp_web.SockSite(self.runner, self.sock).start())
            except BaseException as exc:  # noqa: BLE001 - reported by the constructor
                self.errors.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()
            for session in list(server.sessions.values()):
                session.close(timeout=2)
            self.loop.run_until_complete(self.runner.cleanup())
            self.loop.close()

        self.thread = threading.Thread(target=main, name="live-test-server", daemon=True)
        self.thread.start()
        assert started.wait(30) and not self.errors, self.errors

    def url(self, path: str = P.WS_PATH, host: str = None) -> str:
        scheme = "ws" if path == P.WS_PATH else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def get(self, path: str, host: str = None, headers=None):
        """``(status, content type, body bytes)`` of a GET (never through a proxy of the environment)."""
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        req = urllib.request.Request(self.url(path, host), headers=headers or {})
        try:
            with opener.open(req, timeout=30) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers.get("Content-Type", ""), exc.read()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        assert not self.thread.is_alive(), "the test server did not stop"


@contextmanager
def running(parts, **options):
    server = SRV.LiveServer(parts, SRV.Portraits([PORTRAIT]), detector="center", max_side=SIDE, **options)
    run = Running(server)
    try:
        yield run
    finally:
        run.stop()


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    return tiny_parts(tmp_path_factory.mktemp("live-server-lmdm"), precision="fp32", core=f"{PACK}.core")


@pytest.fixture(scope="module")
def live(parts):
    """The module's server (the defaults: no token, 4 sessions)."""
    with running(parts) as run:
        yield run


# --------------------------------------------------------------------------- clients


#: websockets >= 15 reads proxies from the environment unless told not to; older releases have no such option
_NO_PROXY = {"proxy": None} if "proxy" in inspect.signature(connect).parameters else {}


def ws_connect(url: str, **kwargs):
    kwargs = {"max_size": None, **_NO_PROXY, "open_timeout": 30, "close_timeout": 5, **kwargs}
    return connect(url, **kwargs)


class Reply:
    """What a client received: the text messages (decoded), the binary ones (kind, index, payload) and how the
    server closed the socket."""

    def __init__(self):
        self.texts, self.video, self.audio = [], [], []
        self.order = []              # ("text", type) / ("video", i) / ("audio", s), as received
        self.code = self.reason = None

    def add(self, message) -> None:
        if isinstance(message, str):
            data = json.loads(message)
            self.texts.append(data)
            self.order.append(("text", data["type"]))
        else:
            kind, index, payload = P.unpack(message)
            assert kind in (P.VIDEO, P.AUDIO), kind
            (self.video if kind == P.VIDEO else self.audio).append((index, payload))
            self.order.append(("video" if kind == P.VIDEO else "audio", index))

    def of(self, kind: str):
        return [t for t in self.texts if t["type"] == kind]

    def one(self, kind: str) -> dict:
        found = self.of(kind)
        assert len(found) == 1, (kind, self.texts, self.code)
        return found[0]

    @property
    def pcm(self) -> np.ndarray:
        return np.frombuffer(b"".join(p for _, p in self.audio), "<i2")


def read_all(ws, reply: Reply = None, timeout: float = WAIT) -> Reply:
    """Every message until the server closes the socket."""
    reply = reply or Reply()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"the server did not close the session within {timeout:.0f} s: {reply.texts[-5:]}")
        try:
            reply.add(ws.recv(timeout=left))
        except TimeoutError:
            continue
        except ConnectionClosed as exc:
            reply.code = exc.rcvd.code if exc.rcvd is not None else None
            reply.reason = exc.rcvd.reason if exc.rcvd is not None else None
            return reply


def read_until(ws, reply: Reply, what, timeout: float = WAIT) -> Reply:
    """Read until ``what(reply)`` holds (fails if the socket closes first)."""
    deadline = time.monotonic() + timeout
    while not what(reply):
        assert time.monotonic() < deadline, f"timed out: {reply.texts[-5:]}"
        try:
            reply.add(ws.recv(timeout=max(0.01, deadline - time.monotonic())))
        except TimeoutError:
            pass
    return reply


def start_message(rate: int = 48000, fmt: str = "s16le", **more) -> str:
    return json.dumps({"type": "start", "sample_rate": rate, "format": fmt, "realtime": False, **more})


STOP = json.dumps({"type": "stop"})


def s16(x: np.ndarray) -> bytes:
    return np.round(np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def chunks(data: bytes, size: int):
    return [data[i:i + size] for i in range(0, len(data), size)]


def talk(url: str, start: str, audio: bytes, piece: int, stop: bool = True, **kwargs) -> Reply:
    """A whole well-behaved session: start, the audio in ``piece``-byte messages, stop, read to the end."""
    with ws_connect(url, **kwargs) as ws:
        ws.send(start)
        for c in chunks(audio, piece):
            ws.send(c)
        if stop:
            ws.send(STOP)
        return read_all(ws)


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} (after {timeout:g} s)")
        time.sleep(0.05)


def threads_of(sessions):
    return [t for s in sessions for t in s._threads]


class RawClient:
    """A WebSocket client on a plain socket, for what a library client will not do: stop reading (``rcvbuf``:
    a small receive buffer, so that the server's writes block soon), or vanish without a close frame."""

    def __init__(self, port: int, rcvbuf: int = None, path: str = P.WS_PATH):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(30)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):        # byte by byte: nothing past the headers is read
            byte = self.sock.recv(1)
            assert byte, f"the server closed the handshake: {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 101"), head

    def send(self, data, opcode: int = None) -> None:
        if isinstance(data, str):
            data, opcode = data.encode(), opcode or 1
        opcode = opcode or 2
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        mask = os.urandom(4)
        body = np.frombuffer(data, np.uint8) ^ np.resize(np.frombuffer(mask, np.uint8), n)
        self.sock.sendall(head + mask + body.tobytes())

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            got = self.sock.recv(n - len(out))
            if not got:
                raise ConnectionError("closed")
            out += got
        return out

    def recv(self):
        """``(opcode, payload)`` of the next frame (the server's frames are whole and unmasked)."""
        b0, b1 = self._exactly(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._exactly(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._exactly(8))[0]
        return b0 & 0x0F, self._exactly(n)

    def abort(self, reset: bool) -> None:
        """Gone without a close frame: a FIN, or (``reset``) a RST."""
        if reset:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


# --------------------------------------------------------------------------- 1-2. the round trip


def test_info_lists_the_portrait(live):
    status, ctype, body = live.get(P.INFO_PATH)
    assert status == 200 and ctype.startswith("application/json")
    info = json.loads(body)
    assert info["portraits"] == ["portrait.png"]
    assert (info["fps"], info["sample_rate"], info["protocol"]) == (25, 16000, 1) == (FPS, RATE, P.PROTOCOL)
    assert info["token_required"] is False and info["sessions"] == 0 and info["max_sessions"] == 4
    status, ctype, body = live.get(P.PAGE_PATH)
    assert status == 200 and ctype.startswith("text/html") and b"<canvas" in body


def check_session(reply: Reply, samples_sent: int) -> dict:
    """What every completed non-realtime session owes its client; returns ``ready``."""
    from PIL import Image

    assert reply.order[0] == ("text", "ready"), reply.order[:3]
    ready = reply.one("ready")
    assert (ready["fps"], ready["sample_rate"], ready["protocol"], ready["realtime"]) == (25, 16000, 1, False)
    assert ready["latency"] > 0 and ready["width"] > 0 and ready["height"] > 0
    assert max(ready["width"], ready["height"]) == SIDE            # the portrait fitted to max_side
    end = reply.one("end")
    assert reply.order[-1] == ("text", "end") and reply.code == 1000, (reply.order[-3:], reply.code)
    assert not reply.of("error")
    # audio: contiguous from 0, as many samples as the end says, about what was sent
    starts = [s for s, _ in reply.audio]
    lengths = [len(p) // 2 for _, p in reply.audio]
    assert all(len(p) % 2 == 0 for _, p in reply.audio)
    assert starts == list(np.cumsum([0] + lengths)[:-1]), starts
    assert sum(lengths) == end["samples"]
    assert abs(end["samples"] - samples_sent) <= 2, (end["samples"], samples_sent)
    assert end["frames"] == math.ceil(end["samples"] * FPS / RATE)
    # video: every frame, in order, each a JPEG of the announced size
    assert [i for i, _ in reply.video] == list(range(end["frames"]))
    for i, jpeg in reply.video[:: max(1, len(reply.video) // 6)] + reply.video[-1:]:
        img = Image.open(io.BytesIO(jpeg))
        assert img.format == "JPEG" and img.size == (ready["width"], ready["height"]), (i, img.format, img.size)
        rgb = np.asarray(img.convert("RGB"), np.float32)
        assert 10 < rgb.mean() < 245, "a black or white frame"
    # the frames of a stretch of timeline come after its audio (a player has the sound first)
    first_audio_at = {s: n for n, (kind, s) in enumerate(reply.order) if kind == "audio"}
    covered = [(s, s + n, first_audio_at[s]) for (s, _), n in zip(reply.audio, lengths)]
    for n, (kind, i) in enumerate(reply.order):
        if kind == "video":
            (pos,) = [at for a, b, at in covered if a <= i * RATE // FPS < b]
            assert pos < n, f"frame {i} came before its audio"
    return ready


def test_round_trip_s16le_48k(live):
    """48 kHz int16 in 100 ms messages, not realtime: ready, every frame, the audio back resampled, end, 1000."""
    rate = 48000
    x = np.clip(speech(1.5, seed=3, rate=rate).numpy(), -0.99, 0.99).astype(np.float32)
    sent = np.frombuffer(s16(x), "<i2")
    t0 = time.monotonic()
    reply = talk(live.url(), start_message(rate, "s16le"), sent.tobytes(), piece=rate // 10 * 2)
    took = time.monotonic() - t0
    check_session(reply, round(sent.size * RATE / rate))
    assert abs(reply.one("end")["samples"] - 24000) <= 2
    # the echoed audio is what was sent, resampled to 16 kHz. The server decodes int16 as v / 32768, resamples in
    # a stream (soxr's ResampleStream, 100 ms at a time, flushed at stop) and sends round(y * 32768). soxr's
    # stream gives the one-shot resampling's samples up to float32 noise, edges included (measured: the
    # difference is the int16 rounding alone, 0.5 LSB), so 1 LSB everywhere: a chunk shifted, dropped,
    # doubled or resampled at the wrong rate is thousands of LSB off. The correlation says the same in one
    # number that does not depend on the level.
    want = soxr.resample(sent.astype(np.float32) / 32768.0, rate, RATE) * 32768.0
    got = reply.pcm.astype(np.float64)
    n = min(len(got), len(want))
    assert abs(len(got) - len(want)) <= 2 and abs(n - 24000) <= 2, (len(got), len(want))
    err = np.abs(got[:n] - want[:n])
    assert err.max() <= 1.0, (err.max(), int(err.argmax()))
    assert np.corrcoef(got[:n], want[:n])[0, 1] > 0.9999
    # about once a second, how the session is doing
    stats = reply.of("stats")
    assert stats and all(s["steps"] >= 1 and s["frames_dropped_late"] == 0 for s in stats)
    sent = [s["frames_sent"] for s in stats]
    assert sent == sorted(sent) and sent[-1] <= len(reply.video)
    print(f"round trip s16le 48k: {len(reply.video)} frames in {took:.1f} s")


def test_round_trip_f32le_16k_echoes_the_samples(live):
    """16 kHz float32: no resampling, so the audio that comes back is the samples sent as int16, exactly."""
    x = np.clip(speech(1.2, seed=4).numpy(), -1.2, 1.2).astype("<f4")    # a little over full scale: clipped
    reply = talk(live.url(), start_message(RATE, "f32le"), x.tobytes(), piece=1600 * 4)
    check_session(reply, x.size)
    want = np.clip(np.round(x * 32768.0), -32768, 32767).astype(np.int16)
    assert reply.one("end")["samples"] == x.size
    assert np.array_equal(reply.pcm, want)


def test_ragged_messages_and_one_sample_messages(live):
    """Message boundaries mean nothing: odd-sized messages (whole samples) give the same audio back."""
    x = np.clip(speech(0.5, seed=5).numpy(), -1, 1)
    data = s16(x)
    sizes = [2, 2, 4, 998, 6, 3200, 10, 2]
    pieces, at = [], 0
    while at < len(data):
        n = sizes[len(pieces) % len(sizes)]
        pieces.append(data[at:at + n])
        at += n
    with ws_connect(live.url()) as ws:
        ws.send(start_message(RATE, "s16le"))
        for p in pieces:
            ws.send(p)
        ws.send(b"")                                  # an empty message is no audio
        ws.send(STOP)
        reply = read_all(ws)
    check_session(reply, x.size)
    # the server reads int16 as v / 32768 and sends round(y * 32768) (core.live.pcm16): the very samples come
    # back, so no message boundary moved, lost or doubled one
    assert np.array_equal(reply.pcm, np.frombuffer(data, "<i2"))


def test_stop_without_audio_ends_with_nothing(live):
    with ws_connect(live.url()) as ws:
        ws.send(start_message(RATE))
        ws.send(STOP)
        reply = read_all(ws)
    end = reply.one("end")
    assert (end["frames"], end["samples"]) == (0, 0) and reply.code == 1000 and not reply.video


def test_pings_are_answered_while_the_last_frames_are_made(live):
    """After stop the server goes on reading, so a client's keepalive pings are answered while the frames of
    what it sent are still being made (seconds, here; minutes for a long TTS stream on a CPU)."""
    x = np.clip(speech(2.0, seed=6).numpy(), -1, 1)
    with ws_connect(live.url()) as ws:
        ws.send(start_message(RATE, "s16le"))
        for c in chunks(s16(x), 3200):
            ws.send(c)
        ws.send(STOP)
        got = {}
        reader = threading.Thread(target=lambda: got.setdefault("reply", read_all(ws)), daemon=True)
        reader.start()                              # (the client handles a pong only while it reads)
        answered = 0
        while reader.is_alive():
            try:
                pong = ws.ping()
            except ConnectionClosed:                # the server closed after end, in between
                break
            if pong.wait(2.0):
                answered += 1
            elif reader.is_alive():
                pytest.fail(f"a ping after stop was not answered within 2 s (after {answered} answered)")
            time.sleep(0.2)
        reader.join()
    assert answered >= 3, "the session must outlast a few pings for this test to mean anything"
    check_session(got["reply"], x.size)
    assert got["reply"].code == 1000


def test_audio_after_stop_is_an_error(live):
    with ws_connect(live.url()) as ws:
        ws.send(start_message(RATE, "s16le"))
        ws.send(s16(np.zeros(1600)))
        ws.send(STOP)
        ws.send(s16(np.zeros(1600)))
        reply = read_all(ws)
    assert "no audio may follow stop" in reply.one("error")["message"] and reply.code == 1008


# --------------------------------------------------------------------------- 3. hostile clients

GOOD = start_message(RATE, "s16le")
F32 = start_message(RATE, "f32le")

#: name -> (messages sent in order, a phrase the error names, the close code)
HOSTILE = {
    "first message binary": ([b"\x00\x01" * 100], "first message must be the text", 1008),
    "first message not JSON": (["hello"], "must be JSON", 1008),
    "first message JSON but not start": ([json.dumps({"type": "stop"})], '"type": "start"', 1008),
    "first message a JSON list": ([json.dumps(["start"])], '"type": "start"', 1008),
    "sample_rate 1000": ([start_message(1000)], "sample_rate", 1008),
    "sample_rate 'abc'": ([start_message("abc")], "sample_rate", 1008),
    "sample_rate true": ([start_message(True)], "sample_rate", 1008),
    "sample_rate 16000.5": ([start_message(16000.5)], "sample_rate", 1008),
    "no sample_rate": ([json.dumps({"type": "start"})], "sample_rate", 1008),
    "format mp3": ([start_message(RATE, "mp3")], "format", 1008),
    "steps 0": ([start_message(RATE, steps=0)], "steps", 1008),
    "steps 'ten'": ([start_message(RATE, steps="ten")], "steps", 1008),
    "jpeg_quality 100": ([start_message(RATE, jpeg_quality=100)], "jpeg_quality", 1008),
    "realtime 'yes'": ([start_message(RATE, realtime="yes")], "realtime", 1008),
    "portrait not offered": ([start_message(RATE, portrait="someone.png")], "no portrait 'someone.png'", 1008),
    "portrait a path out": ([start_message(RATE, portrait="../../etc/passwd")], "no portrait '../../etc/passwd'",
                            1008),
    "portrait an absolute path": ([start_message(RATE, portrait=str(PORTRAIT))], "no portrait", 1008),
    "portrait a number": ([start_message(RATE, portrait=5)], "portrait must be", 1008),
    "s16le odd byte count": ([GOOD, b"\x00" * 3201], "whole samples of 2 bytes", 1008),
    "f32le not a multiple of 4": ([F32, b"\x00" * 6], "whole samples of 4 bytes", 1008),
    "f32le NaN": ([F32, np.array([0.1, np.nan, 0.2], "<f4").tobytes()], "NaN", 1008),
    "f32le infinity": ([F32, np.array([0.1, -np.inf], "<f4").tobytes()], "infinite", 1008),
    "f32le 1000.0": ([F32, np.full(160, 1000.0, "<f4").tobytes()], "[-1, 1]", 1008),
    "text after start not stop": ([GOOD, json.dumps({"type": "pause"})], "after start only", 1008),
    "text after start not JSON": ([GOOD, "stop"], "must be JSON", 1008),
    "a second start": ([GOOD, GOOD], "after start only", 1008),
}


def hostile_session(url: str, messages, **kwargs) -> Reply:
    with ws_connect(url, **kwargs) as ws:
        for m in messages:
            try:
                ws.send(m)
            except ConnectionClosed:
                break
        return read_all(ws, timeout=60)


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_client_ends_its_own_session(live, case):
    messages, phrase, code = HOSTILE[case]
    reply = hostile_session(live.url(), messages)
    errors = reply.of("error")
    assert len(errors) == 1 and reply.texts[-1]["type"] == "error", reply.texts
    assert phrase in errors[0]["message"], errors[0]["message"]
    assert reply.code == code, (reply.code, reply.reason)
    assert not reply.of("end")
    if case.startswith("portrait a path"):
        assert "root:" not in json.dumps(reply.texts)
    wait_until(lambda: not live.server.sessions, 15, "the session was not let go")


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflated"])
@pytest.mark.parametrize("first", [True, False], ids=["as-first", "after-start"])
def test_message_over_the_limit_is_closed_1009(live, compression, first):
    """A message over protocol.MAX_MESSAGE: aiohttp closes with 1009 itself (an error text may not come).
    Deflated, the same holds for a message that is small on the wire but too big once inflated (zeros)."""
    big = bytes(P.MAX_MESSAGE + 2) if compression else os.urandom(P.MAX_MESSAGE + 2)
    messages = [big] if first else [GOOD, b"\x00\x00" * 800, big]
    reply = hostile_session(live.url(), messages, compression=compression)
    assert reply.code == 1009, (reply.code, reply.reason, reply.texts)
    assert not reply.of("end")
    wait_until(lambda: not live.server.sessions, 15, "the session was not let go")


def test_no_start_message_in_time(live, monkeypatch):
    """The server waits 30 s for the start message; made cheap by shortening that one wait to 1 s."""
    real = aiohttp_web.WebSocketResponse.receive

    async def quick(self, timeout=None):
        return await real(self, timeout=1.0 if timeout == 30 else timeout)

    monkeypatch.setattr(aiohttp_web.WebSocketResponse, "receive", quick)
    t0 = time.monotonic()
    with ws_connect(live.url()) as ws:
        reply = read_all(ws, timeout=20)
    assert time.monotonic() - t0 < 10
    (error,) = reply.of("error")
    assert "no start message" in error["message"] and reply.code == 1008


def test_server_still_serves_after_hostile_clients(live):
    x = np.clip(speech(0.4, seed=6).numpy(), -1, 1)
    reply = talk(live.url(), GOOD, s16(x), piece=3200)
    check_session(reply, x.size)
    wait_until(lambda: not live.server.sessions, 15, "the session was not let go")
    status, _, body = live.get(P.INFO_PATH)
    assert status == 200 and json.loads(body)["sessions"] == 0


def test_portraits_of_a_folder(parts, tmp_path):
    """ComfyUI's way: the images of a folder, listed afresh on each look-up; only listed names are served."""
    folder = tmp_path / "input"
    folder.mkdir()
    (folder / "b.png").write_bytes(PORTRAIT.read_bytes())
    (folder / "broken.png").write_bytes(b"not a picture at all")
    (folder / "notes.txt").write_text("hello")
    (folder / "dir.png").mkdir()
    server = SRV.LiveServer(parts, SRV.Portraits(folder=lambda: folder), detector="center", max_side=SIDE)
    run = Running(server)
    try:
        assert json.loads(run.get(P.INFO_PATH)[2])["portraits"] == ["b.png", "broken.png"]
        (folder / "a.jpg").write_bytes(PORTRAIT.read_bytes())         # a file added later is offered
        assert json.loads(run.get(P.INFO_PATH)[2])["portraits"] == ["a.jpg", "b.png", "broken.png"]
        for name, phrase in (("broken.png", "broken.png"), ("notes.txt", "no portrait 'notes.txt'"),
                             ("dir.png", "no portrait 'dir.png'"), ("../input/b.png", "no portrait")):
            reply = hostile_session(run.url(), [start_message(RATE, portrait=name)])
            (error,) = reply.of("error")
            assert phrase in error["message"] and reply.code == 1008, (name, error, reply.code)
        with ws_connect(run.url()) as ws:                             # the one added later is served
            ws.send(start_message(RATE, portrait="a.jpg"))
            ws.send(STOP)
            assert read_all(ws).one("end") == {"type": "end", "frames": 0, "samples": 0}
        assert not server.sessions
    finally:
        run.stop()


# --------------------------------------------------------------------------- 4. access


def request(remote, query=None, headers=None):
    return SimpleNamespace(remote=remote, query=query or {}, headers=headers or {})


def test_access_rules(parts):
    portraits = SRV.Portraits([PORTRAIT])
    open_server = SRV.LiveServer(parts, portraits)
    for loopback in ("127.0.0.1", "127.3.4.5", "::1"):
        assert open_server.allowed(request(loopback)) is None, loopback
    why = open_server.allowed(request("10.0.0.5"))
    assert why and "--token" in why and "TALKINGHEAD_LIVE_TOKEN" in why, why
    assert open_server.allowed(request("10.0.0.5", {"token": ""})), "an empty token is no token"
    assert open_server.allowed(request(None)), "no address (a Unix socket, a test client) is not loopback"
    assert open_server.allowed(request("not an address"))

    guarded = SRV.LiveServer(parts, portraits, token="s3cret")
    assert guarded.allowed(request("127.0.0.1")) is None and guarded.allowed(request("::1")) is None
    for bad in ({"query": {"token": "wrong"}}, {"headers": {"Authorization": "Bearer wrong"}},
                {"query": {"token": ""}}, {"headers": {"Authorization": "s3cret"}},
                {"headers": {"Authorization": "Basic s3cret"}}, {"query": {"token": "s3cret "}},
                {"query": {"token": "S3CRET"}}, {}):
        why = guarded.allowed(request("10.0.0.5", **bad))
        assert why and "token" in why, bad
    assert guarded.allowed(request("10.0.0.5", {"token": "s3cret"})) is None
    assert guarded.allowed(request("10.0.0.5", headers={"Authorization": "Bearer s3cret"})) is None
    assert guarded.allowed(request("2001:db8::7", {"token": "s3cret"})) is None
    assert guarded.allowed(request("fe80::1%eth0")), "link-local is not loopback"
    assert guarded.allowed(request("10.0.0.5", {"token": "s3cr\u00e9t"})), "non-ASCII tokens are refused, not raised"


def _outward_address():
    """An IPv4 address of this machine that is not loopback (None where there is none)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.123", 9))           # no packet is sent: this only picks the route's source
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_token_server_over_http(parts):
    """A server with a token still serves loopback clients without one; from a non-loopback address of this
    machine (when it has one) the token is needed, by query or header."""
    server = SRV.LiveServer(parts, SRV.Portraits([PORTRAIT]), token="s3cret", detector="center", max_side=SIDE)
    run = Running(server, host="0.0.0.0")
    try:
        status, _, body = run.get(P.INFO_PATH, host="127.0.0.1")
        assert status == 200 and json.loads(body)["token_required"] is True
        assert run.get(P.PAGE_PATH, host="127.0.0.1")[0] == 200
        outward = _outward_address()
        if outward is None:
            pytest.skip("this machine has no non-loopback address to test the token over HTTP")
        status, _, body = run.get(P.INFO_PATH, host=outward)
        assert status == 403 and b"token" in body, (status, body)
        assert run.get(P.PAGE_PATH, host=outward)[0] == 403
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(run.url(host=outward))
        assert refused.value.response.status_code == 403
        assert run.get(P.INFO_PATH + "?token=wrong", host=outward)[0] == 403
        assert run.get(P.INFO_PATH + "?token=s3cret", host=outward)[0] == 200
        assert run.get(P.INFO_PATH, host=outward, headers={"Authorization": "Bearer s3cret"})[0] == 200
        with ws_connect(run.url(host=outward) + "?token=s3cret") as ws:
            ws.send(GOOD)
            ws.send(STOP)
            reply = read_all(ws)
        assert reply.one("end")["frames"] == 0 and reply.code == 1000
    finally:
        run.stop()


def test_websocket_from_another_site_is_refused(live):
    """A web page of another site open in the user's browser can open a WebSocket to 127.0.0.1 (browsers apply
    no same-origin rule to WebSockets, and the loopback needs no token): it would be served frames of the
    portraits. A WebSocket whose Origin is not this server's own is refused, as ComfyUI's own server refuses
    such requests on loopback (its origin_only_middleware); the server's own page still connects."""
    try:
        with ws_connect(live.url(), origin="http://evil.example"):
            status = 101
    except InvalidStatus as refused:
        status = refused.response.status_code
    assert status == 403, "a page of another site was let in"
    with ws_connect(live.url(), origin=f"http://127.0.0.1:{live.port}") as ws:
        ws.send(GOOD)
        ws.send(STOP)
        assert read_all(ws).code == 1000


# --------------------------------------------------------------------------- 5. sessions


def test_two_clients_at_once(live):
    """Two sessions at the same time: each gets frames and its own end (different lengths tell them apart)."""
    lengths = {"a": 1.0, "b": 0.6}
    replies, errors = {}, []

    def client(name):
        try:
            x = np.clip(speech(lengths[name], seed=7).numpy(), -1, 1)
            replies[name] = talk(live.url(), GOOD, s16(x), piece=3200)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(n,)) for n in lengths]
    seen = []
    for t in threads:
        t.start()
    deadline = time.monotonic() + WAIT
    while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
        seen.append(len(live.server.sessions))
        time.sleep(0.02)
    for t in threads:
        t.join(5)
    assert not errors, errors
    assert max(seen) == 2, "the two sessions did not overlap"
    sids = set()
    for name, seconds in lengths.items():
        ready = check_session(replies[name], int(seconds * RATE))
        sids.add(ready["session"])
        assert replies[name].one("end")["samples"] == int(seconds * RATE)
    assert len(sids) == 2
    wait_until(lambda: not live.server.sessions, 15, "the sessions were not let go")


def test_max_sessions_busy(parts):
    """max_sessions=1: a second client is told the server is busy (1013) while the first goes on."""
    with running(parts, max_sessions=1) as run:
        x = np.clip(speech(0.8, seed=8).numpy(), -1, 1)
        with ws_connect(run.url()) as first:
            first.send(GOOD)
            reply = read_until(first, Reply(), lambda r: r.of("ready"))
            first.send(s16(x[:6400]))
            busy = hostile_session(run.url(), [GOOD])
            assert busy.code == 1013 and len(busy.of("error")) == 1, (busy.code, busy.texts)
            assert "busy" in busy.of("error")[0]["message"]
            first.send(s16(x[6400:]))
            first.send(STOP)
            read_all(first, reply)
        check_session(reply, x.size)
        wait_until(lambda: not run.server.sessions, 15, "the session was not let go")
        again = talk(run.url(), GOOD, s16(x[:3200]), piece=3200)   # the slot is free again
        check_session(again, 3200)


def test_max_sessions_holds_when_clients_start_together(parts):
    """Two clients whose start messages arrive together, with room for one: one is served, one is busy (the
    server checks the count and registers the session with the portrait's preparation in between)."""
    with running(parts, max_sessions=1) as run:
        for attempt in range(3):
            a, b = RawClient(run.port), RawClient(run.port)
            a.send(GOOD)
            b.send(GOOD)
            kinds = []
            for c in (a, b):
                opcode, payload = c.recv()
                kinds.append(json.loads(payload)["type"] if opcode == 1 else opcode)
            peak = len(run.server.sessions)
            for c in (a, b):
                c.abort(reset=False)
            wait_until(lambda: not run.server.sessions, 15, "the sessions were not let go")
            assert sorted(kinds) == ["error", "ready"], (attempt, kinds, peak)


@pytest.mark.parametrize("reset", [False, True], ids=["fin", "rst"])
def test_client_that_vanishes_mid_stream(live, reset):
    """A client that goes away mid-stream without a close frame: within seconds its session is gone and the
    session's worker threads have ended."""
    client = RawClient(live.port)
    client.send(GOOD)
    x = np.clip(speech(3.0, seed=9).numpy(), -1, 1)
    for c in chunks(s16(x), 3200):
        client.send(c)
    video = 0
    deadline = time.monotonic() + WAIT
    while video < 3:                                   # mid-stream: frames are coming
        assert time.monotonic() < deadline
        opcode, payload = client.recv()
        video += opcode == 2 and payload[0] == P.VIDEO
    sessions = list(live.server.sessions.values())
    assert len(sessions) == 1 and all(t.is_alive() for t in threads_of(sessions))
    client.abort(reset)
    t0 = time.monotonic()
    wait_until(lambda: not live.server.sessions, 10, "the session of a vanished client was kept")
    wait_until(lambda: not any(t.is_alive() for t in threads_of(sessions)), 10,
               "the worker threads of a vanished client's session are still running")
    print(f"vanished client ({'rst' if reset else 'fin'}): let go in {time.monotonic() - t0:.1f} s")


# --------------------------------------------------------------------------- 6. a client that stops reading


def test_client_that_stops_reading_is_closed(parts):
    """Realtime, then the client never reads again (a small receive buffer, so the server's writes block
    soon): with send_timeout=2 the server closes the session within ~10 s and its threads end, instead of
    queueing frames and audio for it without end (a realtime session makes them for as long as it lasts)."""
    with running(parts, send_timeout=2) as run:
        client = RawClient(run.port, rcvbuf=4096)
        try:
            client.send(start_message(RATE, "s16le", realtime=True))
            x = np.clip(speech(3.0, seed=10).numpy(), -1, 1)
            for c in chunks(s16(x), 3200):
                client.send(c)
            wait_until(lambda: run.server.sessions, 30, "no session started")
            sessions = list(run.server.sessions.values())
            t0 = time.monotonic()
            # (20 s: well before aiohttp's 30 s heartbeat could be what ends it)
            wait_until(lambda: not run.server.sessions, 20, "the session of a client that stopped reading was kept")
            took = time.monotonic() - t0
            wait_until(lambda: not any(t.is_alive() for t in threads_of(sessions)), 10,
                       "the worker threads of a client that stopped reading are still running")
            assert took < 15, took
        finally:
            client.abort(reset=True)
        # the server is free for the next client
        again = talk(run.url(), GOOD, s16(x[:3200]), piece=3200)
        check_session(again, 3200)
        print(f"non-reading client closed after {took:.1f} s")


# --------------------------------------------------------------------------- 7. the command line


def _cli_env():
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    for var in ("TALKINGHEAD_MODELS", "TALKINGHEAD_MODELS_DIR", "TALKINGHEAD_LIVE_TOKEN"):
        env.pop(var, None)
    return env


def test_cli_help():
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), "live", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env=_cli_env())
    assert res.returncode == 0, res.stderr
    assert "--portrait" in res.stdout and "--token" in res.stdout and "--port" in res.stdout


def test_cli_without_weights_says_which_file_and_where(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), "live", "--portrait", str(PORTRAIT), "--offline",
                          "--models-dir", str(models), "--port", "0"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=_cli_env())
    assert res.returncode != 0
    assert time.monotonic() - t0 < 60
    err = res.stderr
    assert "Traceback" not in err and "Traceback" not in res.stdout, err
    assert "lmdm_v0.4_hubert.pth" in err and str(models) in err, err
    assert "huggingface.co" in err and "download" in err.lower(), err
    assert "live mode: open" not in res.stdout


def test_cli_with_a_missing_portrait(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "run.py"), "live", "--portrait", str(tmp_path / "nobody.png"),
                          "--offline", "--models-dir", str(tmp_path), "--port", "0"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120, env=_cli_env())
    assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr
    assert "nobody.png" in res.stderr and "does not exist" in res.stderr, res.stderr


def test_readme_client_example_runs_as_written(live, tmp_path):
    """The README's Python client, as printed, against this server (only its address changed): it streams
    example_inputs/speech.wav and gets every frame and the audio back."""
    import re

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("### The protocol (for programs"):text.index("### Latency and frame rate")]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(code) == 1 and "ws://127.0.0.1:8189/talkinghead/live/ws" in code[0]
    script = tmp_path / "client.py"
    script.write_text(code[0].replace("ws://127.0.0.1:8189/talkinghead/live/ws", live.url()))
    res = subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    import wave

    with wave.open(str(ROOT / "example_inputs" / "speech.wav")) as f:
        seconds = f.getnframes() / f.getframerate()
        samples = f.getnframes()
    assert f.getframerate() == 16000                  # (no resampling: the sample count is exact)
    # every frame of the 480x600 portrait at this server's 128 px, and the whole audio
    assert res.stdout.strip() == f"{math.ceil(samples / 640)} frames of 102x128, {seconds:.2f} s of audio", res.stdout


def test_fair_lock_hands_over_in_arrival_order():
    """core.live.FairLock: a thread that releases and acquires again waits behind the threads already waiting."""
    lock = importlib.import_module(f"{PACK}.core.live.session").FairLock()
    order = []
    lock.acquire()
    started = []

    def worker(name):
        started.append(name)
        with lock:
            order.append(name)

    threads = []
    for name in ("a", "b", "c"):
        t = threading.Thread(target=worker, args=(name,))
        t.start()
        threads.append(t)
        wait_until(lambda: len(lock._waiters) == len(threads), 5, f"{name} waits")
    lock.release()
    lock.acquire()                       # behind a, b and c
    order.append("main")
    lock.release()
    for t in threads:
        t.join(5)
    assert order == ["a", "b", "c", "main"] and not lock._held
