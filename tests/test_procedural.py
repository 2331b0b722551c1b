"""Procedural motion (core.motion.procedural) and the renderer's retargeting of composed motions:
energy -> lip ratio, blinks, head motion, determinism, input errors, and x_d through the tiny
retargeting MLPs."""
import math

import numpy as np
import pytest
import torch

import tolerance as tol
from conftest import FIXTURES
from core.audio import Audio
from core.errors import InputError
from core.liveportrait import kinematics as K
from core.liveportrait import load as L
from core.liveportrait.motion import (DEFAULT_SOURCE_EYES, DEFAULT_SOURCE_LIP, EYE_KPS, LIP_KPS, DriveOptions,
                                      SourceMotion, driving_keypoints)
from core.motion import procedural as P
from core.motion.procedural import procedural_motion
from lp_common import IO, reference_motion

FPS = 25.0
#: the composed retargeting: eye and lip MLP deltas added to the keypoints
RETARGET = tol.LP_EYE.then(tol.LP_STITCH)


@pytest.fixture(scope="module")
def nets():
    return L.load_retargeting(FIXTURES / "liveportrait" / "weights" / "stitching_retargeting_module.safetensors",
                              L.preset("tiny"))


def source(eyes=None, lip=None):
    return SourceMotion(kp=IO["input.pipeline_src_kp"], exp=IO["input.pipeline_src_exp"],
                        pitch=IO["input.pipeline_src_pitch"], yaw=IO["input.pipeline_src_yaw"],
                        roll=IO["input.pipeline_src_roll"], t=IO["input.pipeline_src_t"],
                        scale=IO["input.pipeline_src_scale"], eyes=eyes, lip=lip)


def speech(seconds=60.0, seed=0):
    """A speech-like envelope: 4 Hz syllables in phrases separated by pauses."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * FPS)
    tt = torch.arange(n) / FPS
    syllables = torch.sin(2 * math.pi * 4.0 * tt).clamp(min=0)
    phrases = (torch.sin(2 * math.pi * 0.2 * tt) > -0.3).float()
    return syllables * phrases * (0.6 + 0.4 * torch.rand(n, generator=g))


def staircase():
    """1 s of silence, then 10 plateaus of 1 s (energy 0.1 .. 1.0), then 1 s of silence."""
    levels = torch.linspace(0.1, 1.0, 10).repeat_interleave(int(FPS))
    return torch.cat([torch.zeros(int(FPS)), levels, torch.zeros(int(FPS))])


# --------------------------------------------------------------------------- lip
def test_silence_closes_the_mouth_and_energy_opens_it_monotonically():
    m = procedural_motion(staircase(), source(), lip_strength=1.0)
    cast = tol.elementwise_bound(1, P.LIP_OPEN)  # float64 maths, one rounding to float32
    lip = m.lip[:, 0]
    assert m.lip.shape == (len(staircase()), 1) and m.composed
    assert torch.all(lip[:20] == 0) and torch.all(lip[-20:] == 0)          # silence = exactly closed
    plateaus = torch.stack([lip[int(FPS) * (i + 1) + 12] for i in range(10)])  # the middle of each plateau
    assert plateaus[0] == 0                                                   # under the noise gate
    assert torch.all(plateaus[2:] > plateaus[1:-1]), plateaus               # monotone in energy
    assert 0.4 < float(plateaus[-1]) <= P.LIP_OPEN + cast < P.LIP_RATIO_LIMIT  # no saturation at strength 1
    assert float(lip.max()) <= P.LIP_OPEN + cast
    half = procedural_motion(staircase(), source(), lip_strength=0.5)
    tol.close_elementwise(half.lip, 0.5 * m.lip, ops=1)  # float64 maths, one rounding to float32
    loud = procedural_motion(staircase(), source(), lip_strength=3.0)
    assert float(loud.lip.max()) == pytest.approx(P.LIP_RATIO_LIMIT)         # the clamp holds
    assert torch.all(procedural_motion(torch.zeros(50), source()).lip == 0)


def test_loud_and_quiet_recordings_give_the_same_lips_and_a_pop_does_not_mute_speech():
    env = speech(20.0)
    base = procedural_motion(env, source()).lip
    # the level is divided out in float64; each side then rounds once to float32
    tol.close_elementwise(procedural_motion(env * 0.01, source()).lip, base, ops=1)
    tol.close_elementwise(procedural_motion(env * 40.0, source()).lip, base, ops=1)
    popped = env.clone()
    popped[100] = 50.0  # one click far louder than the speech
    lip = procedural_motion(popped, source()).lip[:, 0]
    far = torch.ones(len(env), dtype=torch.bool)
    far[95:110] = False
    # one more loud frame moves the reference level by ~2 % (and a frame may cross the release cut-off)
    assert torch.allclose(lip[far], base[far, 0], rtol=0.05, atol=P.LIP_OPEN * P.LIP_CUTOFF + 1e-4)
    # a one-frame click: half open at most (float64 maths, one rounding to float32)
    assert float(base[100, 0]) <= float(lip[100]) <= P.LIP_OPEN / 2 + tol.elementwise_bound(1, P.LIP_OPEN / 2)


def test_attack_release_smoothing_stops_flicker_and_closes_after_speech():
    env = torch.cat([torch.tensor([1.0, 0.0]).repeat(25), torch.zeros(50)])  # on/off every frame, then silence
    lip = procedural_motion(env, source()).lip[:, 0]
    talking = lip[2:48]
    assert float(talking.min()) > 0.5 * float(talking.max())   # the mouth does not snap shut between frames
    assert torch.all(lip[50 + int(0.3 * FPS):] == 0)            # closed within 0.3 s of silence
    assert torch.all(lip[50:55].diff() <= 0)                    # and it closes monotonically
    step = torch.cat([torch.zeros(25), torch.ones(25)])
    lip = procedural_motion(step, source()).lip[:, 0]
    assert torch.all(lip[:24] == 0) and 0 < float(lip[24]) < float(lip[25]) < float(lip[26])  # soft onset


# --------------------------------------------------------------------------- eyes
def test_blinks_over_a_minute():
    lo, hi = 2.5, 6.0
    for seed in range(3):
        m = procedural_motion(speech(60.0), source(), seed=seed, blink_interval=(lo, hi))
        left = m.eyes[:, 0].numpy()
        assert np.allclose(m.eyes[:, 0], m.eyes[:, 1])
        peaks = np.flatnonzero(left == P.EYE_CLOSED)                 # each blink has one fully closed frame
        assert 60.0 / hi - 1 <= len(peaks) <= 60.0 / lo + 1, len(peaks)
        gaps = np.diff(peaks) / FPS
        assert gaps.min() >= lo - 1e-9 and gaps.max() <= hi + 1e-9, gaps
        closing = left < DEFAULT_SOURCE_EYES
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], closing.astype(int), [0]]))))[::2]
        assert len(runs) == len(peaks) and runs.max() <= 0.25 * FPS + 1    # short blinks
        assert np.all(left[~closing] == np.float32(DEFAULT_SOURCE_EYES))    # back to the open value
        assert left[0] == np.float32(DEFAULT_SOURCE_EYES)
        assert left[peaks[0] - 1] > left[peaks[0]] < left[peaks[0] + 1]
    known = procedural_motion(speech(10.0), source(eyes=torch.tensor([[0.3, 0.28]])), seed=0)
    assert torch.equal(known.eyes[0], torch.tensor([0.3, 0.28]))
    none = procedural_motion(speech(30.0), source(), blink_interval=None)
    assert torch.all(none.eyes == DEFAULT_SOURCE_EYES)


# --------------------------------------------------------------------------- head
def test_head_motion_starts_at_the_source_and_is_small_and_smooth():
    src = source()
    m = procedural_motion(speech(60.0), src, seed=3)
    for axis, bound in (("pitch", 2 * P.HEAD_DEGREES["pitch"] + P.NOD_DEGREES), ("yaw", 2 * P.HEAD_DEGREES["yaw"]),
                        ("roll", 2 * P.HEAD_DEGREES["roll"])):
        value, base = getattr(m, axis), float(getattr(src, axis))
        tol.close_elementwise(value[0], torch.tensor(base), ops=1, what=axis)  # base + a zero offset
        offset = value - base
        # value = base + offset rounded to float32, then the subtraction: two roundings of |base| + bound
        assert float(offset.abs().max()) <= bound + tol.elementwise_bound(2, abs(base) + bound) and bound <= 5.0
        assert float(offset.std()) > 0.1                            # it does move
        assert float(value.diff().abs().max()) < 0.3                # degrees per frame at 25 fps
    drift = 2 * P.T_DRIFT + tol.elementwise_bound(2, float(src.t.abs().max()) + 2 * P.T_DRIFT)
    assert torch.allclose(m.t[0], src.t[0]) and float((m.t - src.t).abs().max()) <= drift
    assert torch.all(m.scale == float(src.scale)) and torch.equal(m.exp, src.exp.expand(len(m), -1, -1))
    still = procedural_motion(speech(10.0), src, head_strength=0.0)
    for axis in ("pitch", "yaw", "roll"):
        assert torch.all(getattr(still, axis) == getattr(still, axis)[0])


def test_speech_nods_the_pitch():
    src = source()
    a = procedural_motion(torch.zeros(200), src, seed=1).pitch
    b = procedural_motion(torch.cat([torch.zeros(100), torch.ones(100)]), src, seed=1).pitch
    tol.close_elementwise(a[:80], b[:80], ops=1)  # the nod is causal: before the speech, the same values
    assert float((b[150:] - a[150:]).mean()) == pytest.approx(P.NOD_DEGREES, rel=0.05)


# --------------------------------------------------------------------------- determinism, inputs
def test_seeded_determinism_length_and_audio_input():
    env = speech(30.0)
    a, b, c = (procedural_motion(env, source(), seed=s) for s in (7, 7, 8))
    for name in ("pitch", "yaw", "roll", "t", "eyes", "lip", "exp"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.yaw, c.yaw) and not torch.equal(a.eyes, c.eyes)
    assert torch.equal(a.lip, c.lip)                                  # the mouth follows the audio only
    assert len(a) == len(env) and a.fps == FPS
    assert len(procedural_motion(torch.ones(1), source())) == 1
    sr = 16000
    tt = torch.arange(2 * sr) / sr
    wave = 0.3 * torch.sin(2 * math.pi * 220 * tt) * (tt >= 1.0)      # 1 s of silence, 1 s of tone
    m = procedural_motion(Audio(wave[None], sr), source(), fps=FPS)
    assert len(m) == 50 and torch.all(m.lip[:20] == 0) and torch.all(m.lip[30:] > 0.3)
    dict_in = procedural_motion({"waveform": wave[None, None], "sample_rate": sr}, source(), fps=FPS)
    assert torch.equal(dict_in.lip, m.lip)
    long = procedural_motion(torch.rand(int(FPS * 1800)), source())    # 30 min
    assert len(long) == 45000 and torch.isfinite(long.pitch).all()


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(0), "empty"),
    (torch.tensor([0.1, float("nan"), 0.3]), "NaN"),
    (torch.tensor([0.1, float("inf")]), "NaN or infinite"),
    (torch.zeros(3, 4), "one value per video frame"),
])
def test_bad_envelopes_raise_input_errors(bad, match):
    with pytest.raises(InputError, match=match):
        procedural_motion(bad, source())


def test_bad_settings_raise_input_errors():
    env = torch.ones(10)
    with pytest.raises(InputError, match="fps"):
        procedural_motion(env, source(), fps=0)
    with pytest.raises(InputError, match="lip_strength"):
        procedural_motion(env, source(), lip_strength=-1)
    with pytest.raises(InputError, match="blink_interval"):
        procedural_motion(env, source(), blink_interval=(6.0, 2.0))
    with pytest.raises(InputError, match="empty"):
        procedural_motion(Audio(torch.zeros(1, 0), 16000), source())


# --------------------------------------------------------------------------- renderer
def test_composed_retargeting_adds_exactly_the_retargeting_deltas(nets):
    src = source()
    m = procedural_motion(staircase(), src, seed=2)
    plain = driving_keypoints(src, m, DriveOptions(stitching=False))
    on = DriveOptions(stitching=False, lip_retargeting=True, eye_retargeting=True)
    x_d = driving_keypoints(src, m, on, nets["stitching"], nets["lip"], nets["eye"])
    n = len(m)
    with torch.inference_mode():
        lip_in = torch.cat([torch.full((n, 1), DEFAULT_SOURCE_LIP), m.lip], 1)
        lip_delta = K.retarget_lip(nets["lip"], src.x_s, lip_in) - K.retarget_lip(nets["lip"], src.x_s,
                                                                                 torch.zeros(1, 2))
        eye_in = torch.cat([torch.full((n, 2), DEFAULT_SOURCE_EYES), m.eyes[:, :1]], 1)
        eye_delta = K.retarget_eye(nets["eye"], src.x_s, eye_in) - K.retarget_eye(
            nets["eye"], src.x_s, torch.full((1, 3), DEFAULT_SOURCE_EYES))
    # the deltas come from the MLPs at other batch sizes, added in another order
    tol.close_network(x_d, plain + lip_delta + eye_delta, RETARGET)
    # silent, open-eyed frames keep the composed keypoints (head motion included); speech moves the lips
    lip, eyes = m.lip[:, 0], m.eyes[:, 0]
    rest = (lip == 0) & (eyes == DEFAULT_SOURCE_EYES)
    assert rest.sum() > 20
    tol.close_network(x_d[rest], plain[rest], RETARGET)
    lip_move = (x_d - plain)[:, list(LIP_KPS)].abs().amax(dim=(1, 2))
    talking = (lip > 0) & (eyes == DEFAULT_SOURCE_EYES)
    assert float(lip_move[talking].min()) > 1e-5
    loud, soft = int(torch.argmax(lip)), int(torch.nonzero(lip > 0)[0])
    assert float(lip_move[loud]) > float(lip_move[soft])
    blink = int(torch.nonzero(eyes == 0)[0])
    eye_move = (x_d - plain)[blink, list(EYE_KPS)].abs().max()
    assert float(eye_move) > 1e-5
    # stitching runs after the deltas; the head motion survives (x_d is not rebuilt from x_s)
    stitched, stitch_in = driving_keypoints(src, m, DriveOptions(lip_retargeting=True, eye_retargeting=True),
                                            nets["stitching"], nets["lip"], nets["eye"], return_stitch_input=True)
    tol.close_network(stitch_in, x_d, RETARGET)
    tol.close_network(stitched, K.stitching(nets["stitching"], src.x_s, x_d), RETARGET.then(tol.LP_STITCH))
    assert float((x_d[-1] - src.x_s[0]).abs().max()) > 1e-3


def test_composed_retargeting_uses_known_source_ratios_regions_and_leaves_official_rules(nets):
    src = source(eyes=torch.tensor([[0.3, 0.32]]), lip=torch.tensor([[0.1]]))
    m = procedural_motion(staircase(), src, seed=2)
    plain = driving_keypoints(src, m, DriveOptions(stitching=False))
    x_d = driving_keypoints(src, m, DriveOptions(stitching=False, lip_retargeting=True), None, nets["lip"])
    with torch.inference_mode():
        want = K.retarget_lip(nets["lip"], src.x_s, torch.cat([torch.full((len(m), 1), 0.1), m.lip], 1)) \
            - K.retarget_lip(nets["lip"], src.x_s, torch.tensor([[0.1, 0.1]]))
    tol.close_network(x_d - plain, want, tol.LP_STITCH, magnitude=float(x_d.abs().max()))
    # region pose: the mouth and the eyes are not retargeted
    pose_plain = driving_keypoints(src, m, DriveOptions(region="pose", stitching=False))
    pose_rt = driving_keypoints(src, m, DriveOptions(region="pose", stitching=False, lip_retargeting=True,
                                                     eye_retargeting=True), None, nets["lip"], nets["eye"])
    assert torch.equal(pose_plain, pose_rt)
    # a composed motion without ratios is left as is; missing nets are still reported
    bare = procedural_motion(staircase(), src)
    bare.lip = bare.eyes = None
    assert torch.equal(driving_keypoints(src, bare, DriveOptions(stitching=False, lip_retargeting=True)),
                       driving_keypoints(src, bare, DriveOptions(stitching=False)))
    with pytest.raises(InputError, match="stitching_retargeting_module"):
        driving_keypoints(src, m, DriveOptions(stitching=False, lip_retargeting=True))
    # non-composed motions: the official rule, which still needs the source's ratios
    with pytest.raises(InputError, match="open ratio"):
        driving_keypoints(source(), reference_motion(), DriveOptions(eye_retargeting=True), nets["stitching"],
                          nets["lip"], nets["eye"])
