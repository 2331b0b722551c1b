"""Ditto LMDM training pipeline (the pack's ``training/`` package and its command line) on tiny data.

Synthetic clips are written straight as cache files; one tiny end-to-end ``build_dataset`` run
goes through a real (short, synthetic) mp4 and the tiny LivePortrait fixture weights. The model is
tiny (latent 32, one decoder layer, 2 heads) so everything runs on the CPU in seconds.

``training`` imports the pack's ``core`` as its sibling (``from ..core``), so it is used here from
the pack loaded the way ``run.py`` loads it, together with that pack's own ``core`` modules.
"""
import ast
import importlib
import json
import math
import os
import subprocess
import re
import stat
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import run
import tolerance as tol
from conftest import FIXTURES, ROOT

PACK = run.load_pack().__name__


def pack_module(name):
    return importlib.import_module(f"{PACK}.{name}")


T = pack_module("training")
Audio = pack_module("core.audio").Audio
CenterDetector = pack_module("core.face").CenterDetector
CheckpointError = pack_module("core.errors").CheckpointError
L = pack_module("core.liveportrait.load")
render = pack_module("core.liveportrait.render")
motion_info, to_input = render.motion_info, render.to_input
ditto = pack_module("core.motion.ditto")
load_video, write_video = pack_module("core.video").load_video, pack_module("core.video").write_video

TINY = dict(latent_dim=32, ff_size=64, num_layers=1, num_heads=2, num_encoder_layers=1)
#: the TINY denoiser: condition projection (1103 in), 1 encoder layer x 9, 1 decoder layer x 15, final
TINY_NET = tol.Net("tiny training LMDM", 1 + 9 + 1 + 15 + 1, 1103)
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}


# The tiny model gains nothing from more threads, and on a shared 2-core machine two OpenMP threads next to
# another busy process run several times slower than one.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def synthetic_clip(n, seed):
    """Structured motion: Gaussian pose-logit bumps moving with smooth angles, small t / exp
    oscillations driven by the 'audio' features, constant kp with a little noise."""
    g = torch.Generator().manual_seed(seed)
    time = torch.arange(n, dtype=torch.float32)
    feats = torch.randn(n, 1024, generator=g) * 0.1
    feats[:, 0] = torch.sin(time / 4 + seed)
    bins = torch.arange(66, dtype=torch.float32)
    motion = torch.zeros(n, 265)
    motion[:, 0] = 0.02 * torch.sin(time / 30)
    for i, (lo, hi) in enumerate(((1, 67), (67, 133), (133, 199))):
        centre = 32.5 + 4 * torch.sin(time / (10 + 3 * i) + seed)
        motion[:, lo:hi] = 6 * torch.exp(-(bins[None] - centre[:, None]) ** 2 / 30) - 2
    motion[:, 199:202] = 0.05 * torch.sin(time[:, None] / 7 + torch.arange(3))
    motion[:, 202:] = 0.02 * feats[:, :1] * torch.linspace(-1, 1, 63) + 0.005 * torch.randn(n, 63, generator=g)
    kp = (torch.randn(1, 63, generator=g) * 0.1).expand(n, -1) + 0.001 * torch.randn(n, 63, generator=g)
    emo = torch.softmax(torch.randn(n, 8, generator=g), dim=1)
    eye = torch.tensor(T.NEUTRAL_EYE).expand(n, -1) + 0.01 * torch.randn(n, 8, generator=g)
    return motion, kp, feats, emo, eye


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    for i, n in enumerate((120, 95, 81)):
        T.write_clip(d / f"clip{i}.safetensors", *synthetic_clip(n, i))
    return d


def config(data_dir, out, **kw):
    cfg = dict(data=[str(data_dir)], out_dir=str(out), **TINY, steps=4, batch_size=4, lr=2e-3, ema_decay=0.99,
               cond_drop_prob=0.5, precision="auto", device="cpu", seed=3, save_every=100, log_every=2)
    cfg.update(kw)
    return cfg


# --------------------------------------------------------------------------- data
def test_windows_follow_the_reference_layout(data_dir):
    ds = T.MotionDataset(str(data_dir))
    assert len(ds) == (120 - 80) + (95 - 80) + (81 - 80)      # every start s >= 1
    assert ds.cond_dim == 1103
    motion, kp, feats, emo, eye = synthetic_clip(120, 0)
    ci = [f.name for f in ds.files].index("clip0.safetensors")
    item = next(i for i, (c, s) in enumerate(ds.index) if c == ci and s == 7)
    w = ds[(item, 123)]
    assert torch.equal(w["x0"], motion[7:87]) and torch.equal(w["cond_frame"], motion[6])
    c = w["cond"]
    assert c.shape == (80, 1103)
    assert torch.equal(c[:, :1024], feats[7:87])
    tol.close_sum(c[:, 1024:1032], emo[7:87].mean(0).expand(80, -1), terms=80)          # emo = window mean
    assert torch.equal(c[:, 1032:1040], eye[7:87])                                    # eye_open | eye_ball
    sc = c[0, 1040:]
    assert (c[:, 1040:] == sc).all() and any(torch.equal(sc, kp[i]) for i in range(120))  # kp of one frame
    assert torch.equal(ds[(item, 123)]["cond"], c)                                    # seeded: reproducible
    lazy = T.MotionDataset(str(data_dir), preload=False)
    assert all(torch.equal(lazy[(item, 5)][k], ds[(item, 5)][k]) for k in w)


def test_part_losses_match_definition():
    g = torch.Generator().manual_seed(0)
    pred, gt = torch.randn(2, 80, 265, generator=g), torch.randn(2, 80, 265, generator=g)
    parts = T.part_losses(pred, gt, {"exp": 2.0}, cond_frame=gt[:, 0])
    assert set(parts) == {f"{k}_{m}" for k in T.PARTS for m in "PVAL"}
    p, q = pred[..., 202:], gt[..., 202:]
    assert torch.isclose(parts["exp_P"], 2 * ((p - q) ** 2).mean())
    assert torch.isclose(parts["exp_V"], 2 * ((p.diff(dim=1) - q.diff(dim=1)) ** 2).mean())
    assert torch.isclose(parts["exp_A"], 2 * ((p.diff(n=2, dim=1) - q.diff(n=2, dim=1)) ** 2).mean())
    assert torch.isclose(parts["yaw_P"], ((pred[..., 67:133] - gt[..., 67:133]) ** 2).mean())


def test_dropped_rows_get_the_unconditional_pass():
    model = T.build_model(T.TrainConfig(**TINY)).eval()
    g = torch.Generator().manual_seed(1)
    x_t, cf = torch.randn(3, 80, 265, generator=g), torch.randn(3, 265, generator=g)
    cond = torch.randn(3, 80, 1103, generator=g)
    t = torch.tensor([5, 500, 999])
    keep = torch.tensor([True, False, True])
    tokens, hidden = model.encode_cond(cond, 3)
    tokens = torch.where(keep[:, None, None], tokens, model.null_cond_embed.expand_as(tokens))
    hidden = torch.where(keep[:, None], hidden, model.null_cond_hidden.expand_as(hidden))
    with torch.no_grad():
        mixed = model.decode(x_t, cf, tokens, hidden, t)
        # batch 3 vs batch 1: the same network up to the kernels' blocking
        tol.close_network(mixed[1:2], model(x_t[1:2], cf[1:2], cond[1:2], t[1:2], uncond=True), TINY_NET)
        tol.close_network(mixed[0:1], model(x_t[0:1], cf[0:1], cond[0:1], t[0:1]), TINY_NET)


# --------------------------------------------------------------------------- training
def test_training_reduces_the_loss_and_checkpoint_loads_and_generates(data_dir, tmp_path):
    cfg = config(data_dir, tmp_path / "run", steps=40, cond_drop_prob=0.2, log_every=10)
    batch = T.collate([T.MotionDataset(str(data_dir))[(i, i)] for i in (0, 11, 30, 41, 55)])
    before, _ = T.fixed_batch_loss(T.build_model(T.TrainConfig.from_any(cfg)).eval(), batch)
    lines = []
    res = T.train(cfg, log_fn=lines.append)
    assert res.step == 40 and res.checkpoint.is_file() and not res.stopped
    assert [h["step"] for h in res.history] == [10, 20, 30, 40]
    assert all(k in res.history[-1] for k in ("loss", "exp_P", "yaw_V", "roll_A", "grad_norm"))
    assert len((tmp_path / "run" / T.LOG_NAME).read_text().splitlines()) == 4
    umask = os.umask(0)
    os.umask(umask)
    for written in (res.checkpoint, res.state):                 # atomically written, with a new file's rights
        assert stat.S_IMODE(written.stat().st_mode) == 0o666 & ~umask, written
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []

    with safe_open(str(res.checkpoint), framework="pt") as fh:
        meta = fh.metadata()
    assert meta["num_heads"] == "2"
    assert json.loads(meta["audio_features"]) == T.AUDIO_SPEC
    assert json.loads(meta["model_config"])["latent_dim"] == 32

    lmdm = ditto.load_lmdm(res.checkpoint)                     # heads from the metadata
    assert {k: lmdm.config[k] for k in TINY} == TINY
    after, parts = T.fixed_batch_loss(lmdm, batch)
    assert after < 0.5 * before, (before, after, parts)

    feats = synthetic_clip(100, 7)[2]
    motion, kp = synthetic_clip(100, 7)[:2]
    cond = ditto.Conditions(emo=4, eye_open=[0.7, 0.7], eye_ball=[0.0] * 6, sc=kp[0])
    seq = ditto.generate(lmdm, feats, cond, motion[0], steps=3, seed=0)
    assert seq.shape == (100, 265) and torch.isfinite(seq).all()


def test_resume_equals_uninterrupted_training(data_dir, tmp_path):
    full = T.train(config(data_dir, tmp_path / "full"), log_fn=None)
    part = T.train(config(data_dir, tmp_path / "part", steps=2), log_fn=None)
    assert part.step == 2
    resumed = T.train(config(data_dir, tmp_path / "part"), log_fn=None)   # same out_dir: resumes at step 2
    assert resumed.step == 4
    a, b = T.load_train_state(full.state), T.load_train_state(resumed.state)
    assert a["step"] == b["step"] == 4
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    wa, wb = load_file(str(full.checkpoint)), load_file(str(resumed.checkpoint))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    # the raw weights exported from the state load as well
    raw = T.export_from_state(resumed.state, tmp_path / "raw.safetensors", use_ema=False)
    assert torch.equal(ditto.load_lmdm(raw).final_layer.weight, b["model"]["final_layer.weight"])


def test_stop_saves_state_without_checkpoint(data_dir, tmp_path):
    calls = []
    res = T.train(config(data_dir, tmp_path / "stop", steps=10), log_fn=None,
                  should_stop=lambda: calls.append(1) or len(calls) >= 3)
    assert res.stopped and res.step == 3 and res.checkpoint is None
    assert T.load_train_state(res.state)["step"] == 3


def test_spawned_workers_fall_back_to_this_process(data_dir, tmp_path, monkeypatch):
    """Data-loader workers started with 'spawn' (Windows, macOS) cannot import a pack loaded from its
    folder: the windows are then read in the training process, with the same result."""
    monkeypatch.setattr(pack_module("training.loop").multiprocessing, "get_start_method", lambda: "spawn")
    lines = []
    res = T.train(config(data_dir, tmp_path / "w", steps=2, num_workers=2), log_fn=lines.append)
    assert any("'spawn' could not import this pack" in line for line in lines), lines
    ref = T.train(config(data_dir, tmp_path / "ref", steps=2), log_fn=None)
    a, b = load_file(str(res.checkpoint)), load_file(str(ref.checkpoint))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tune_from_a_released_style_checkpoint(data_dir, tmp_path):
    """init = an official-layout .pth ({"model_state_dict": ...}, no metadata): heads from the config."""
    src = T.build_model(T.TrainConfig(**TINY, seed=9))
    pth = tmp_path / "lmdm_tiny.pth"
    torch.save({"model_state_dict": src.state_dict()}, pth)
    res = T.train(config(data_dir, tmp_path / "ft", init=str(pth), steps=2, latent_dim=512), log_fn=None)
    lmdm = ditto.load_lmdm(res.checkpoint)
    assert lmdm.config["latent_dim"] == 32 and lmdm.config["num_heads"] == 2   # the file's sizes, not latent_dim=512


# --------------------------------------------------------------------------- dataset building
@pytest.fixture(scope="module")
def lp_tiny():
    w = FIXTURES / "liveportrait" / "weights"
    return L.load_liveportrait({k: w / f"{k}.safetensors" for k in L.KINDS}, L.preset("tiny"))


def _video(path, n, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 64, 64, 3, generator=g)
    shift = torch.linspace(0, 0.3, n)[:, None, None, None]
    frames = (base * 0.7 + shift * torch.linspace(0, 1, 64)[None, None, :, None]).clamp(0, 1)
    t = torch.arange(int(n / 25 * 16000)) / 16000
    audio = Audio((0.3 * torch.sin(2 * math.pi * 220 * t))[None], 16000)
    return write_video(path, frames, fps=25, audio=audio, preset="ultrafast")


def test_build_dataset_end_to_end(tmp_path, lp_tiny):
    good, short = _video(tmp_path / "talk.mp4", 90, 0), _video(tmp_path / "short.mp4", 40, 1)
    calls = []

    def features_fn(audio_16k):
        calls.append(audio_16k.numel())
        n = math.ceil(audio_16k.numel() * 25 / 16000)
        f = torch.zeros(n, 1024)
        f[:, 0] = torch.arange(n, dtype=torch.float32)
        return f

    out = tmp_path / "cache"
    msgs = []
    res = T.build_dataset([tmp_path], out, lp_tiny, features_fn, crop=False, flip=True, batch_size=32,
                          log_fn=msgs.append)
    assert len(res["written"]) == 2 and len(res["skipped"]) == 1
    assert "short.mp4" in res["skipped"][0][0] and "fewer than 81" in res["skipped"][0][1]
    assert any("short.mp4: skipped" in m for m in msgs)

    plain = next(p for p in res["written"] if not p.endswith("-flip.safetensors"))
    flipped = next(p for p in res["written"] if p.endswith("-flip.safetensors"))
    d = load_file(plain)
    assert d["motion"].shape == (90, 265) and d["kp"].shape == (90, 63) and d["features"].shape == (90, 1024)
    assert torch.equal(d["features"][:, 0], torch.arange(90, dtype=torch.float32))
    assert torch.allclose(d["emo"], ditto.emo_vector(4).expand(90, -1))                  # neutral label
    assert torch.allclose(d["eye"], torch.tensor(T.NEUTRAL_EYE).expand(90, -1))         # neutral eyes
    with safe_open(plain, framework="pt") as fh:
        meta = fh.metadata()
    assert meta["format"] == T.CLIP_FORMAT and meta["fps"] == "25" and meta["flip"] == "0"
    assert "neutral" in meta["emotion"] and "neutral" in meta["eye"]

    # the cached rows are the source vectors (Ditto layout) of the decoded frames
    frames, fps = load_video(good)
    assert fps == 25 and frames.shape[0] == 90
    for i, mirrored, path in ((0, False, plain), (57, True, flipped)):
        x = frames[i:i + 1].flip(2) if mirrored else frames[i:i + 1]
        _, raw = motion_info(lp_tiny, to_input(x, 64), return_raw=True)
        cached = load_file(path)
        # the builder ran the motion extractor on batches of frames, this on one: kernel blocking only
        tol.close_network(cached["motion"][i], ditto.source_vector(raw), tol.LP_M)
        tol.close_network(cached["kp"][i], raw["kp"].reshape(-1), tol.LP_M)
    assert not torch.allclose(load_file(flipped)["motion"], d["motion"], atol=1e-3)

    # resumable: complete files are kept, nothing recomputed
    before = {p: (tmp_path / p).stat().st_mtime_ns for p in res["written"]}
    n_calls = len(calls)
    again = T.build_dataset([good], out, lp_tiny, features_fn, crop=False, flip=True, log_fn=None)
    assert sorted(again["kept"]) == sorted(res["written"]) and not again["written"] and len(calls) == n_calls
    assert all((tmp_path / p).stat().st_mtime_ns == t for p, t in before.items())

    # the crop path (a detector box that is the whole frame) gives the same motion
    cropped = T.build_dataset([good], tmp_path / "crop", lp_tiny, features_fn, crop=True, detector=CenterDetector(),
                              log_fn=None)
    crop = tol.Net("bilinear resampling of the whole-frame crop", 1, 4).then(tol.LP_M)
    tol.close_network(load_file(cropped["written"][0])["motion"], d["motion"], crop)

    # the cache trains
    res = T.train(config(out, tmp_path / "run", steps=1), log_fn=None)
    assert res.checkpoint.is_file()


def test_cli_help():
    """`python -m training` from the pack's folder (the README's form)."""
    out = subprocess.run([sys.executable, "-m", "training", "--help"], capture_output=True, text=True, timeout=60,
                         cwd=str(ROOT))
    assert out.returncode == 0 and "build-dataset" in out.stdout and "train" in out.stdout, out.stderr
    for cmd in ("build-dataset", "train", "export"):
        sub = subprocess.run([sys.executable, "-m", "training", cmd, "--help"], capture_output=True, text=True,
                             timeout=60, cwd=str(ROOT))
        assert sub.returncode == 0 and "usage" in sub.stdout, sub.stderr


def test_cli_train_and_export(data_dir, tmp_path):
    """`python /path/to/the/pack/training ...` from any folder."""
    script = str(ROOT / "training")
    args = [sys.executable, script, "train", "--data", str(data_dir), "--out", str(tmp_path / "r"), "--steps", "2",
            "--batch-size", "2", "--latent-dim", "32", "--ff-size", "64", "--num-layers", "1", "--num-heads", "2",
            "--num-encoder-layers", "1", "--device", "cpu", "--log-every", "1"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=str(tmp_path), env=ONE_THREAD)
    assert out.returncode == 0, out.stderr
    assert "step 2/2" in out.stdout and (tmp_path / "r" / "lmdm_ema.safetensors").is_file()
    exp = subprocess.run([sys.executable, script, "export", str(tmp_path / "r" / T.STATE_NAME), "--out",
                          str(tmp_path / "e.safetensors"), "--raw"], capture_output=True, text=True, timeout=120,
                         env=ONE_THREAD, cwd=str(tmp_path))
    assert exp.returncode == 0, exp.stderr
    assert ditto.load_lmdm(tmp_path / "e.safetensors").config["num_heads"] == 2
    bad = subprocess.run([sys.executable, script, "export", str(tmp_path / "missing.pt"), "--out",
                          str(tmp_path / "m.safetensors")], capture_output=True, text=True, timeout=120,
                         env=ONE_THREAD, cwd=str(tmp_path))
    assert bad.returncode == 2 and bad.stderr.startswith("error: missing.pt: not a readable training state")
    assert "Traceback" not in bad.stderr


# --------------------------------------------------------------------------- EMA
def test_ema_is_torch_averaged_model_with_the_warmup_decay():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))   # BatchNorm: float + int buffers
    ema = T.EMA(net, decay=0.9, warmup=True)
    assert isinstance(ema, torch.optim.swa_utils.AveragedModel) and not ema.use_buffers
    expected = {k: p.detach().clone() for k, p in net.named_parameters()}   # the average starts at the weights

    def one_step(step):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(4, 3))                                   # train mode: the running statistics move
        ema.update_parameters(net)
        d = min(0.9, (1 + step) / (10 + step))
        for k, p in net.named_parameters():
            expected[k] = d * expected[k] + (1 - d) * p.detach()

    for step in (1, 2, 3):
        one_step(step)
    w = ema.weights()
    assert list(w) == list(net.state_dict())                     # the model's own key names, no "module."
    for k in expected:
        torch.testing.assert_close(w[k], expected[k])
    for k, b in net.named_buffers():                             # buffers copied, not averaged
        assert torch.equal(w[k], b) and w[k].dtype == b.dtype, k
    assert int(ema.n_averaged) == 4                              # the copy at construction + 3 steps

    # a run resumed after step 3 continues the same average
    resumed = T.EMA(torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2)), decay=0.9)
    resumed.load_weights(w, step=3)
    one_step(4)
    resumed.update_parameters(net)
    assert all(torch.equal(a, b) for a, b in zip(ema.weights().values(), resumed.weights().values()))
    with pytest.raises(CheckpointError, match="EMA state does not match"):
        resumed.load_weights({"0.weight": w["0.weight"]}, step=3)


# --------------------------------------------------------------------------- packaging
def _targets(path):
    """The absolute module names (pack-relative) that ``path`` imports."""
    package = list(path.relative_to(ROOT).parent.parts)
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)


def test_training_stays_out_of_core_and_of_the_registry_package():
    for path in (ROOT / "core").rglob("*.py"):
        assert not any(t.split(".")[0] == "training" for t in _targets(path)), f"{path} imports training"
    for path in (ROOT / "training").rglob("*.py"):             # the pack's own modules only relatively
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            absolute = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            assert not {n.split(".")[0] for n in absolute} & {"core", "nodes", "headless", "training"}, path
    # comfy-cli's `comfy node pack/publish` archive: git-tracked files minus .comfyignore matches, plus the
    # [tool.comfy] includes, which win over .comfyignore
    ignored = {line.strip() for line in (ROOT / ".comfyignore").read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")}
    assert {"training/", "tests/", "bench/", "tools/", "docs/"} <= ignored
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    includes = json.loads(re.search(r"^includes\s*=\s*(\[.*?\])", pyproject, re.M | re.S).group(1))
    assert not any(inc.strip("/").split("/")[0] + "/" in ignored for inc in includes), includes
