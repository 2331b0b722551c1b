"""A minimal, dependency-free client for ComfyUI's ``/ws`` event stream (RFC 6455, client side).

Only what the integration test needs: the handshake, reading unfragmented text/binary frames
(ComfyUI's server never fragments), answering pings and closing. Text frames are ComfyUI's JSON
events (``{"type": "executing" | "progress" | ..., "data": {...}}``); binary frames (previews) are
skipped.
"""
from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Callable, List, Optional


class EventStream:
    def __init__(self, host: str, port: int, client_id: str, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""
        self.seen: List[dict] = []
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self._buf:
            if not self._fill(deadline):
                raise ConnectionError("no websocket handshake reply from ComfyUI")
        head, self._buf = self._buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status + b" ":
            raise ConnectionError(f"websocket handshake refused: {status.decode(errors='replace')}")

    # -- low level
    def _fill(self, deadline: float) -> bool:
        """Read more bytes into the buffer; False on timeout."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            return False
        if not chunk:
            raise ConnectionError("ComfyUI closed the websocket")
        self._buf += chunk
        return True

    def _frame(self, deadline: float):
        """(opcode, payload) of the next whole frame, or None on timeout (a partial frame stays buffered)."""
        while True:
            buf = self._buf
            if len(buf) >= 2:
                opcode, length, pos = buf[0] & 0x0F, buf[1] & 0x7F, 2
                masked = buf[1] & 0x80
                if length == 126 and len(buf) >= 4:
                    length, pos = struct.unpack(">H", buf[2:4])[0], 4
                elif length == 127 and len(buf) >= 10:
                    length, pos = struct.unpack(">Q", buf[2:10])[0], 10
                if length < 126 or pos > 2:
                    mask = b""
                    if masked:
                        mask, pos = buf[pos:pos + 4], pos + 4
                    if len(buf) >= pos + length:
                        payload = buf[pos:pos + length]
                        if masked:
                            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
                        self._buf = buf[pos + length:]
                        return opcode, payload
            if not self._fill(deadline):
                return None

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([0x80 | opcode]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n))
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    # -- events
    def next_event(self, timeout: float) -> Optional[dict]:
        """The next JSON event within ``timeout`` seconds, or None."""
        deadline = time.monotonic() + timeout
        while True:
            frame = self._frame(deadline)
            if frame is None:
                return None
            opcode, payload = frame
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
            elif opcode == 0x8:
                raise ConnectionError("ComfyUI closed the websocket")
            elif opcode == 0x1:
                event = json.loads(payload.decode("utf-8"))
                self.seen.append(event)
                return event

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float,
                 while_waiting: Callable[[], None] = lambda: None) -> dict:
        """The first event with ``predicate(event)`` true; ``while_waiting()`` runs about once a second
        (it may raise to give up early). TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        checked = time.monotonic()
        while time.monotonic() < deadline:
            event = self.next_event(min(1.0, max(deadline - time.monotonic(), 0.01)))
            if event is not None and predicate(event):
                return event
            if time.monotonic() - checked >= 1.0:
                checked = time.monotonic()
                while_waiting()
        raise TimeoutError(f"no matching ComfyUI event within {timeout:.0f} s; last events: {self.seen[-5:]}")

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()

    def __enter__(self) -> "EventStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
