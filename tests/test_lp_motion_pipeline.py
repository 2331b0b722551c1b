"""The shared motion type and the official driving-keypoint rules: all 5 pipeline variants of
tiny/io.safetensors (x_d per frame, stitching inputs), lip normalisation and retargeting."""
import pytest
import torch

import tolerance as tol
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


def kp_magnitude(src):
    return tol.lp_kp_magnitude(src.kp, src.exp, src.scale, src.t)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_driving_keypoints_of_every_variant(variant, nets):
    src = source()
    tol.close_elementwise(src.x_s, IO[f"pipe.{variant}.x_s"], ops=tol.LP_KP_OPS, magnitude=kp_magnitude(src))
    x_d, stitch_in = driving_keypoints(src, motion(), VARIANTS[variant], nets["stitching"], nets["lip"], nets["eye"],
                                       return_stitch_input=True)
    tol.close_network(x_d, IO[f"pipe.{variant}.x_d"], tol.LP_DRIVE, magnitude=kp_magnitude(src))
    if f"pipe.{variant}.stitch_in_x_d" in IO:
        tol.close_network(stitch_in, IO[f"pipe.{variant}.stitch_in_x_d"], tol.LP_DRIVE, magnitude=kp_magnitude(src))


def test_retargeting_inputs_and_lip_normalisation(nets):
    src = source()
    ratio = torch.cat([src.lip.reshape(1, 1), torch.zeros(1, 1)], 1)
    assert torch.allclose(ratio, IO["pipe.rel_expr_stitch_lipnorm_mult.lip_ratio"])
    delta = K.retarget_lip(nets["lip"], src.x_s, ratio)
    tol.close_network(delta, IO["pipe.rel_expr_stitch_lipnorm_mult.lip_delta"], tol.LP_STITCH)
    eyes = torch.cat([src.eyes.expand(4, 2), IO["seq.c_eyes"][:, :1]], 1)
    tol.close_elementwise(eyes, IO["pipe.rel_retarget_eye_lip_stitch.eye_ratio"], ops=2 * 5 + 2)  # landmark ratios


def test_rotation_from_angles_equals_the_stored_template_rotation():
    m = motion()
    computed = K.rotation_matrix(m.pitch, m.yaw, m.roll)
    tol.close_elementwise(computed, IO["seq.R"], ops=tol.LP_ROT_OPS, magnitude=1)
    m.R = None
    x_d = driving_keypoints(source(), m, DriveOptions(stitching=False))
    m2 = motion()
    # the relative rotation R_d R_d0^T R_s from angles instead of the stored R: two rotations built, two more
    # 3-term products, then the keypoint transform
    tol.close_elementwise(x_d, driving_keypoints(source(), m2, DriveOptions(stitching=False)),
                          ops=2 * tol.LP_ROT_OPS + 2 * 3 + tol.LP_KP_OPS, magnitude=kp_magnitude(source()))


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
        tol.close_elementwise(x_d, expect, ops=tol.LP_KP_OPS, magnitude=kp_magnitude(src))
    pose_only = driving_keypoints(src, m, DriveOptions(region="pose", stitching=False))
    want = K.transform_keypoint(src.kp.expand(len(m), -1, -1), exp=src.exp.expand(len(m), -1, -1),
                                t=m.t * torch.tensor([1.0, 1.0, 0.0]), scale=src.scale.reshape(1, 1).expand(len(m), 1),
                                rot=m.rotation())
    tol.close_elementwise(pose_only, want, ops=tol.LP_KP_OPS, magnitude=kp_magnitude(src))
    assert not torch.allclose(driving_keypoints(src, motion(), DriveOptions(stitching=False)), expect, atol=1e-4)
    m.save(tmp_path / "m.safetensors")
    assert Motion.load(tmp_path / "m.safetensors").composed and m.frames(1, 3).composed
    motion().save(tmp_path / "plain.safetensors")
    assert not Motion.load(tmp_path / "plain.safetensors").composed
