"""The shipped workflows as the tests run them on the tiny weights: per-workflow overrides (tiny
checkpoint names, the ``center`` detector, short inputs) and what each must write, plus the input
files and models a server's base folder needs. Used by the real-ComfyUI integration test and by
the browser test (``test_frontend.py``), so both queue the same graphs.
"""
from __future__ import annotations

import json
import shutil
import wave
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows" / "api"  # API format (the UI files are one level up)
EXAMPLES = ROOT / "example_inputs"

# inputs placed in <base>/input besides the examples
SHORT_SPEECH = "speech_short.wav"     # a 0.6 s cut of example_inputs/speech.wav (as the headless tests use)
SHORT_SECONDS = 0.6
LONG_SPEECH = "speech_long.wav"       # example_inputs/speech.wav looped to 60 s: prompts that run long enough to cancel
LONG_SECONDS = 60.0
SHORT_MOTION = "motion.safetensors"   # the first 5 frames of example_inputs/motion.safetensors

# tiny checkpoints placed in <base>/models (names as the checkpoint combos list them)
DITTO = "ditto/lmdm_v0.4_hubert.safetensors"
JOYVASA = "joyvasa/motion_generator_hubert_chinese.safetensors"
SDA = "tiny-grid.dat"
FOM = "tiny-cpk.pth.tar"


# --------------------------------------------------------------------------- workflow cases


@dataclass(frozen=True)
class Case:
    """How to run one ``workflows/api/<name>.api.json`` on the tiny weights and what it must write.

    ``overrides``: node title (``_meta.title``) -> {input name: value}, like ``run.py --set
    TITLE.INPUT=VALUE``. ``size``: (width, height) of the mp4; ``frames``: its frame count;
    ``seconds``: its audio duration.
    """

    overrides: Dict[str, Dict[str, object]]
    size: Tuple[int, int]
    frames: int
    seconds: float
    audio_tol: float = 2e-3


def _speaker(i: Optional[int] = None) -> Dict[str, Dict[str, object]]:
    """Overrides of one classic SDA -> FOM speaker (titles 'portrait', 'sda', ... or 'portrait 1', ...)."""
    n = "" if i is None else f" {i}"
    return {f"portrait{n}": {"detector": "center"}, f"audio{n}": {"audio": SHORT_SPEECH},
            f"sda{n}": {"face_alignment": "already aligned", "checkpoint": SDA},
            f"animate{n}": {"checkpoint": FOM}}


_LP_AUDIO = {"portrait": {"detector": "center"}, "audio": {"audio": SHORT_SPEECH}}

#: workflow file stem -> its case. Every workflows/api/*.api.json needs an entry (test_api_workflow fails
#: without one); the overrides mirror the headless tests (tests/test_classic.py, test_fom.py,
#: test_lp_nodes.py, test_motion_nodes.py) and so do the expected sizes and frame counts.
WORKFLOW_CASES: Dict[str, Case] = {
    # 0.6 s at GRID's framing -> 15 frames of 128x96, padded to 256x256
    "classic_sda_fom": Case(_speaker(), (256, 256), 15, SHORT_SECONDS),
    "classic_two_speakers": Case({**_speaker(1), **_speaker(2)}, (256, 256), 30, 2 * SHORT_SECONDS),
    # example_inputs/driving.mp4: 50 frames, 2 s with its own sound track
    "fom_animate_video": Case({"portrait": {"detector": "center"}, "animate": {"checkpoint": FOM}},
                              (256, 256), 50, 2.0),
    "liveportrait_ditto": Case({**_LP_AUDIO, "motion": {"checkpoint": DITTO, "steps": 4}}, (480, 600), 15,
                               SHORT_SECONDS),
    "liveportrait_joyvasa": Case({**_LP_AUDIO, "embeddings": {"joyvasa_checkpoint": JOYVASA},
                                  "motion": {"checkpoint": JOYVASA, "steps": 4}}, (480, 600), 15, SHORT_SECONDS),
    # 5 motion frames; the speech is trimmed to them
    "liveportrait_motion_driven": Case({**_LP_AUDIO, "motion": {"motion_file": SHORT_MOTION}}, (480, 600), 5,
                                       5 / 25),
    "liveportrait_procedural": Case(dict(_LP_AUDIO), (480, 600), 15, SHORT_SECONDS),
    # render and encode in one node (LivePortraitRenderVideo)
    "liveportrait_procedural_long": Case(dict(_LP_AUDIO), (480, 600), 15, SHORT_SECONDS),
    # tests/fixtures/driving_short.mp4: 6 face-crop frames at 25 fps
    "liveportrait_video_driven": Case({"portrait": {"detector": "center"},
                                       "driving video": {"file": "driving_short.mp4"},
                                       "motion": {"crop": "as is (already face crops)"}}, (480, 600), 6, 6 / 25),
    # one still frame held over the whole speech
    "portrait_still_video": Case({"audio": {"audio": SHORT_SPEECH}}, (256, 256), 15, SHORT_SECONDS),
}

API_WORKFLOWS = sorted(p.name[:-len(".api.json")] for p in WORKFLOWS.glob("*.api.json"))


def load_workflow(name: str, overrides: Optional[Dict[str, Dict[str, object]]] = None) -> dict:
    """``workflows/api/<name>.api.json`` with ``overrides`` (title -> {input: value}) applied; an unknown
    title or input fails (so a renamed node cannot silently drop an override)."""
    prompt = json.loads((WORKFLOWS / f"{name}.api.json").read_text())
    by_title = {}
    for node_id, node in prompt.items():
        title = node.get("_meta", {}).get("title", node_id)
        assert title not in by_title, f"{name}: two nodes titled {title!r}"
        by_title[title] = node_id
    for title, values in (overrides or {}).items():
        assert title in by_title, f"{name}.api.json has no node titled {title!r} (titles: {sorted(by_title)})"
        inputs = prompt[by_title[title]]["inputs"]
        for key, value in values.items():
            assert key in inputs, f"{name}.api.json node {title!r} has no input {key!r} (inputs: {sorted(inputs)})"
            inputs[key] = value
    return prompt


def video_nodes(prompt: dict) -> Dict[str, dict]:
    """The nodes that write an mp4 (MuxVideo and the like): those with a ``filename_prefix`` input."""
    return {i: n for i, n in prompt.items() if "filename_prefix" in n["inputs"]}


def saved_files(outputs: dict) -> list:
    """The ``{"filename", "subfolder", "type"}`` items of one node's UI output."""
    return [x for v in outputs.values() if isinstance(v, list) for x in v if isinstance(x, dict) and "filename" in x]


def check_mp4(path: Path, size: Tuple[int, int], frames: Optional[int], seconds: float, tol: float = 2e-3) -> dict:
    """The mp4 at ``path``: H.264 yuv420p of ``size`` with ``frames`` frames and ``seconds`` of AAC audio."""
    from core import video

    assert path.is_file(), path
    info = video.probe(path)
    assert info["video"] and info["video"]["codec"] == "h264" and info["video"]["pix_fmt"] == "yuv420p", info
    got = (info["video"]["width"], info["video"]["height"])
    assert got == tuple(size), (got, size, info)
    if frames is not None:
        assert info["video"]["frames"] == frames, info
    assert info["audio"] and info["audio"]["codec"] == "aac", info
    assert video.audio_duration(path) == pytest.approx(seconds, abs=tol), (video.audio_duration(path), seconds)
    return info


# --------------------------------------------------------------------------- inputs and tiny weights


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())


def place_inputs(input_dir: Path) -> None:
    """The examples plus the short/long speech clips and the short motion, in the server's input/."""
    from core.audio import load_audio
    from core.liveportrait.motion import Motion
    from test_motion_nodes import write_speech_clip

    input_dir.mkdir(parents=True, exist_ok=True)
    for name in ("portrait.png", "speech.wav", "driving.mp4"):
        shutil.copy2(EXAMPLES / name, input_dir / name)
    shutil.copy2(ROOT / "tests" / "fixtures" / "driving_short.mp4", input_dir / "driving_short.mp4")
    write_speech_clip(input_dir / SHORT_SPEECH, SHORT_SECONDS)
    speech = load_audio(EXAMPLES / "speech.wav")
    x = speech.waveform[0].numpy()
    n = int(LONG_SECONDS * speech.sample_rate)
    _write_wav(input_dir / LONG_SPEECH, np.tile(x, -(-n // len(x)))[:n], speech.sample_rate)
    Motion.load(EXAMPLES / "motion.safetensors").frames(0, 5).save(input_dir / SHORT_MOTION)


def place_models(models: Path) -> None:
    """Every family's tiny weights in the server's models/ (the same helpers as the headless tests):
    LivePortrait, Ditto with a tiny 1024-d HuBERT, JoyVASA, SDA and FOM."""
    from test_classic import classic_models
    from test_motion_nodes import tiny_ditto_models, tiny_joyvasa_models

    tiny_ditto_models(models)   # + the LivePortrait set + audio_encoders/hubert-large-ls960-ft/
    tiny_joyvasa_models(models)
    classic_models(models)

