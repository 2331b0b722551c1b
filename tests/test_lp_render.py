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
