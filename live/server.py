"""The live server: the routes of :mod:`.protocol` on an aiohttp application, for ``python run.py live`` and
for ComfyUI's own server (``PromptServer.instance.routes``).

:class:`LiveServer` holds what its sessions share: the networks (loaded once, on first use or at start),
the portraits it offers and their prepared sources, and the open sessions. Each WebSocket is one
:class:`core.live.LiveSession`; its threads hand their output to the socket's sender through an asyncio
queue. What a client can do wrong ends its own session with an ``error`` message and a close code and
never the server: a bad start message, another message type, wrong PCM, a message over
:data:`.protocol.MAX_MESSAGE`, audio faster than the session can take (the server stops reading: TCP
back-pressure), a client that stops reading (frames are dropped, then the socket is closed after
:attr:`LiveServer.send_timeout` seconds).

Access: clients on the loopback address are served; any other needs the server's token
(``?token=`` or ``Authorization: Bearer``), and without a token set they are refused.
"""
from __future__ import annotations

import asyncio
import hmac
import ipaddress
import itertools
import logging
import socket
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core.errors import InputError, TalkingHeadError
from ..core.live import DEFAULT_MAX_SIDE, LiveConfig, LiveParts, LiveSession, prepare_portrait
from . import protocol as P

log = logging.getLogger(__name__)
PAGE = Path(__file__).resolve().parent.parent / "web" / "live.html"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: close codes (RFC 6455): policy violation, message too big, server error, going away
POLICY, TOO_BIG, FAILED = 1008, 1009, 1011


class Portraits:
    """The portraits a live server offers: named image files, given one by one, and the images of a folder
    (``folder``: a path, or a function giving it on each look-up, as ComfyUI's input folder)."""

    def __init__(self, files: Sequence[Path] = (), folder=None):
        self.files = {}
        for f in files:
            f = Path(f)
            if not f.is_file():
                raise InputError(f"the portrait {str(f)!r} does not exist")
            name = f.name
            while name in self.files:
                name = f"{f.parent.name}/{name}"
            self.files[name] = f
        self._folder = folder

    def folder(self) -> Optional[Path]:
        folder = self._folder() if callable(self._folder) else self._folder
        return Path(folder) if folder else None

    def names(self) -> List[str]:
        out = list(self.files)
        folder = self.folder()
        if folder is not None and folder.is_dir():
            out += sorted(p.name for p in folder.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and p.name not in self.files)
        return out

    def path(self, name: str) -> Path:
        if name in self.files:
            return self.files[name]
        folder = self.folder()
        if folder is not None and name in self.names():   # only names the listing offers
            return folder / name
        raise InputError(f"there is no portrait {name!r}; choose one of {self.names()[:20]}")


class LiveServer:
    """What the sessions of one server share. ``parts``: the loaded networks or a function that loads them
    (called once, on the first session, in a worker thread)."""

    def __init__(self, parts, portraits: Portraits, token: Optional[str] = None, max_sessions: int = 4,
                 config: Optional[LiveConfig] = None, detector: str = "face-alignment sfd",
                 max_side: int = DEFAULT_MAX_SIDE, send_timeout: float = 15.0, download: bool = True):
        self._parts = parts
        self.portraits = portraits
        self.token = token or None
        self.max_sessions = int(max_sessions)
        self.config = config or LiveConfig()
        self.detector, self.max_side, self.download = detector, int(max_side), download
        self.send_timeout = float(send_timeout)
        self.sessions: Dict[int, LiveSession] = {}
        self._ids = itertools.count(1)
        self._starting = 0          # sessions past the busy check whose portrait is being prepared
        self._lock = threading.Lock()
        self._sources: Dict[Tuple[str, float], tuple] = {}

    # ------------------------------------------------------------------ shared state (worker threads)
    def parts(self) -> LiveParts:
        with self._lock:
            if not hasattr(self._parts, "lp_models"):   # a loader, called once
                self._parts = self._parts()
            return self._parts

    def source(self, name: Optional[str]):
        """``(source, full)`` of a portrait, prepared once per file version."""
        from ..core.image import load_image

        names = self.portraits.names()
        if not names:
            raise InputError("this server has no portrait to offer (start it with --portrait PHOTO)")
        name = names[0] if name is None else name
        path = self.portraits.path(name)
        key = (name, path.stat().st_mtime)
        parts = self.parts()
        with self._lock:
            made = self._sources.get(key)
        if made is None:
            made = prepare_portrait(parts, load_image(path), detector=self.detector, max_side=self.max_side,
                                    download=self.download)
            with self._lock:
                self._sources[key] = made
        return made

    # ------------------------------------------------------------------ access
    def allowed(self, request) -> Optional[str]:
        """None when the request may go on, else why not."""
        remote = request.remote or ""
        try:
            loopback = ipaddress.ip_address(remote.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        foreign = _foreign_origin(request)
        if loopback and not foreign:
            return None
        if self.token is None:
            if foreign:
                return (f"a page of another site ({request.headers.get('Origin')}) may not use live mode without "
                        "the token: start it with --token (or set TALKINGHEAD_LIVE_TOKEN for ComfyUI)")
            return ("live mode serves only this machine (127.0.0.1) unless a token is set: start it with --token "
                    "(or set TALKINGHEAD_LIVE_TOKEN for ComfyUI) and pass ?token=... from other machines")
        given = request.query.get("token") or ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            given = given or auth[7:]
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return "a valid token is required (?token=... or Authorization: Bearer ...)"
        return None

    # ------------------------------------------------------------------ routes
    def add_routes(self, routes) -> None:
        """Register the page, the info route and the WebSocket on an aiohttp ``RouteTableDef`` or router."""
        for path, handler in ((P.PAGE_PATH, self.page), (P.INFO_PATH, self.info), (P.WS_PATH, self.websocket)):
            if hasattr(routes, "add_get"):          # an application's router
                routes.add_get(path, handler)
            else:                                   # a RouteTableDef (ComfyUI's PromptServer.instance.routes)
                routes.get(path)(handler)

    async def page(self, request):
        from aiohttp import web

        why = self.allowed(request)
        if why:
            raise web.HTTPForbidden(text=why)
        return web.FileResponse(PAGE, headers={"Content-Type": "text/html; charset=utf-8",
                                               "Cache-Control": "no-cache"})

    async def info(self, request):
        from aiohttp import web

        why = self.allowed(request)
        if why:
            raise web.HTTPForbidden(text=why)
        names = await asyncio.get_running_loop().run_in_executor(None, self.portraits.names)
        return web.json_response({"portraits": names, "fps": 25, "sample_rate": 16000, "protocol": P.PROTOCOL,
                                  "token_required": self.token is not None, "sessions": len(self.sessions),
                                  "max_sessions": self.max_sessions})

    async def websocket(self, request):
        from aiohttp import web

        why = self.allowed(request)
        if why:
            raise web.HTTPForbidden(text=why)
        ws = web.WebSocketResponse(max_msg_size=P.MAX_MESSAGE, heartbeat=30.0)
        await ws.prepare(request)
        _bound_unsent(request)
        try:
            await _Connection(self, ws, request).run()
        except Exception:  # noqa: BLE001 - one client's failure never reaches the server
            log.exception("live connection failed")
            if not ws.closed:
                await ws.close(code=FAILED)
        return ws


class _Connection:
    """One WebSocket: start, then audio in and frames out until stop, an error or a disconnect."""

    def __init__(self, server: LiveServer, ws, request=None):
        self.server, self.ws, self.request = server, ws, request
        self.loop = asyncio.get_running_loop()
        self.out: "asyncio.Queue" = asyncio.Queue()
        self.pending_video = 0
        self.session: Optional[LiveSession] = None
        self.resampler = None
        self.rate = 16000
        self.width = 2

    async def fail(self, message: str, code: int = POLICY) -> None:
        if not self.ws.closed:
            wait = min(5.0, self.server.send_timeout)
            try:
                await asyncio.wait_for(self.ws.send_str(P.text("error", message=message)), wait)
            except Exception:  # noqa: BLE001 - the client is gone or not reading
                pass
            try:
                await asyncio.wait_for(self.ws.close(code=code, message=message[:120].encode()), wait)
            except Exception:  # noqa: BLE001 - a client that does not read: drop the connection
                transport = getattr(self.request, "transport", None)
                if transport is not None:
                    transport.abort()

    # the session's threads call this
    def sink(self, kind: str, index: int, payload) -> bool:
        if kind == "video":
            if self.pending_video >= 25:            # the client is not keeping up: drop the frame
                return False
            self.pending_video += 1                 # (a benign race: the bound is approximate)
        try:
            self.loop.call_soon_threadsafe(self.out.put_nowait, (kind, index, payload))
        except RuntimeError:                        # the loop is closed
            return False
        return True

    async def run(self) -> None:
        from aiohttp import WSMsgType

        try:
            first = await self.ws.receive(timeout=30)
        except asyncio.TimeoutError:
            return await self.fail("no start message within 30 s")
        if first.type != WSMsgType.TEXT:
            return await self.fail(_closed_reason(first) or 'the first message must be the text {"type": "start", ...}',
                                   TOO_BIG if first.type == WSMsgType.ERROR else POLICY)
        try:
            start = P.parse_start(first.data)
        except ValueError as exc:
            return await self.fail(str(exc))
        server = self.server
        if len(server.sessions) + server._starting >= server.max_sessions:
            return await self.fail(f"the server is busy ({server.max_sessions} live sessions); try again later",
                                   code=1013)
        self.rate, self.width = start["sample_rate"], P.SAMPLE_FORMATS[start["format"]]
        self.format = start["format"]
        if self.rate != 16000:
            import soxr

            self.resampler = soxr.ResampleStream(self.rate, 16000, 1, dtype="float32")
        cfg = server.config
        overrides = {k: start[k] for k in ("realtime", "steps", "jpeg_quality") if k in start}
        if "steps" in overrides:
            overrides["min_steps"] = min(cfg.min_steps, overrides["steps"])
        server._starting += 1       # the slot is taken before the await below: two starts at once can't both pass
        try:
            config = LiveConfig(**{**cfg.__dict__, **overrides})
            source, full = await self.loop.run_in_executor(None, server.source, start["portrait"])
            parts = server.parts()
            session = LiveSession(parts, source, full, self.sink, config)
        except TalkingHeadError as exc:
            return await self.fail(str(exc))
        finally:
            server._starting -= 1
        sid = next(server._ids)
        server.sessions[sid] = self.session = session
        sender = None
        try:
            await self.ws.send_str(P.text("ready", session=sid, fps=25, width=int(full.shape[2]),
                                          height=int(full.shape[1]), sample_rate=16000, latency=config.latency,
                                          protocol=P.PROTOCOL, realtime=config.realtime, steps=config.steps))
            session.start()
            sender = asyncio.ensure_future(self.send_loop())
            receiver = asyncio.ensure_future(self.receive_loop())
            stats = asyncio.ensure_future(self.stats_loop())
            try:
                # the session ends when either side does: the sender after end, an error, or a client that stopped
                # reading; the receiver when the client went away or misbehaved
                await asyncio.wait((sender, receiver), return_when=asyncio.FIRST_COMPLETED)
            finally:
                stats.cancel()
                receiver.cancel()
        finally:
            if sender is not None and not sender.done():
                sender.cancel()
            server.sessions.pop(sid, None)
            await self.loop.run_in_executor(None, session.close)
            if not self.ws.closed:
                await self.ws.close()

    async def receive_loop(self) -> None:
        """Read the client's messages until the socket closes: audio, then stop. Reading goes on after stop,
        while the last frames are made, so that pings are answered (a ping is only answered by a reader)."""
        from aiohttp import WSMsgType

        stopped = False
        async for msg in self.ws:
            problem = None
            if msg.type == WSMsgType.BINARY:
                problem = "no audio may follow stop" if stopped else await self.audio(msg.data)
            elif msg.type == WSMsgType.TEXT:
                try:
                    P.parse_control(msg.data)
                except ValueError as exc:
                    problem = str(exc)
                if problem is None and not stopped:
                    stopped = True
                    self.finish_audio()
                    self.session.stop()
            else:
                problem = _closed_reason(msg) or "unexpected message"
            if problem:
                await self.fail(problem, TOO_BIG if "larger than" in problem else POLICY)
                return

    async def audio(self, data: bytes) -> Optional[str]:
        if len(data) % self.width:
            return f"{self.format} audio comes in whole samples of {self.width} bytes; got {len(data)} bytes"
        if self.format == "s16le":
            x = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        else:
            x = np.frombuffer(data, "<f4").astype(np.float32)
            if not np.isfinite(x).all():
                return "the audio has NaN or infinite samples"
            if x.size and np.abs(x).max() > 4.0:
                return "f32le samples must lie in [-1, 1]; these reach %.3g (is it int16 audio? send format s16le)" \
                       % float(np.abs(x).max())
        if self.resampler is not None:
            x = self.resampler.resample_chunk(x)
        while not self.session.push(x):              # the inbox is full: stop reading until it drains
            if self.session.error or self.ws.closed:
                return None
            await asyncio.sleep(0.02)
        return None

    def finish_audio(self) -> None:
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if tail.size:
                self.session.push(tail)

    async def send_loop(self) -> None:
        ws, timeout = self.ws, self.server.send_timeout
        while True:
            kind, index, payload = await self.out.get()
            try:
                if kind == "video":
                    self.pending_video -= 1
                    await asyncio.wait_for(ws.send_bytes(P.pack(P.VIDEO, index, payload)), timeout)
                elif kind == "audio":
                    await asyncio.wait_for(ws.send_bytes(P.pack(P.AUDIO, index, payload)), timeout)
                elif kind == "stats":
                    await asyncio.wait_for(ws.send_str(payload), timeout)
                elif kind == "end":
                    await asyncio.wait_for(ws.send_str(P.text("end", frames=index, samples=payload)), timeout)
                    await ws.close()
                    return
                elif kind == "error":
                    await self.fail(payload, FAILED)
                    return
            except asyncio.TimeoutError:
                await self.fail(f"the client stopped reading for {timeout:g} s")
                return
            except (ConnectionError, RuntimeError):      # the client is gone
                return

    async def stats_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.out.put_nowait(("stats", 0, P.text("stats", **self.session.stats())))


def _bound_unsent(request, limit: int = 64 * 1024) -> None:
    """Keep at most ``limit`` bytes unsent in the kernel's buffer of a live socket (Linux, macOS): else Linux
    grows it to megabytes for a client that stopped reading, and the sends that :attr:`LiveServer.send_timeout`
    times do not block for a minute or more. Bytes in flight are not counted: no cost in throughput."""
    transport = getattr(request, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, limit)
    except OSError:
        pass


def _foreign_origin(request) -> bool:
    """Whether a browser sent the request from a page of another site (its Origin is not this server): a
    WebSocket has no same-origin rule, so any page the user opens could otherwise use a loopback server."""
    origin = request.headers.get("Origin")
    if not origin:
        return False
    from urllib.parse import urlsplit

    return urlsplit(origin).netloc.lower() != (getattr(request, "host", "") or "").lower()


def _closed_reason(msg) -> Optional[str]:
    from aiohttp import WSMsgType

    if msg.type == WSMsgType.ERROR:
        text = str(msg.data or "")
        if "too big" in text.lower() or "size" in text.lower():
            return f"a message was larger than {P.MAX_MESSAGE} bytes"
        return f"the connection failed: {text}"
    return None


def make_app(server: LiveServer):
    """A standalone aiohttp application with the live routes (``/`` leads to the page)."""
    from aiohttp import web

    app = web.Application(client_max_size=P.MAX_MESSAGE)
    server.add_routes(app.router)

    async def index(request):
        raise web.HTTPFound(P.PAGE_PATH + (f"?{request.query_string}" if request.query_string else ""))

    app.router.add_get("/", index)
    return app


def serve(server: LiveServer, host: str = "127.0.0.1", port: int = 8189, on_ready=None) -> None:
    """Serve ``server`` until Ctrl-C (or SIGTERM); ``on_ready(port)`` once it listens."""
    from aiohttp import web

    async def main():
        runner = web.AppRunner(make_app(server), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        sockets = getattr(site._server, "sockets", None) or []
        if on_ready is not None:
            on_ready(sockets[0].getsockname()[1] if sockets else port)
        try:
            await asyncio.Event().wait()
        finally:
            for session in list(server.sessions.values()):
                session.close(timeout=2)
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


__all__ = ["LiveServer", "Portraits", "make_app", "serve"]
