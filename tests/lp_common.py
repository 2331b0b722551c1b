"""Shared data of the LivePortrait tests: the reference I/O, the five pipeline variants of the
fixture (as DriveOptions) and the fixture's 4-frame driving motion."""
from safetensors.torch import load_file

from conftest import FIXTURES
from core.liveportrait.motion import DriveOptions, Motion

IO = load_file(str(FIXTURES / "liveportrait" / "io.safetensors"))
VARIANTS = {
    "rel_pose_stitch": DriveOptions(),
    "rel_expr_stitch_lipnorm_mult": DriveOptions(expression_friendly=True, normalize_lip=True, multiplier=1.25),
    "abs_nostitch": DriveOptions(relative=False, stitching=False),
    "rel_retarget_eye_lip_stitch": DriveOptions(eye_retargeting=True, lip_retargeting=True),
    "rel_region_lip_stitch": DriveOptions(region="lip"),
}


def reference_motion() -> Motion:
    """The driving motion template the reference pipeline rendered (``seq.*``)."""
    return Motion(exp=IO["seq.exp"], pitch=IO["seq.pitch"], yaw=IO["seq.yaw"], roll=IO["seq.roll"], t=IO["seq.t"],
                  scale=IO["seq.scale"], R=IO["seq.R"], eyes=IO["seq.c_eyes"], lip=IO["seq.c_lip"])
