"""LivePortrait motion extractor, motion kinematics, stitching and retargeting vs the reference.

Tiny parity fixture (tests/fixtures/liveportrait, seeded weights with the official key names,
outputs of the official code): raw heads, motion info, degrees, rotation, transformed
keypoints, stitching and eye/lip retargeting. Full-size modules are checked structurally
(keys, shapes, parameter counts of the official checkpoints) without weights.
"""
import io as _io
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from core.liveportrait import kinematics as K
from core.liveportrait.motion_extractor import MotionExtractor
from core.liveportrait.stitching import StitchingRetargetingNetwork, build_networks, split_state_dict

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "liveportrait"
CONFIGS = ROOT / "core" / "liveportrait" / "configs"
ROT_OPS, KP_OPS = tol.LP_ROT_OPS, tol.LP_KP_OPS


def _config(name):
    return json.loads((CONFIGS / name).read_text())["model_params"]


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIX / "io.safetensors"))


@pytest.fixture(scope="module")
def manifest():
    return json.loads((FIX / "checkpoint_manifest.json").read_text())["files"]


@pytest.fixture(scope="module")
def motion():
    m = MotionExtractor(**_config("tiny.json")["motion_extractor_params"]).eval()
    m.load_state_dict(load_file(str(FIX / "weights" / "motion_extractor.safetensors")), strict=True)
    return m


@pytest.fixture(scope="module")
def nets():
    nets = build_networks(_config("tiny.json")["stitching_retargeting_module_params"])
    states = split_state_dict(load_file(str(FIX / "weights" / "stitching_retargeting_module.safetensors")))
    for name, net in nets.items():
        net.load_state_dict(states[name], strict=True)
        net.eval()
    return nets


@pytest.fixture(scope="module")
def raw(io, motion):
    with torch.no_grad():
        return motion(torch.cat([io["input.I_s"], io["input.I_d"]]))


def _ref_info(io):
    return {k[len("M.info."):]: v for k, v in io.items() if k.startswith("M.info.")}


def _kp_magnitude(info):
    return tol.lp_kp_magnitude(info["kp"], info["exp"], info["scale"], info["t"])


# --------------------------------------------------------------------------- motion extractor
@pytest.mark.parametrize("head", ["kp", "pitch", "yaw", "roll", "t", "exp", "scale"])
def test_raw_heads(io, raw, head):
    assert raw[head].dtype == torch.float32
    tol.close_network(raw[head], io[f"M.raw.{head}"], tol.LP_M)


def test_raw_head_set(raw):
    assert set(raw) == {"kp", "pitch", "yaw", "roll", "t", "exp", "scale"}


def test_batch_independent(io, motion, raw):
    with torch.no_grad():
        one = motion(io["input.I_d"][1:2])
    for k in raw:
        tol.close_network(one[k], raw[k][2:3], tol.LP_M, what=k)


# --------------------------------------------------------------------------- kinematics
@pytest.mark.parametrize("field", ["kp", "exp", "pitch", "yaw", "roll", "t", "scale"])
def test_kp_info(io, raw, field):
    ref_raw = {k[len("M.raw."):]: v for k, v in io.items() if k.startswith("M.raw.")}
    ours, from_network = K.kp_info(ref_raw)[field], K.kp_info(raw)[field]
    assert ours.shape == io[f"M.info.{field}"].shape and ours.dtype == torch.float32
    if field in ("pitch", "yaw", "roll"):
        tol.close_degrees(ours, io[f"M.info.{field}"])
        tol.close_degrees(from_network, io[f"M.info.{field}"], tol.LP_M)
    else:  # reshaped or passed through: the official values themselves
        assert torch.equal(ours, io[f"M.info.{field}"])
        tol.close_network(from_network, io[f"M.info.{field}"], tol.LP_M)


def test_degree_from_logits(io):
    tol.close_degrees(K.headpose_to_degree(io["M.raw.pitch"]), io["M.degree_from_logits.pitch"])
    # uniform logits -> the middle of the range: 32.5 * 3 - 97.5 = 0
    tol.close_degrees(K.headpose_to_degree(torch.zeros(2, 66)), torch.zeros(2))


def test_rotation_matrix(io):
    info = _ref_info(io)
    rot = K.rotation_matrix(info["pitch"], info["yaw"], info["roll"])
    tol.close_elementwise(rot, io["M.rot"], ops=ROT_OPS, magnitude=1)
    tol.close_elementwise(K.rotation_matrix(info["pitch"][:, 0], info["yaw"][:, 0], info["roll"][:, 0]), io["M.rot"],
                          ops=ROT_OPS, magnitude=1)
    # logits are accepted in place of degrees: the angles' error (on the 195-degree scale, in radians) moves
    # the unit-size entries by as much
    tol.close_network(K.rotation_matrix(io["M.raw.pitch"], io["M.raw.yaw"], io["M.raw.roll"]), io["M.rot"],
                      tol.Net("66-bin expectation and rotation", 2, tol.DEGREE_BINS),
                      magnitude=math.radians(tol.DEGREE_TERMS))
    # orthonormal: twice the entries' error plus one 3-term product
    tol.close_elementwise(rot @ rot.transpose(1, 2), torch.eye(3).expand(3, 3, 3), ops=2 * ROT_OPS + 3, magnitude=1)


def test_rotation_convention():
    # pure yaw of +90 deg: x' = Ry x (column vectors), i.e. row vector x @ Ry^T
    r = K.rotation_matrix(torch.zeros(1), torch.full((1,), 90.0), torch.zeros(1))
    out = torch.tensor([[1.0, 0.0, 0.0]]) @ r[0]
    tol.close_elementwise(out, torch.tensor([[0.0, 0.0, -1.0]]), ops=ROT_OPS)


def test_transform_keypoint(io, raw):
    info = _ref_info(io)
    mag = _kp_magnitude(info)
    tol.close_elementwise(K.transform_keypoint(info), io["kp.transformed"], ops=KP_OPS, magnitude=mag)
    one_by_one = K.transform_keypoint(info["kp"], info["pitch"], info["yaw"], info["roll"], info["exp"], info["t"],
                                      info["scale"])
    tol.close_elementwise(one_by_one, io["kp.transformed"], ops=KP_OPS, magnitude=mag)
    # from our own network's heads: the angles err on the 195-degree scale (3.4 rad), moving kp @ R by as much
    tol.close_network(K.transform_keypoint(K.kp_info(raw)), io["kp.transformed"], tol.LP_M_KP,
                      magnitude=math.radians(tol.DEGREE_TERMS) * mag)
    # t_z is ignored
    info2 = dict(info, t=info["t"] + torch.tensor([0.0, 0.0, 5.0]))
    tol.close_elementwise(K.transform_keypoint(info2), io["kp.transformed"], ops=KP_OPS, magnitude=mag)


# --------------------------------------------------------------------------- stitching / retargeting
def test_stitching(io, nets):
    with torch.no_grad():
        tol.close_network(K.stitch_delta(nets["stitching"], io["S.in_x_s"], io["S.in_x_d"]), io["S.delta"],
                          tol.LP_STITCH)
        tol.close_network(K.stitching(nets["stitching"], io["S.in_x_s"], io["S.in_x_d"]), io["S.out"], tol.LP_STITCH)
        # one source broadcast over the driving batch
        tol.close_network(K.stitching(nets["stitching"], io["S.in_x_s"][:1], io["S.in_x_d"]), io["S.out"],
                          tol.LP_STITCH)


def test_retarget_eye_lip(io, nets):
    with torch.no_grad():
        tol.close_network(K.retarget_eye(nets["eye"], io["R.in_x_s"], io["R.eye_ratio"]), io["R.eye_delta"], tol.LP_EYE)
        tol.close_network(K.retarget_lip(nets["lip"], io["R.in_x_s"], io["R.lip_ratio"]), io["R.lip_delta"],
                          tol.LP_STITCH)
        tol.close_network(K.retarget_lip(nets["lip"], io["R.in_x_s"][:1], io["R.lip_ratio"]), io["R.lip_delta"],
                          tol.LP_STITCH)


def test_pipeline_retarget_calls(io, nets):
    """The per-frame retargeting calls the reference pipeline made from its own source keypoints."""
    x_s = io["pipe.rel_retarget_eye_lip_stitch.x_s"]
    with torch.no_grad():
        for part in ("eye", "lip"):
            ratio = io[f"pipe.rel_retarget_eye_lip_stitch.{part}_ratio"]
            fn = K.retarget_eye if part == "eye" else K.retarget_lip
            tol.close_network(fn(nets[part], x_s, ratio), io[f"pipe.rel_retarget_eye_lip_stitch.{part}_delta"],
                              tol.LP_EYE if part == "eye" else tol.LP_STITCH, what=part)
        tol.close_network(K.retarget_lip(nets["lip"], io["pipe.rel_expr_stitch_lipnorm_mult.x_s"],
                                         io["pipe.rel_expr_stitch_lipnorm_mult.lip_ratio"]),
                          io["pipe.rel_expr_stitch_lipnorm_mult.lip_delta"], tol.LP_STITCH)


def test_landmark_ratios(io):
    lmk = io["input.source_lmk203"]
    eyes, lip = K.eye_ratio(lmk), K.lip_ratio(lmk)
    assert eyes.shape == (2,) and lip.shape == (1,)
    # the source ratios the reference pipeline computed from these landmarks: per distance a difference,
    # two squares, a sum and a root (each rounding relative to the result), then + 1e-6 and a division
    ratio_ops = 2 * 5 + 2
    tol.close_elementwise(eyes, io["pipe.rel_retarget_eye_lip_stitch.eye_ratio"][0, :2], ops=ratio_ops)
    tol.close_elementwise(lip, io["pipe.rel_retarget_eye_lip_stitch.lip_ratio"][0, :1], ops=ratio_ops)
    tol.close_elementwise(lip, io["pipe.rel_expr_stitch_lipnorm_mult.lip_ratio"][0, :1], ops=ratio_ops)
    # batched input
    assert K.eye_ratio(lmk[None].repeat(3, 1, 1)).shape == (3, 2)
    assert K.lip_ratio(lmk[None].repeat(3, 1, 1)).shape == (3, 1)


def test_split_state_dict_layouts(manifest):
    flat = load_file(str(FIX / "weights" / "stitching_retargeting_module.safetensors"))
    nested = {}
    for k, v in flat.items():
        sub, key = k.split(".", 1)
        nested.setdefault(sub, {})[key] = v
    nested["extra_entry"] = {"whatever": torch.zeros(1)}
    buf = _io.BytesIO()
    torch.save(nested, buf)
    buf.seek(0)
    official = torch.load(buf, weights_only=True)
    kijai = {k.replace(".module.", "_module.", 1): v for k, v in flat.items()}
    a, b, c = split_state_dict(flat), split_state_dict(official), split_state_dict(kijai)
    for name, sub in (("stitching", "retarget_shoulder"), ("lip", "retarget_mouth"), ("eye", "retarget_eye")):
        keys = [t["key"] for t in manifest["stitching_retargeting_module"]["subdicts"][sub]["tensors"]]
        for states in (a, b, c):
            assert sorted(states[name]) == sorted(keys)
            for key in keys:
                assert torch.equal(states[name][key], flat[f"{sub}.module.{key}"])


# --------------------------------------------------------------------------- full-size structure
def _shapes(module):
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def test_fullsize_motion_extractor_layout(manifest):
    with torch.device("meta"):
        m = MotionExtractor(**_config("liveportrait.json")["motion_extractor_params"])
    spec = manifest["motion_extractor"]
    assert _shapes(m) == [(t["key"], t["shape"]) for t in spec["tensors"]]
    n = sum(p.numel() for p in m.parameters())
    assert n == spec["num_parameters"] == 28_118_728
    assert not list(m.buffers())


def test_fullsize_stitching_layout(manifest):
    spec = manifest["stitching_retargeting_module"]
    with torch.device("meta"):
        nets = build_networks(_config("liveportrait.json")["stitching_retargeting_module_params"])
    total = 0
    for name, sub in (("stitching", "retarget_shoulder"), ("lip", "retarget_mouth"), ("eye", "retarget_eye")):
        assert _shapes(nets[name]) == [(t["key"], t["shape"]) for t in spec["subdicts"][sub]["tensors"]]
        n = sum(p.numel() for p in nets[name].parameters())
        assert n == spec["subdicts"][sub]["num_parameters"]
        total += n
    assert total == spec["num_parameters"] == 227_263
    # last layer index: stitching/lip mlp.6, eye mlp.10; ReLU between, none after the last Linear
    assert isinstance(nets["eye"].mlp[10], torch.nn.Linear) and len(nets["eye"].mlp) == 11
    assert isinstance(nets["stitching"].mlp[5], torch.nn.ReLU) and len(nets["stitching"].mlp) == 7


def test_tiny_motion_extractor_layout():
    weights = load_file(str(FIX / "weights" / "motion_extractor.safetensors"))
    m = MotionExtractor(num_kp=21, backbone="convnextv2_fixture")
    assert {k: list(v.shape) for k, v in m.state_dict().items()} == {k: list(v.shape) for k, v in weights.items()}


def test_bad_arguments():
    with pytest.raises(ValueError):
        MotionExtractor(num_kp=21, backbone="resnet")
    with pytest.raises(TypeError):
        MotionExtractor(num_kp=21, backbone="convnextv2_tiny", bogus=1)
    assert isinstance(StitchingRetargetingNetwork(4, [3], 2).mlp[-1], torch.nn.Linear)
