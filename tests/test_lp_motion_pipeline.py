"""The shared motion type and the official driving-keypoint rules: all 5 pipeline variants of
tiny/io.safetensors (x_d per frame, stitching inputs), lip normalisation and retargeting."""
import pytest
import torch

from conftest import FIXTURES
from core.errors import InputError
from core.liveportrait import kinematics as K
from core.liveportrait import load as L
from core.liveportrait.motion import DriveOptions, Motion, SourceMotion, driving_keypoints, lip_array
from lp_common import IO, VARIANTS, reference_motion


@pytest.fixture(scope="module")
def nets():
    return L.load_retargeting(FIXTURES / "liveportrait" / "weights" / "stitching_retargeting_module.safetensors",
                              L.preset("tiny"))


def source():
    lmk = IO["input.source_lmk203"]
    return SourceMotion(kp=IO["input.pipeline_src_kp"], exp=IO["input.pipeline_src_exp"],
                        pitch=IO["input.pipeline_src_pitch"], yaw=IO["input.pipeline_src_yaw"],
                        roll=IO["input.pipeline_src_roll"], t=IO["input.pipeline_src_t"],
                        scale=IO["input.pipeline_src_scale"], eyes=K.eye_ratio(lmk)[None], lip=K.lip_ratio(lmk)[None])


motion = reference_motion


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_driving_keypoints_of_every_variant(variant, nets):
    src = source()
    assert (src.x_s - IO[f"pipe.{variant}.x_s"]).abs().max() < 1e-6
    x_d, stitch_in = driving_keypoints(src, motion(), VARIANTS[variant], nets["stitching"], nets["lip"], nets["eye"],
                                       return_stitch_input=True)
    assert (x_d - IO[f"pipe.{variant}.x_d"]).abs().max() < 1e-5
    if f"pipe.{variant}.stitch_in_x_d" in IO:
        assert (stitch_in - IO[f"pipe.{variant}.stitch_in_x_d"]).abs().max() < 1e-5


def test_retargeting_inputs_and_lip_normalisation(nets):
    src = source()
    ratio = torch.cat([src.lip.reshape(1, 1), torch.zeros(1, 1)], 1)
    assert torch.allclose(ratio, IO["pipe.rel_expr_stitch_lipnorm_mult.lip_ratio"])
    delta = K.retarget_lip(nets["lip"], src.x_s, ratio)
    assert (delta - IO["pipe.rel_expr_stitch_lipnorm_mult.lip_delta"]).abs().max() < 1e-6
    eyes = torch.cat([src.eyes.expand(4, 2), IO["seq.c_eyes"][:, :1]], 1)
    assert torch.allclose(eyes, IO["pipe.rel_retarget_eye_lip_stitch.eye_ratio"], atol=1e-6)


def test_rotation_from_angles_equals_the_stored_template_rotation():
    m = motion()
    computed = K.rotation_matrix(m.pitch, m.yaw, m.roll)
    assert (computed - IO["seq.R"]).abs().max() < 1e-5
    m.R = None
    x_d = driving_keypoints(source(), m, DriveOptions(stitching=False))
    m2 = motion()
    assert (x_d - driving_keypoints(source(), m2, DriveOptions(stitching=False))).abs().max() < 1e-5


def test_motion_type_round_trip_slicing_and_errors(tmp_path, nets):
    m = motion()
    m.save(tmp_path / "m.safetensors")
    back = Motion.load(tmp_path / "m.safetensors")
    for name in ("exp", "pitch", "yaw", "roll", "t", "scale", "R", "eyes", "lip"):
        assert torch.equal(getattr(back, name), getattr(m, name)), name
    assert back.fps == 25.0 and len(back) == 4 and len(m.frames(1, 3)) == 2
    assert lip_array().shape == (1, 21, 3)
    with pytest.raises(InputError, match="region"):
        driving_keypoints(source(), m, DriveOptions(region="nose"), nets["stitching"])
    with pytest.raises(InputError, match="stitching_retargeting_module"):
        driving_keypoints(source(), m, DriveOptions(), None)
    no_ratio = motion()
    no_ratio.eyes = None
    with pytest.raises(InputError, match="eye open ratios"):
        driving_keypoints(source(), no_ratio, DriveOptions(eye_retargeting=True), nets["stitching"], nets["lip"], nets["eye"])


def test_composed_motion_is_used_as_is(nets, tmp_path):
    """A motion already combined with the source (MotionDiT) drives x_d = s (kp R + exp) + t (t_z = 0), whatever
    the relative setting; regions still pick what follows; the flag survives save/load and frames()."""
    src, m = source(), motion()
    m.composed = True
    expect = K.transform_keypoint(src.kp.expand(len(m), -1, -1), exp=m.exp, t=m.t * torch.tensor([1.0, 1.0, 0.0]),
                                  scale=m.scale[:, None], rot=m.rotation())
    for relative in (True, False):
        x_d = driving_keypoints(src, m, DriveOptions(relative=relative, stitching=False))
        assert (x_d - expect).abs().max() < 1e-6
    pose_only = driving_keypoints(src, m, DriveOptions(region="pose", stitching=False))
    want = K.transform_keypoint(src.kp.expand(len(m), -1, -1), exp=src.exp.expand(len(m), -1, -1),
                                t=m.t * torch.tensor([1.0, 1.0, 0.0]), scale=src.scale.reshape(1, 1).expand(len(m), 1),
                                rot=m.rotation())
    assert (pose_only - want).abs().max() < 1e-6
    assert not torch.allclose(driving_keypoints(src, motion(), DriveOptions(stitching=False)), expect, atol=1e-4)
    m.save(tmp_path / "m.safetensors")
    assert Motion.load(tmp_path / "m.safetensors").composed and m.frames(1, 3).composed
    motion().save(tmp_path / "plain.safetensors")
    assert not Motion.load(tmp_path / "plain.safetensors").composed
