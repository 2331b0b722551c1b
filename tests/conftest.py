"""Shared fixtures.

* The repo root goes on ``sys.path`` so unit tests can ``from core import resize``, and ``tools/``
  so the browser tests can ``from frontend import page``.
* ``pack``: the whole pack imported the way ComfyUI imports it, from a folder whose name is
  not a Python identifier, headless (no ComfyUI modules importable).
* ``comfy_pack``: the same inside a fake ComfyUI (``tests/fake_comfy``), so the bridge installs.
"""
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
FAKE_COMFY = ROOT / "tests" / "fake_comfy"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if str(ROOT / "tools") not in sys.path:  # the browser test's helpers: tools/frontend
    sys.path.insert(0, str(ROOT / "tools"))

def browser_test_mark(what: str, modules=("aiohttp", "websockets")):
    """The skip mark of a browser test: skip where Chromium or one of ``modules`` is missing, except under
    CI (``CI`` set), where that is an error. Returns ``(mark, missing reason or None)``."""
    missing = None
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing = f"{name} is not installed (pip install -r requirements-dev.txt)"
            break
    if missing is None:
        from frontend.browser import find_chromium

        if not find_chromium():
            missing = "Chromium is not installed (apt-get install chromium)"
    if missing and os.environ.get("CI"):
        raise RuntimeError(f"{what} cannot run in CI: {missing}")
    return pytest.mark.skipif(bool(missing), reason=missing or ""), missing


#: a folder name ComfyUI users really produce (spaces, dots, dashes)
ODD_FOLDER_NAME = "ComfyUI-Talking Head.toolkit (dev)"
_COMFY_MODULES = ("folder_paths", "comfy")


def _drop_modules(prefixes):
    for name in list(sys.modules):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            del sys.modules[name]


def import_pack(custom_nodes: Path):
    """Import the pack from ``custom_nodes/<odd name>`` exactly like ComfyUI's loader does."""
    custom_nodes.mkdir(parents=True, exist_ok=True)
    folder = custom_nodes / ODD_FOLDER_NAME
    if not folder.exists():
        folder.symlink_to(ROOT, target_is_directory=True)
    module_name = str(folder).replace(".", "_x_")
    spec = importlib.util.spec_from_file_location(module_name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _drop_modules(_COMFY_MODULES)
    module = import_pack(tmp_path / "custom_nodes")
    yield module
    _drop_modules([module.__name__])


@pytest.fixture
def comfy_pack(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _drop_modules(_COMFY_MODULES)
    monkeypatch.syspath_prepend(str(FAKE_COMFY))
    folder_paths = importlib.import_module("folder_paths")
    folder_paths.set_base(tmp_path / "ComfyUI")
    module = import_pack(tmp_path / "ComfyUI" / "custom_nodes")
    module.comfy = importlib.import_module("comfy.model_management")
    module.folder_paths = folder_paths
    yield module
    _drop_modules([module.__name__])
    _drop_modules(_COMFY_MODULES)


def sub(pack, name):
    """A sub-module of a loaded pack, e.g. ``sub(pack, "core.cache")``."""
    return importlib.import_module(f"{pack.__name__}.{name}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``).

    The tiny test networks gain nothing from a second thread, and on a shared 2-core machine two
    OpenMP threads wait on each other whenever another process takes a core (several times slower).
    Fixtures made with one thread are also reproduced (nearly) bit for bit at one thread."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def lp_set(pack, model="human", precision="fp32", device="cpu", download=False):
    """What LoadLivePortrait hands every LivePortrait node (the models must be in the models folder)."""
    (found,) = pack.NODE_CLASS_MAPPINGS["TalkingHead_LoadLivePortrait"]().run(model, precision, device=device,
                                                                             auto_download=download)
    return found


@pytest.fixture
def isolated_weights(tmp_path, monkeypatch):
    """The weights manager searches folders under tmp_path only (the host's models dir and the pack's weights
    dir), with no environment variable set (models folder, offline switches)."""
    from core import weights
    from core.host import HOST

    monkeypatch.setattr(HOST, "models_dir", tmp_path / "models")
    monkeypatch.setattr(HOST, "model_folders", None)
    monkeypatch.setattr(weights, "WEIGHTS_DIR", tmp_path / "packweights")
    for var in ("TALKINGHEAD_MODELS", "TALKINGHEAD_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def run_headless(cwd: Path, workflow: str, *sets: str, inputs: Path, models: Path, offline: bool = True,
                 timeout: int = 600) -> Path:
    """``python run.py workflows/<workflow> --input-dir INPUTS --models-dir MODELS --set ...`` as a user types it
    (in ``cwd``); fails with the runner's stderr unless it succeeds, and returns the file it wrote last."""
    import subprocess

    command = [sys.executable, str(ROOT / "run.py"), str(ROOT / "workflows" / workflow), "--input-dir", str(inputs),
               "--models-dir", str(models), *(["--offline"] if offline else [])]
    for item in sets:
        command += ["--set", item]
    res = subprocess.run(command + ["--quiet"], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stderr
    return Path(res.stdout.strip().splitlines()[-1])


def mp4_facts(path: Path):
    """``((width, height, frames), audio codec or None, audio seconds or None)`` of a written video."""
    from core import video

    info = video.probe(path)
    audio = info["audio"]
    return ((info["video"]["width"], info["video"]["height"], info["video"]["frames"]),
            audio["codec"] if audio else None, video.audio_duration(path) if audio else None)
