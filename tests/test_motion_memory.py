"""Long speech through AudioToEmbedding and MotionDiT on the tiny weights: the peak memory of each node grows with
the length of the speech only by the features and the motion it returns (nothing per window, no copies of the
audio or of the features kept around). Each length runs in a process of its own (tests/memory_child.py measures
the peak of the node's run over the memory it started from)."""
import json
import subprocess
import sys
import wave

import numpy as np
import pytest

from conftest import ROOT
from test_motion_nodes import tiny_ditto_models, tiny_joyvasa_models

import memory_child

MB = 1 << 20
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux") or not memory_child.can_measure(),
                           reason="reads and resets the peak resident memory in /proc/self")
#: what the C allocator's free lists and the kernel's page accounting move between two runs of the same work
SLACK_MB = 16
#: values of one frame of a composed Motion (exp 63, pitch/yaw/roll 3, t 3, scale 1, R 9)
MOTION_VALUES = 79
#: per frame, what MotionDiT may hold: the generated vectors (Ditto 265 values, JoyVASA 73) and a few composed
#: Motion frames (the motion, and the copy it is taken from or scaled in)
FRAME_BYTES = {"ditto": 4 * (265 + 2 * MOTION_VALUES), "joyvasa": 4 * (73 + 3 * MOTION_VALUES)}
#: the two lengths (s) compared: JoyVASA's sampler runs its fixed 50 steps per 4 s window, hence shorter
LENGTHS = {"ditto": (20, 300), "joyvasa": (20, 120)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The tiny Ditto and JoyVASA models and the example speech looped to every length of :data:`LENGTHS`."""
    from core.audio import load_audio

    root = tmp_path_factory.mktemp("long_speech")
    tiny_joyvasa_models(tiny_ditto_models(root / "models"))
    speech = load_audio(ROOT / "example_inputs" / "speech.wav")
    x = speech.waveform[0].numpy()
    for seconds in sorted({s for pair in LENGTHS.values() for s in pair}):
        n = seconds * speech.sample_rate
        with wave.open(str(root / f"speech_{seconds}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(speech.sample_rate)
            w.writeframes((np.clip(np.tile(x, -(-n // len(x)))[:n], -1, 1) * 32767).astype("<i2").tobytes())
    return root


def measure(root, family: str, seconds: int) -> dict:
    res = subprocess.run([sys.executable, str(ROOT / "tests" / "memory_child.py"), family,
                          str(root / f"speech_{seconds}.wav"), str(root / "models")],
                         capture_output=True, text=True, timeout=600, cwd=root)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@LINUX
@pytest.mark.parametrize("family", ["ditto", "joyvasa"])
def test_peak_memory_grows_only_by_features_and_motion(setup, family):
    """AudioToEmbedding: the peak grows from the short to the long speech by no more than the features' own
    growth ([T, 1024] float32 for Ditto's HuBERT: 100 KB a second); before the fix the loudness envelope's
    float64 copies of the whole waveform added 0.25 MB a second (150 MB for 10 minutes). MotionDiT: by no more
    than the motion (:data:`FRAME_BYTES` a frame); before, the conditions of all frames at once (the features
    again, 110 KB a second) and a copy of the whole result per window were held."""
    short, long = (measure(setup, family, s) for s in LENGTHS[family])
    embed = long["embed"]["growth_mb"] - short["embed"]["growth_mb"]
    features = long["embed"]["features_mb"] - short["embed"]["features_mb"]
    assert embed < features + SLACK_MB, (short["embed"], long["embed"])
    frames = long["motion"]["frames"] - short["motion"]["frames"]
    assert frames == 25 * (LENGTHS[family][1] - LENGTHS[family][0])
    motion = long["motion"]["growth_mb"] - short["motion"]["growth_mb"]
    assert motion < frames * FRAME_BYTES[family] / MB + SLACK_MB, (short["motion"], long["motion"])
