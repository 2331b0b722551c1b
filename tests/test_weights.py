import argparse
import http.server
import os
import pathlib
import pickle
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from conftest import FIXTURES
from core import weights as W
from core.errors import CheckpointError, WeightsMissingError
from core.host import HOST


@pytest.fixture
def isolated(isolated_weights):
    """Search folders under tmp_path only: host models dir, pack weights dir, no env var."""
    return isolated_weights


def test_manifest_is_complete():
    table = W.manifest()
    assert "face_detection/s3fd" in table and "fom/vox-256" in table and "sda/grid" in table
    for mf in table.values():
        assert mf.names and mf.license and mf.license != "unknown", mf.id
        assert mf.source, mf.id
        assert mf.folder in W.model_folders()
        assert mf.source_text().startswith(("http", "first-order", "speech-driven")) or "README" in mf.source_text()


def test_resolution_order(isolated, monkeypatch):
    mf = W.model_file("face_detection/s3fd")
    env_root = isolated / "envmodels"
    places = {
        "env": env_root / "face_detection" / mf.filename,
        "pack": isolated / "packweights" / "face_detection" / mf.filename,
        "host": isolated / "models" / "face_detection" / mf.filename,
    }
    monkeypatch.setenv("TALKINGHEAD_MODELS", str(env_root))
    for name in ("env", "pack", "host"):  # each new file outranks the previous ones
        places[name].parent.mkdir(parents=True, exist_ok=True)
        places[name].write_bytes(name.encode())
        assert W.resolve(mf.id, download=False) == places[name]
    explicit = isolated / "mine.pth"
    explicit.write_bytes(b"x")
    assert W.resolve(mf.id, explicit=explicit) == explicit.resolve()
    with pytest.raises(WeightsMissingError, match="does not exist"):
        W.resolve(mf.id, explicit=isolated / "nope.pth")
    # a safetensors twin under its accepted name is found too
    for p in places.values():
        p.unlink()
    twin = isolated / "models" / "face_detection" / "s3fd.safetensors"
    twin.write_bytes(b"x")
    assert W.resolve(mf.id, download=False) == twin


def test_host_folders_are_used(isolated, monkeypatch):
    a, b = isolated / "a", isolated / "b"
    monkeypatch.setattr(HOST, "model_folders", lambda key: [a / key, b / key])
    target = b / "fom" / "vox-cpk.pth.tar"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    assert W.resolve("fom/vox-256", download=False) == target


def test_offline_error_names_file_folder_and_source(isolated, monkeypatch):
    monkeypatch.setenv("TALKINGHEAD_OFFLINE", "1")
    with pytest.raises(WeightsMissingError) as err:
        W.resolve("liveportrait/spade_generator")
    msg = str(err.value)
    assert "spade_generator.pth" in msg
    assert str(isolated / "models" / "liveportrait") in msg
    assert "huggingface.co/KwaiVGI/LivePortrait" in msg and "Offline" in msg
    # no download source at all: still a clear message
    monkeypatch.delenv("TALKINGHEAD_OFFLINE")
    with pytest.raises(WeightsMissingError, match="vox-cpk.pth.tar.*\n.*\n.*first-order-model"):
        W.resolve("fom/vox-256")


class _Handler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *a):
        pass


@pytest.fixture
def http_server():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_url_download_is_atomic_and_verified(isolated, monkeypatch, http_server):
    import hashlib

    _Handler.payload = b"weights" * 1000
    url = f"http://127.0.0.1:{http_server.server_port}/s3fd.pth"
    good = W.ModelFile(id="t/good", family="t", folder="t", names=["good.pth"], source={"url": url},
                       sha256=hashlib.sha256(_Handler.payload).hexdigest(), size=len(_Handler.payload), license="x")
    bad = W.ModelFile(id="t/bad", family="t", folder="t", names=["bad.pth"], source={"url": url},
                      sha256="0" * 64, license="x")
    monkeypatch.setattr(W, "_MANIFEST", {"t/good": good, "t/bad": bad})
    seen = []
    path = W.resolve("t/good", progress=lambda d, t: seen.append((d, t)))
    assert path == isolated / "models" / "t" / "good.pth" and path.read_bytes() == _Handler.payload
    assert seen and seen[-1] == (len(_Handler.payload), len(_Handler.payload))
    with pytest.raises(WeightsMissingError, match="sha256"):
        W.resolve("t/bad")
    assert sorted(os.listdir(isolated / "models" / "t")) == ["good.pth"]  # nothing half-written
    # official names inside a sub-folder (animal LivePortrait, HuBERT's model folder) download there
    nested = W.ModelFile(id="t/nested", family="t", folder="t", names=["sub/dir/n.pth"], source={"url": url},
                         license="x")
    monkeypatch.setattr(W, "_MANIFEST", {"t/nested": nested})
    assert W.resolve("t/nested") == isolated / "models" / "t" / "sub" / "dir" / "n.pth"
    assert sorted(os.listdir(isolated / "models" / "t" / "sub" / "dir")) == ["n.pth"]


def test_safetensors_and_zip_and_legacy_loading(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "a.bias": torch.arange(3.0)}
    save_file(sd, tmp_path / "m.safetensors")
    torch.save({"model": sd}, tmp_path / "zip.pth")
    torch.save({"model": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    for name in ("zip.pth", "legacy.pth"):
        flat = W.load_state_dict(tmp_path / name, prefix="model")
        assert set(flat) == set(sd) and all(torch.equal(flat[k], sd[k]) for k in sd)
    assert torch.equal(W.load_state_dict(tmp_path / "m.safetensors")["a.weight"], sd["a.weight"])
    with pytest.raises(CheckpointError, match="no 'generator' weights"):
        W.load_state_dict(tmp_path / "zip.pth", prefix="generator")


def test_official_legacy_fom_checkpoint_matches_its_safetensors():
    official = W.load_state_dict(FIXTURES / "fom" / "tiny-cpk.pth.tar")
    st = W.load_state_dict(FIXTURES / "fom" / "weights.safetensors")
    for key, value in st.items():
        assert torch.equal(official[key], value), key
    gen = W.load_state_dict(FIXTURES / "fom" / "tiny-cpk.pth.tar", prefix="generator")
    assert torch.equal(gen["first.conv.weight"], st["generator.first.conv.weight"])


def test_allow_listed_plain_types(tmp_path):
    grid = W.load_checkpoint(FIXTURES / "sda" / "tiny-grid.dat")  # legacy pickle with a numpy array
    assert isinstance(grid["mean_face"], np.ndarray) and grid["mean_face"].shape == (68, 2)
    ns = argparse.Namespace(motion_feat_dim=70, data_root=pathlib.PosixPath("/data/x"))
    torch.save({"args": ns, "model": {"w": torch.ones(2)}, "arr": np.arange(4, dtype=np.float32)}, tmp_path / "j.pt")
    got = W.load_checkpoint(tmp_path / "j.pt")
    assert got["args"].motion_feat_dim == 70 and str(got["args"].data_root) == "/data/x"
    assert np.array_equal(got["arr"], np.arange(4, dtype=np.float32))


class Evil:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_code_carrying_pickle_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"model": {"w": torch.ones(1)}, "payload": Evil()}, tmp_path / "evil.pth")
    with open(tmp_path / "raw.pkl", "wb") as f:
        pickle.dump(Evil(), f)
    for name in ("evil.pth", "raw.pkl"):
        with pytest.raises(CheckpointError, match="refused|not a readable"):
            W.load_checkpoint(tmp_path / name)
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_and_truncated_files(tmp_path):
    sd = {"w": torch.randn(64, 64)}
    save_file(sd, tmp_path / "full.safetensors")
    torch.save(sd, tmp_path / "full.pth")
    for name in ("full.safetensors", "full.pth"):
        data = (tmp_path / name).read_bytes()
        cut = tmp_path / ("cut_" + name)
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="cut_"):
            W.load_checkpoint(cut)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CheckpointError, match="junk.pth"):
        W.load_checkpoint(junk)
    with pytest.raises(CheckpointError, match="does not exist"):
        W.load_checkpoint(tmp_path / "none.pth")


def test_check_state_dict_lists_problems():
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 4))
    state = dict(module.state_dict())
    W.check_state_dict(module, state, "ok.pth")
    state.pop("1.bias")
    state["extra.weight"] = torch.zeros(1)
    state["0.weight"] = torch.zeros(5, 2)
    with pytest.raises(CheckpointError) as err:
        W.check_state_dict(module, state, "bad.pth")
    msg = str(err.value)
    assert "bad.pth" in msg and "Missing keys (1): 1.bias" in msg and "Unexpected keys (1): extra.weight" in msg
    assert "0.weight: file (5, 2) vs model (3, 2)" in msg


def test_convert_official_checkpoint(tmp_path):
    src = FIXTURES / "fom" / "tiny-cpk.pth.tar"
    torch.save({**W.load_checkpoint(src), "optimizer_generator": {"state": {0: {"exp_avg": torch.ones(3)}}}},
               tmp_path / "with_opt.pth.tar", _use_new_zipfile_serialization=False)
    out = W.convert_to_safetensors(tmp_path / "with_opt.pth.tar", tmp_path / "out.safetensors")
    flat = W.load_state_dict(out)
    ref = W.load_state_dict(src)
    assert set(flat) == set(ref)  # optimizer states dropped, everything else kept
    assert all(torch.equal(flat[k], ref[k]) for k in ref)
    assert [p.name for p in tmp_path.iterdir() if "partial" in p.name] == []


def test_weights_readme_lists_the_manifest():
    from conftest import ROOT

    assert W.manifest_table() in (ROOT / "weights" / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numpy_arrays_pickled_by_either_numpy_load(tmp_path, module):
    """2019-era files (grid.dat) name numpy.core.multiarray, files numpy 2 writes name numpy._core:
    both load whichever numpy is installed (requirements.txt allows 1.x and 2.x)."""
    torch.save({"mean_face": np.arange(6, dtype=np.float32).reshape(3, 2)}, tmp_path / "new.dat",
               _use_new_zipfile_serialization=False)
    data = (tmp_path / "new.dat").read_bytes()
    written = [m for m in (b"numpy.core.multiarray", b"numpy._core.multiarray") if m + b"\n" in data]
    assert len(written) == 1
    (tmp_path / "x.dat").write_bytes(data.replace(written[0] + b"\n", module + b"\n"))
    got = W.load_checkpoint(tmp_path / "x.dat")["mean_face"]
    assert np.array_equal(got, np.arange(6, dtype=np.float32).reshape(3, 2))


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_plain_pickle_loader(tmp_path):
    """Ditto's cfg .pkl / JoyVASA's motion_template.pkl: plain data loads, code is refused, junk is named."""
    data = {"mean_exp": np.arange(63, dtype=np.float32), "flags": [1, 2.5, "x", None, (True,)],
            "args": argparse.Namespace(root=pathlib.PurePosixPath("/data")), "n": np.float32(3)}
    (tmp_path / "ok.pkl").write_bytes(pickle.dumps(data, protocol=4))
    back = W.load_pickle(tmp_path / "ok.pkl")
    assert np.array_equal(back["mean_exp"], data["mean_exp"]) and back["flags"] == data["flags"]
    assert back["args"].root == pathlib.PurePosixPath("/data") and back["n"] == np.float32(3)
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps({"x": _RunsCode()}))
    with pytest.raises(CheckpointError, match="evil.pkl: refused to load.*system"):
        W.load_pickle(tmp_path / "evil.pkl")
    (tmp_path / "cut.pkl").write_bytes(pickle.dumps(data)[:40])
    with pytest.raises(CheckpointError, match="cut.pkl: not a readable pickle"):
        W.load_pickle(tmp_path / "cut.pkl")


def test_paths_of_another_os_load_as_pure_paths(tmp_path):
    """A checkpoint pickled on Windows (JoyVASA's args hold a path) loads on Linux, and the other way round."""
    data = pickle.dumps({"root": pathlib.PureWindowsPath(r"C:\data")}, protocol=0)
    other = "WindowsPath" if os.name != "nt" else "PosixPath"
    raw = data.replace(b"PureWindowsPath", other.encode()) if other == "WindowsPath" else \
        pickle.dumps({"root": pathlib.PurePosixPath("/data")}, protocol=0).replace(b"PurePosixPath", b"PosixPath")
    assert f"pathlib\n{other}".encode() in raw or f"pathlib._local\n{other}".encode() in raw
    (tmp_path / "args.pkl").write_bytes(raw.replace(b"pathlib._local\n", b"pathlib\n"))
    root = W.load_pickle(tmp_path / "args.pkl")["root"]
    assert isinstance(root, pathlib.PurePath) and root.name == "data"


def test_liveportrait_folder_is_one_whole_set(isolated, monkeypatch):
    """A folder given for LivePortrait is used whole: a missing file is an error naming it, never a
    fallback to the models folders (which would mix two sets into one renderer) or a download."""
    import shutil

    from core import liveportrait as lp

    src = FIXTURES / "liveportrait" / "weights"
    shutil.copytree(src, isolated / "models" / "liveportrait")  # a complete set the fallback would find
    monkeypatch.setattr(W, "download_file", lambda *a, **k: pytest.fail("a folder set must never download"))
    folder = isolated / "my set"
    shutil.copytree(src, folder)
    paths = lp.resolve_paths("human", download=True, folder=folder)
    assert sorted(paths) == sorted(lp.KINDS) and all(p.parent == folder.resolve() for p in paths.values())
    (folder / "warping_module.safetensors").unlink()
    with pytest.raises(WeightsMissingError) as err:
        lp.resolve_paths("human", download=True, folder=folder)
    msg = str(err.value)
    assert "warping_module" in msg and str(folder) in msg and "1 of the five" in msg
    assert "spade_generator" not in msg
