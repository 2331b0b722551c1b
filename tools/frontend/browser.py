"""A headless Chromium driven over the DevTools protocol (CDP), just enough to test ComfyUI's web UI.

No browser automation framework: Chromium is started with ``--remote-debugging-port``, one page
target is opened and its WebSocket carries CDP commands (``Runtime.evaluate``, ``Page.navigate``,
``Page.captureScreenshot``). Console errors, uncaught exceptions and JavaScript dialogs are
recorded so a test can assert that none happened.

Chromium is found as ``$CHROMIUM``, ``chromium``, ``chromium-browser``, ``google-chrome`` on the PATH
(Debian's ``chromium`` package in CI).
"""
from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["find_chromium", "stop_process", "Browser", "BrowserError"]


class BrowserError(RuntimeError):
    """A CDP command failed or a page script threw."""


def find_chromium() -> Optional[str]:
    """The Chromium executable, or None."""
    env = os.environ.get("CHROMIUM", "").strip()
    if env:
        return env
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """Terminate ``proc`` (kill it if it does not end within ``timeout`` seconds) and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


class Browser:
    """One headless Chromium with one page. Use as a context manager; :meth:`close` ends the process.

    ``extra_args`` are added to Chromium's command line (a fake microphone for the live page's test).
    """

    def __init__(self, width: int = 1600, height: int = 1000, executable: Optional[str] = None,
                 timeout: float = 60.0, extra_args: Sequence[str] = ()) -> None:
        exe = executable or find_chromium()
        if not exe:
            raise BrowserError("Chromium was not found: install Debian's 'chromium' package or set CHROMIUM")
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="th-chromium-")
        port = _free_port()
        args = [exe, "--headless=new", f"--remote-debugging-port={port}", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self._profile}", f"--window-size={width},{height}", "--no-first-run",
                "--no-default-browser-check", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-extensions", "--mute-audio",
                "--hide-scrollbars", "--force-device-scale-factor=1",
                # loopback only: the page never reaches the internet (release notes, registry look-ups)
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
                *extra_args, "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args.insert(1, "--no-sandbox")
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      stdin=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        self._pending: Dict[int, dict] = {}
        self._cond = threading.Condition()
        self.console: List[dict] = []     # {"type", "text"}
        self.exceptions: List[str] = []   # uncaught page exceptions
        self.dialogs: List[str] = []      # alert/confirm/prompt messages (auto-dismissed)
        self._closed = False
        try:
            from websockets.sync.client import connect

            ws_url = self._page_socket(port)
            self._ws_context = connect(ws_url, max_size=None, open_timeout=timeout)
            self._ws = self._ws_context.__enter__()
        except Exception:
            self.close()
            raise
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.send(domain)
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    # ------------------------------------------------------------------ plumbing

    def _page_socket(self, port: int) -> str:
        deadline = time.monotonic() + self.timeout
        last = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrowserError(f"Chromium exited at startup with code {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=2) as resp:
                    targets = json.loads(resp.read())
                pages = [t for t in targets if t.get("type") == "page"]
                if pages:
                    return pages[0]["webSocketDebuggerUrl"]
            except OSError as exc:
                last = exc
            time.sleep(0.1)
        raise BrowserError(f"Chromium's DevTools endpoint did not answer within {self.timeout:.0f} s ({last})")

    def _read(self) -> None:
        try:
            for raw in self._ws:
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._pending[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self._event(msg)
        except Exception:  # socket closed
            pass
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _event(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append({"type": params.get("type"), "text": text})
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.exceptions.append(exc.get("description") or details.get("text", "exception"))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append({"type": entry.get("level"), "text": entry.get("text", "") + " " +
                                 entry.get("url", "")})
        elif method == "Page.javascriptDialogOpening":
            self.dialogs.append(params.get("message", ""))
            threading.Thread(target=self.send, args=("Page.handleJavaScriptDialog",),
                             kwargs={"accept": False}, daemon=True).start()

    def send(self, method: str, timeout: Optional[float] = None, **params) -> dict:
        """Send one CDP command and return its result (raises :class:`BrowserError` on an error reply)."""
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while msg_id not in self._pending:
                if self._closed:
                    raise BrowserError(f"{method}: the browser connection closed")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"{method}: no answer within {timeout or self.timeout:.0f} s")
                self._cond.wait(left)
            reply = self._pending.pop(msg_id)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    # ------------------------------------------------------------------ what tests use

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def eval(self, expression: str, timeout: Optional[float] = None) -> Any:
        """Evaluate ``expression`` in the page (promises awaited) and return its JSON value."""
        result = self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                           returnByValue=True, userGesture=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"page script failed: {text}")
        return result.get("result", {}).get("value")

    def call(self, function: str, *args: Any, timeout: Optional[float] = None) -> Any:
        """Call the JavaScript ``function`` source (an async arrow function is fine) with JSON ``args``."""
        payload = ", ".join(json.dumps(a) for a in args)
        return self.eval(f"({function})({payload})", timeout=timeout)

    def wait_for(self, expression: str, timeout: Optional[float] = None, interval: float = 0.1) -> Any:
        """Poll ``expression`` until it is truthy; its value."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            try:
                value = self.eval(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out after {timeout or self.timeout:.0f} s waiting for: {expression}")
            time.sleep(interval)

    def click(self, x: float, y: float) -> None:
        """A left mouse click at page coordinates ``(x, y)``, as real input events."""
        self.send("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path, clip: Optional[dict] = None, fmt: str = "png", quality: int = 85) -> Path:
        params: Dict[str, Any] = {"format": fmt}
        if fmt == "jpeg":
            params["quality"] = quality
        if clip:
            params["clip"] = {**clip, "scale": clip.get("scale", 1)}
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def errors(self) -> List[str]:
        """Uncaught exceptions and console errors seen so far."""
        return self.exceptions + [c["text"] for c in self.console if c["type"] == "error"]

    def clear_log(self) -> None:
        self.console.clear()
        self.exceptions.clear()
        self.dialogs.clear()

    def close(self) -> None:
        try:
            if getattr(self, "_ws_context", None) is not None:
                self._ws_context.__exit__(None, None, None)
        except Exception:
            pass
        if getattr(self, "_proc", None) is not None:
            stop_process(self._proc, 10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
