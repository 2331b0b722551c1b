"""LivePortrait end to end on the tiny fixture: source processing, the 5 official pipeline
variants rendered (frames and occlusion maps), the official .pth layout and safetensors giving
identical outputs, and loading errors."""
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import tolerance as tol
from conftest import FIXTURES
from core.errors import CheckpointError, InputError
from core.liveportrait import kinematics as K
from core.liveportrait import load as L
from core.liveportrait import render as R
from core.liveportrait.motion import driving_keypoints
from lp_common import IO, VARIANTS, reference_motion

WEIGHTS = FIXTURES / "liveportrait" / "weights"

def safetensors_paths():
    return {k: WEIGHTS / f"{k}.safetensors" for k in L.KINDS}


def official_pth_paths(tmp_path):
    """The same tensors in the official HF layout: bare state dicts and the nested stitching dict."""
    paths = {}
    for kind in L.KINDS:
        flat = load_file(str(WEIGHTS / f"{kind}.safetensors"))
        if kind == "stitching_retargeting_module":
            nested = {}
            for key, value in flat.items():
                sub, rest = key.split(".", 1)
                nested.setdefault(sub, {})[rest] = value
            nested["extra_entry_the_loader_ignores"] = {"foo": torch.zeros(3)}
            obj = nested
            sub_dir = "retargeting_models"
        else:
            obj, sub_dir = flat, "base_models"
        path = tmp_path / "liveportrait" / sub_dir / f"{kind}.pth"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
        paths[kind] = path
    return paths


@pytest.fixture(scope="module")
def models():
    return L.load_liveportrait(safetensors_paths(), L.preset("tiny"))


def test_source_processing(models):
    src = R.prepare_source(models, IO["input.pipeline_I_s"].permute(0, 2, 3, 1), size=64,
                           lmk203=IO["input.source_lmk203"])
    tol.close_network(src.feature_3d, IO["input.pipeline_f_s"], tol.LP_F)
    for name in ("kp", "exp", "t", "pitch", "yaw", "roll", "scale"):
        ours, ref = getattr(src.motion, name), IO[f"input.pipeline_src_{name}"].reshape(getattr(src.motion, name).shape)
        if name in ("pitch", "yaw", "roll"):
            tol.close_degrees(ours, ref, tol.LP_M, what=name)
        else:
            tol.close_network(ours, ref, tol.LP_M, what=name)
    # the angles err on the 195-degree scale (3.4 rad) and move kp @ R by as much
    mag = tol.lp_kp_magnitude(src.motion.kp, src.motion.exp, src.motion.scale, src.motion.t)
    tol.close_network(src.motion.x_s, IO["pipe.rel_pose_stitch.x_s"], tol.LP_M_KP,
                      magnitude=math.radians(tol.DEGREE_TERMS) * mag)
    assert torch.allclose(src.motion.lip, K.lip_ratio(IO["input.source_lmk203"]).reshape(1, 1))
    # the motion producers skip the appearance volume: same motion, and rendering it is refused clearly
    bare = R.prepare_source(models, IO["input.pipeline_I_s"].permute(0, 2, 3, 1), size=64, appearance=False)
    assert bare.feature_3d is None and torch.equal(bare.motion.x_s, src.motion.x_s)
    assert all(torch.equal(bare.raw[k], src.raw[k]) for k in src.raw)
    with pytest.raises(InputError, match="appearance=True"):
        next(R.render_frames(models, bare, src.motion.x_s))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pipeline_variants_render(models, variant):
    src = R.prepare_source(models, IO["input.pipeline_I_s"].permute(0, 2, 3, 1), size=64,
                           lmk203=IO["input.source_lmk203"])
    x_d = driving_keypoints(src.motion, reference_motion(), VARIANTS[variant], models.stitching, models.lip, models.eye)
    ref = IO[f"pipe.{variant}.out"]
    frames = torch.cat(list(R.render_frames(models, src, x_d, batch_size=3, device="cpu", precision="fp32")))
    assert frames.shape == (4, 3, 128, 128)
    tol.close_network(frames[-ref.shape[0]:], ref, tol.LP)
    occ = R.warp_decode(models, src.feature_3d, src.motion.x_s, x_d[-ref.shape[0]:])["occlusion_map"]
    tol.close_network(occ, IO[f"pipe.{variant}.occlusion_map"], tol.LP_M_KP.then(tol.LP_DRIVE).then(tol.LP_W))


def test_stage_outputs(models):
    with torch.inference_mode():
        feat = models.appearance(IO["input.I_s"])
        warped = models.warping(IO["F.feature_3d"], kp_driving=IO["W.in_kp_driving"], kp_source=IO["W.in_kp_source"])
        image = models.spade(IO["W.out"])
    tol.close_network(feat, IO["F.feature_3d"], tol.LP_F)
    tol.close_network(warped["out"], IO["W.out"], tol.LP_W)
    tol.close_network(image, IO["G.out"], tol.LP_G)
    info = R.motion_info(models, torch.cat([IO["input.I_s"], IO["input.I_d"]]))
    tol.close_network(info["kp"], IO["M.info.kp"], tol.LP_M)


def test_official_pth_layout_equals_safetensors(models, tmp_path):
    from_pth = L.load_liveportrait(official_pth_paths(tmp_path), L.preset("tiny"))
    src = IO["input.I_s"].permute(0, 2, 3, 1)
    a = R.prepare_source(models, src, size=64)
    b = R.prepare_source(from_pth, src, size=64)
    assert torch.equal(a.feature_3d, b.feature_3d) and torch.equal(a.motion.x_s, b.motion.x_s)
    x_d = IO["pipe.rel_pose_stitch.x_d"]
    fa = torch.cat(list(R.render_frames(models, a, x_d, device="cpu", precision="fp32")))
    fb = torch.cat(list(R.render_frames(from_pth, b, x_d, device="cpu", precision="fp32")))
    assert torch.equal(fa, fb)


def test_video_driven_motion_extraction(models):
    frames = torch.cat([IO["input.I_s"], IO["input.I_d"]]).permute(0, 2, 3, 1)
    motion = R.extract_motion(models, frames, fps=30, batch_size=2, size=64, device="cpu")
    assert len(motion) == 3 and motion.fps == 30
    tol.close_network(motion.exp, IO["M.info.exp"], tol.LP_M)
    tol.close_degrees(motion.pitch, IO["M.info.pitch"].reshape(3), tol.LP_M)
    # the angles' error (195-degree scale, in radians) moves the unit-size entries by as much
    tol.close_network(motion.rotation(), IO["M.rot"], tol.LP_M_KP, magnitude=math.radians(tol.DEGREE_TERMS))


def test_loading_errors(tmp_path):
    paths = safetensors_paths()
    bad = load_file(str(WEIGHTS / "warping_module.safetensors"))
    bad.pop(sorted(bad)[0])
    save_file(bad, tmp_path / "warping_module.safetensors")
    with pytest.raises(CheckpointError, match="Missing keys"):
        L.load_liveportrait({**paths, "warping_module": tmp_path / "warping_module.safetensors"}, L.preset("tiny"))
    with pytest.raises(CheckpointError, match="Wrong shapes|Missing"):
        L.load_liveportrait(paths, L.preset("liveportrait"))  # tiny files, official sizes
    save_file({"foo.weight": torch.zeros(2)}, tmp_path / "stitch.safetensors")
    with pytest.raises(CheckpointError, match="retarget_shoulder"):
        L.load_retargeting(tmp_path / "stitch.safetensors", L.preset("tiny"))
    with pytest.raises(CheckpointError, match="missing: spade_generator"):
        L.load_liveportrait({k: v for k, v in paths.items() if k != "spade_generator"}, L.preset("tiny"))


# --------------------------------------------------------------------------- torch.compile
def _render(models, src, x_d, **kw):
    return torch.cat(list(R.render_frames(models, src, x_d, batch_size=3, device="cpu", precision="fp32", **kw)))


@pytest.fixture(scope="module")
def fresh_models():
    """A model set of its own (the compiled renderer is cached on it), on the inference path users run."""
    return L.load_liveportrait(safetensors_paths(), L.preset("tiny")).optimize_for_inference()


def _source_and_keypoints(models):
    src = R.prepare_source(models, IO["input.pipeline_I_s"].permute(0, 2, 3, 1), size=64,
                           lmk203=IO["input.source_lmk203"])
    x_d = driving_keypoints(src.motion, reference_motion(), VARIANTS["rel_pose_stitch"], models.stitching, models.lip,
                            models.eye)
    return src, x_d


def test_compiled_render_matches_eager(fresh_models):
    """render_frames(compile=True) traces warping and decoding with torch.compile (inductor on the CPU in fp32)
    and renders the same frames as the eager path: inductor may fuse and reorder the float32 sums, so the
    frames agree to the network bound of the official comparison."""
    import shutil

    if not any(shutil.which(cxx) for cxx in ("c++", "g++", "clang++")):
        pytest.skip("no C++ compiler here: inductor cannot compile on the CPU (the fallback is tested below)")
    src, x_d = _source_and_keypoints(fresh_models)
    eager = _render(fresh_models, src, x_d)
    compiled = _render(fresh_models, src, x_d, compile=True)
    assert fresh_models.__dict__["_compiled"][("cpu", None, torch.float32)] is not R._COMPILE_FAILED
    tol.close_network(compiled, eager, tol.LP)
    assert not torch.equal(compiled, torch.zeros_like(compiled))


def test_compile_not_used_for_cpu_half_or_mps(models):
    assert R.compiled_renderer(models, torch.device("cpu"), torch.bfloat16) is None
    assert R.compiled_renderer(models, torch.device("mps"), torch.float16) is None


def test_compile_failure_falls_back_once_with_a_warning(models, monkeypatch, caplog):
    """A compiler error (no C++ compiler, an unsupported op) is logged once; rendering goes on eagerly, with
    the same frames, and the model set does not try to compile again."""
    calls = []

    def broken(fn, **kw):
        def run(*args):
            calls.append(1)
            raise RuntimeError("inductor: no working C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    models.__dict__.pop("_compiled", None)
    src, x_d = _source_and_keypoints(models)
    caplog.set_level("WARNING")
    try:
        got = _render(models, src, x_d, compile=True)
        again = _render(models, src, x_d, compile=True)
    finally:
        models.__dict__.pop("_compiled", None)
    assert torch.equal(got, _render(models, src, x_d)) and torch.equal(again, got)
    assert len(calls) == 1
    warnings = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(warnings) == 1 and "no working C++ compiler" in warnings[0]


def test_compiled_batches_have_one_shape(models, monkeypatch):
    """Where a call takes a whole batch (GPUs), the compiled renderer always gets batch_size frames: a short last
    batch is padded with its last frame and the padding dropped."""
    src, x_d = _source_and_keypoints(models)      # 4 frames, batches of 3 -> 3 + 1 (padded to 3)
    shapes = []

    def fake(models_, dev, dtype):
        def run(feature, x_s, x_b):
            shapes.append(int(x_b.shape[0]))
            return R.warp_decode(models_, feature, x_s, x_b)["out"]
        return run

    monkeypatch.setattr(R, "compiled_renderer", fake)
    monkeypatch.setattr(R, "_frames_per_call", lambda dev, batch_size: batch_size)
    got = _render(models, src, x_d, compile=True)
    assert shapes == [3, 3] and got.shape[0] == 4
    monkeypatch.setattr(R, "_frames_per_call", lambda dev, batch_size: 1)
    tol.close_network(got, _render(models, src, x_d), tol.LP)
