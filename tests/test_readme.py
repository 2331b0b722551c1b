"""The README's commands, run as written, the way a new user meets them: in a checkout with no
weights and no network. Each `python ...` command of its shell blocks either does its job or stops
with a message that names the missing file, where it goes and where to get it; never a traceback,
never another error. Commands for other machines (pip, apt, git, curl, ComfyUI's own server) and the
test suite itself are left to `.ci/run` and the integration test.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

README = ROOT / "README.md"
EXAMPLES = ROOT / "example_inputs"
#: the README's placeholders, and the example files that stand in for them
PLACEHOLDERS = {"/path/to/photo.jpg": str(EXAMPLES / "portrait.png"),
                "/path/to/speech.mp3": str(EXAMPLES / "speech.wav")}
#: the parts of a checkout a command may touch; everything it writes goes into the test's folder
CHECKOUT = ("__init__.py", "run.py", "core", "nodes", "workflows", "example_inputs", "weights", "training",
            "tools", "docs")
#: what a weights-missing stop says (core.weights.missing_message)
MISSING = ("was not found", "Put it in:", "Get it from:")


def shell_commands():
    """Every command line of the README's ```bash blocks, continuation lines joined, comments dropped."""
    text = README.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line, comments=True)
            if argv:
                out.append(argv)
    return out


def python_commands():
    """The README's `python <script in this checkout> ...` and `python -m <package in this checkout> ...`
    commands (not `python -m pytest`, which is the suite)."""
    return [argv for argv in shell_commands() if argv[0] == "python" and argv[1:3] != ["-m", "pytest"]]


def entry_point(argv):
    """What a README command runs: the script, or the package's `__main__.py` for `python -m`."""
    return f"{argv[2]}/__main__.py" if argv[1] == "-m" else argv[1]


def command_id(argv):
    return " ".join(argv[1:4])


def run_readme_command(argv, folder: Path, extra=()):
    for name in CHECKOUT:
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name, target_is_directory=(ROOT / name).is_dir())
    args = []
    for arg in argv[1:]:
        for placeholder, real in PLACEHOLDERS.items():
            arg = arg.replace(placeholder, real)
        args.append(arg)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALKINGHEAD_")}
    env.update(TALKINGHEAD_OFFLINE="1", HF_HUB_OFFLINE="1", HOME=str(folder), XDG_CACHE_HOME=str(folder / ".cache"))
    return subprocess.run([sys.executable, *args, *extra], cwd=folder, capture_output=True, text=True, timeout=300,
                          env=env)


def test_the_readme_has_the_commands_this_file_runs():
    cmds = python_commands()
    scripts = {entry_point(argv) for argv in cmds}
    assert scripts == {"run.py", "training/__main__.py"}, scripts
    assert all((ROOT / s).is_file() for s in scripts)
    # the quick start's first command is the main job, a talking head from the examples
    first = next(argv for argv in cmds if argv[1] == "run.py")
    assert first[2:] == ["workflows/liveportrait_ditto.json", "--input-dir", "example_inputs"]
    # the CPU torch line for Linux, where PyPI's plain torch is the CUDA build
    pip_torch = [argv for argv in shell_commands() if argv[:3] == ["pip", "install", "torch"]]
    assert pip_torch and "https://download.pytorch.org/whl/cpu" in pip_torch[0]


@pytest.mark.parametrize("argv", python_commands(), ids=command_id)
def test_readme_command_runs_as_written(argv, tmp_path):
    res = run_readme_command(argv, tmp_path)
    said = res.stdout + res.stderr
    assert "Traceback" not in said, said
    if argv[1] == "run.py" and argv[2] == "workflows/portrait_still_video.json":
        assert res.returncode == 0, said  # the offline smoke test needs no weights
    if res.returncode == 0:
        if argv[1] == "run.py" and argv[2].startswith("workflows/"):
            mp4 = Path(res.stdout.strip().splitlines()[-1])
            assert mp4.suffix == ".mp4" and mp4.is_file() and tmp_path in mp4.parents
        return
    if argv[1] == "run.py" and argv[2].startswith("workflows/"):
        assert all(m in res.stderr for m in MISSING), said  # a weights-missing stop, nothing else
        assert not list(tmp_path.glob("output/**/*.mp4"))
        if "s3fd" in res.stderr:  # the way out offline is in the message itself
            assert "'center'" in res.stderr, said
    else:
        # the weights tool and the training script on files the user has not made yet: one clear line
        assert res.stderr.strip() and len(res.stderr.strip().splitlines()) <= 8, said
        assert re.search(r"not found|does not exist|no such|not a folder|no video", res.stderr, re.I), said


@pytest.mark.parametrize("name", ["liveportrait_procedural", "fom_animate_video"])
def test_center_detector_needs_no_detector_weights(name, tmp_path):
    """The README's offline advice: with `--set portrait.detector=center` the photo workflows get past
    the face detector, to the model's own weights."""
    res = run_readme_command(["python", "run.py", f"workflows/{name}.json", "--input-dir", "example_inputs"],
                             tmp_path, extra=("--set", "portrait.detector=center"))
    assert res.returncode != 0 and all(m in res.stderr for m in MISSING), res.stderr
    assert "s3fd" not in res.stderr and "Traceback" not in res.stderr


def library_code() -> str:
    """The README's Python examples of the core library, in order (they build on each other)."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Using the core as a Python library"):text.index("## Training your own motion model")]
    return "\n".join(re.findall(r"```python\n(.*?)```", section, re.S))


def test_library_examples_run_as_written(tmp_path):
    """The library examples run as printed, in a folder with the example inputs and the official file
    names in models/ (the tiny test weights under those names)."""
    import shutil

    from test_classic import classic_models
    from test_motion_nodes import tiny_ditto_models

    import wave

    # the example inputs, with the speech cut to its first 1.6 s: the examples render every frame twice
    # (offline and streamed), and the tiny renderer is not fast on a CPU
    inputs = tmp_path / "example_inputs"
    inputs.mkdir()
    for item in EXAMPLES.iterdir():
        if item.name != "speech.wav":
            (inputs / item.name).symlink_to(item)
    with wave.open(str(EXAMPLES / "speech.wav"), "rb") as src, wave.open(str(inputs / "speech.wav"), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(int(1.6 * src.getframerate())))
    models = tiny_ditto_models(tmp_path / "models")
    classic_models(models)
    shutil.copy(models / "fom" / "tiny-cpk.pth.tar", models / "fom" / "vox-cpk.pth.tar")
    # the tiny LMDM is the safetensors twin of the official .pth (its head count rides in the metadata)
    code = library_code().replace("lmdm_v0.4_hubert.pth", "lmdm_v0.4_hubert.safetensors")
    assert "from core.fom import" in code and "TalkingHeadStream" in code
    script = tmp_path / "example.py"
    script.write_text(f"import sys\nsys.path.insert(0, {str(ROOT)!r})\n{code}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALKINGHEAD_")}
    env.update(TALKINGHEAD_OFFLINE="1", HF_HUB_OFFLINE="1")
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env=env)
    assert res.returncode == 0, res.stderr[-4000:]
    for name in ("still.mp4", "fom.mp4"):
        assert (tmp_path / name).stat().st_size > 1000
    assert "torch.Size([4, 3, " in res.stdout and "first_frame_audio_s" in res.stdout  # the tiny faces are 128 px
