"""The live page (``web/live.html``) in a real headless Chromium against the live server.

``tests/live_server.py`` (the live server on the tiny test weights) runs as a subprocess; Chromium gets
a fake microphone that plays a voiced-like WAV in a loop. Two sessions:

* microphone: Start, wait until frames and a second of audio came back and a frame was drawn, Stop, wait
  for the server's ``end``; the frames carry their audio (no frame ahead of the audio that covers it),
  the page decoded frames of the announced size, the server's frame count covers its samples;
* audio file (fed to the page's file input over CDP), not realtime: it streams paced at real time,
  ends by itself, and every frame of the ``end`` message reached the page.

A screenshot of each page is kept in ``test-artifacts/live/``.

Needs Chromium (Debian's ``chromium``), ``websockets`` and ``aiohttp``; where they are missing the tests
skip, except under CI (``CI`` set), where that is a failure.
"""
from __future__ import annotations

import math
import os
import queue
import subprocess
import sys
import threading
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import browser_test_mark

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts" / "live"
SERVER = ROOT / "tests" / "live_server.py"
FPS, RATE = 25, 16000
WAIT = float(os.environ.get("TH_LIVE_BROWSER_TIMEOUT", "120"))


pytestmark, _MISSING = browser_test_mark("the live browser test")

if not _MISSING:
    from frontend.browser import Browser, stop_process


def write_wav(path: Path, seconds: float, rate: int = 48000) -> int:
    """A voiced-like mono 16-bit WAV: a 140 Hz sawtooth under a 3 Hz envelope, peak ~0.3. Its length."""
    t = np.arange(int(round(seconds * rate))) / rate
    saw = 2.0 * ((140.0 * t) % 1.0) - 1.0
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t)
    pcm = np.round(0.3 * saw * envelope * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return len(pcm)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The live server's base URL; it runs as ``tests/live_server.py --port 0``."""
    log = tmp_path_factory.mktemp("live_server") / "stderr.txt"
    env = dict(os.environ, TALKINGHEAD_OFFLINE="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, str(SERVER), "--port", "0"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True)
    lines: "queue.Queue[str | None]" = queue.Queue()

    def read():  # keeps draining stdout so the server never blocks on a full pipe
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    try:
        url = None
        while url is None:
            try:
                line = lines.get(timeout=WAIT)
            except queue.Empty:
                pytest.fail(f"{SERVER.name} printed no LISTENING line within {WAIT:.0f} s:\n{log.read_text()}")
            if line is None:
                proc.wait(timeout=10)
                pytest.fail(f"{SERVER.name} exited with code {proc.returncode} before listening:\n"
                            f"{log.read_text()}")
            if line.startswith("LISTENING "):
                url = line.split()[1].rstrip("/")
        yield url
    finally:
        stop_process(proc, 10)
        if proc.stdout:
            proc.stdout.close()


@pytest.fixture(scope="module")
def mic_wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("live_mic") / "voice.wav"
    write_wav(path, 3.0)
    return path


@pytest.fixture(scope="module")
def browser(mic_wav):
    args = ("--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}", "--autoplay-policy=no-user-gesture-required")
    with Browser(1000, 800, extra_args=args) as b:
        yield b


# --------------------------------------------------------------------------- helpers

STATE = "JSON.parse(JSON.stringify(window.liveState))"


def open_page(browser, url: str) -> None:
    browser.eval("window.previousPage = true")   # so the wait below cannot see the page being left
    browser.clear_log()
    browser.goto(f"{url}/talkinghead/live")
    browser.wait_for("!window.previousPage && window.liveState && "
                     "(document.getElementById('portrait').options.length > 0 || window.liveState.errors.length > 0)")
    state = browser.eval(STATE)
    assert state["status"] == "idle" and not state["errors"], state["errors"]


def choose(browser, source: str, realtime: bool) -> None:
    browser.call("""(source, realtime) => {
        const select = document.getElementById('source');
        select.value = source;
        select.dispatchEvent(new Event('change'));
        document.getElementById('realtime').checked = realtime;
    }""", source, realtime)


def wait_state(browser, condition: str, timeout: float = WAIT) -> dict:
    """Wait until ``condition`` (on ``s``, the page's liveState) holds or the page reports an error."""
    browser.wait_for(f"(s => s.status === 'error' || s.errors.length > 0 || ({condition}))(window.liveState)",
                     timeout=timeout)
    state = browser.eval(STATE)
    assert state["status"] != "error" and not state["errors"], f"the page reported: {state['errors']}"
    return state


def check_session(browser, state: dict) -> None:
    """What every finished session satisfies."""
    assert browser.errors() == [], browser.errors()
    assert state["errors"] == [] and state["status"] == "ended", (state["status"], state["errors"])
    ready, end = state["ready"], state["end"]
    assert ready["fps"] == FPS and ready["sample_rate"] == RATE and ready["protocol"] == 1, ready
    assert ready["latency"] >= 0, ready
    # the page decoded frames of the size the server announced
    assert (state["frameWidth"], state["frameHeight"]) == (ready["width"], ready["height"]), state
    # N frames cover M samples; no frame beyond them; the audio is never dropped and covers them all
    assert end["frames"] == math.ceil(end["samples"] * FPS / RATE), end
    assert 0 <= state["firstFrameIndex"] <= state["lastFrameIndex"] <= end["frames"] - 1, (state, end)
    assert 0 < state["framesReceived"] <= end["frames"], (state, end)
    assert state["audioEnd"] == end["samples"] and state["audioSamples"] == end["samples"], (state, end)
    assert state["firstFrameWallMs"] >= state["startWallMs"], state


def frames_have_audio(state: dict) -> bool:
    """Every frame the page holds came with the audio that covers it (allowing one frame)."""
    return state["audioEnd"] / RATE >= state["lastFrameIndex"] / FPS - 1 / FPS


# --------------------------------------------------------------------------- tests


def test_microphone_session(server, browser):
    open_page(browser, server)
    choose(browser, "mic", realtime=True)
    browser.eval("document.getElementById('start').click()")
    live = wait_state(browser, "s.framesReceived >= 30 && s.audioSamples >= 16000 && s.framesShown > 0 "
                               "&& s.stats !== null")
    assert live["status"] == "live", live["status"]
    assert frames_have_audio(live), live
    assert browser.eval("document.getElementById('stop').disabled") is False

    browser.eval("document.getElementById('stop').click()")
    state = wait_state(browser, "s.status === 'ended'")
    browser.screenshot(ARTIFACTS / "page.png")
    check_session(browser, state)
    assert frames_have_audio(state), state
    assert state["framesShown"] > 0 and state["audioMessages"] > 0, state
    assert state["audioPeak"] > 0.05, state   # the fake microphone's sawtooth came back, not only silence
    # at least the second of audio the page waited for reached the server and came back
    assert state["end"]["samples"] >= RATE, state["end"]
    assert browser.eval("document.getElementById('start').disabled") is False


def test_audio_file_session(server, browser, tmp_path):
    wav = tmp_path / "speech.wav"
    length = write_wav(wav, 1.23)   # 59040 samples at 48 kHz: 19680 at 16 kHz, 30.75 frames
    open_page(browser, server)
    choose(browser, "file", realtime=False)
    root = browser.send("DOM.getDocument")["root"]["nodeId"]
    node = browser.send("DOM.querySelector", nodeId=root, selector="#file")["nodeId"]
    browser.send("DOM.setFileInputFiles", nodeId=node, files=[str(wav)])
    assert browser.eval("document.getElementById('file').files.length") == 1

    browser.eval("document.getElementById('start').click()")
    state = wait_state(browser, "s.status === 'ended'")   # no Stop: the page sends stop at the file's end
    browser.screenshot(ARTIFACTS / "page-file.png")
    check_session(browser, state)
    end = state["end"]
    assert abs(end["samples"] - length * RATE / 48000) <= 2, (end, length)
    # not realtime: every frame is made, and the page received them all, in order, with their audio
    assert state["framesReceived"] == end["frames"], (state, end)
    assert (state["firstFrameIndex"], state["lastFrameIndex"]) == (0, end["frames"] - 1), state
    assert frames_have_audio(state), state
    assert state["audioPeak"] > 0.1, state   # the file's sawtooth (peak 0.3) came back, not silence


def test_microphone_without_audio_worklet(server, browser):
    """Where AudioWorklet is missing (a page on plain http from another machine) the ScriptProcessor
    fallback streams the microphone."""
    open_page(browser, server)
    browser.eval("Object.defineProperty(BaseAudioContext.prototype, 'audioWorklet', {get: () => undefined}); true")
    choose(browser, "mic", realtime=True)
    browser.eval("document.getElementById('start').click()")
    wait_state(browser, "s.framesReceived >= 10 && s.audioSamples >= 8000")
    browser.eval("document.getElementById('stop').click()")
    state = wait_state(browser, "s.status === 'ended'")
    check_session(browser, state)
    assert state["audioPeak"] > 0.05, state


def test_server_error_is_shown(server, browser):
    """A portrait the server does not have: its error message ends the session and is shown in words."""
    open_page(browser, server)
    browser.eval("const p = document.getElementById('portrait'); p.add(new Option('no such portrait')); "
                 "p.value = 'no such portrait'")
    choose(browser, "mic", realtime=True)
    browser.eval("document.getElementById('start').click()")
    browser.wait_for("window.liveState.status === 'error'", timeout=WAIT)
    state = browser.eval(STATE)
    assert state["errors"] and state["errors"][0].startswith("The server stopped: "), state["errors"]
    assert state["framesReceived"] == 0 and state["end"] is None, state
    shown = browser.eval("['errors', 'status'].map(id => document.getElementById(id).textContent).join(' ')")
    assert state["errors"][0] in shown and "error" in shown, shown
    assert browser.eval("document.getElementById('start').disabled") is False
    assert browser.exceptions == [], browser.exceptions
