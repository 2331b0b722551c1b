"""Numerics that cannot go NaN: every ``steps`` value gives finite motion, and every guarded sqrt /
acos / asin / division stays finite at its rounding edge.

Ditto's DDIM schedule once took ``sqrt(-5.96e-08)`` at 3 steps (both radicands are >= 0 in exact
arithmetic, float32 rounding pushed one below 0) and wrote black frames. Here both samplers are
swept over steps 1..60 end to end on the tiny fixture models, and the schedules over the larger
values the MotionDiT node allows too (1..1000). JoyVASA's node path ignores ``steps`` (it always
runs its checkpoint's 50-step schedule), so its sweep varies the schedule length itself, which is
what a checkpoint with another ``n_diff_steps`` would run.

Run it once per CPU kernel set as well (``ATEN_CPU_CAPABILITY=avx2`` / ``default`` set before
Python starts): rounding differs between the vectorised kernels.
"""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import FIXTURES
from core.liveportrait import kinematics as K
from core.liveportrait.crop import crop_square
from core.motion import ditto
from core.motion.ditto import sampler as DS
from core.motion.joyvasa import generate as joyvasa_generate, load_joyvasa, load_template, to_motion as joyvasa_motion
from core.motion.joyvasa.compose import euler_degrees, rotation_power
from core.motion.joyvasa.model import SCHEDULES, DiffusionSchedule
from core.motion.joyvasa.sampler import step_coefficients
from core.motion.procedural import lip_opening

DITTO_FIX = FIXTURES / "ditto"
JOYVASA_FIX = FIXTURES / "joyvasa"
#: every steps value up to 60, and a spread of the larger ones the MotionDiT node allows (max 1000)
SWEEP = tuple(range(1, 61))
SCHEDULE_STEPS = SWEEP + (100, 250, 500, 999, 1000)
DITTO_HEADS = 4  # the tiny fixture's
FRAMES = 20      # Ditto: one 80-frame window; JoyVASA: one 100-frame window either way

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _finite(x) -> bool:
    return bool(torch.isfinite(torch.as_tensor(x)).all())


# --------------------------------------------------------------------------- Ditto
@pytest.fixture(scope="module")
def ditto_io():
    io = load_file(str(DITTO_FIX / "io.safetensors"))
    return {k: v.float() if v.is_floating_point() else v for k, v in io.items()}


@pytest.fixture(scope="module")
def ditto_weights():
    return load_file(str(DITTO_FIX / "weights.safetensors"))


@pytest.fixture(scope="module")
def alphas(ditto_weights):
    """The official schedule's float32 ``alphas_cumprod`` (what the reference samples with)."""
    return ditto_weights["schedule.alphas_cumprod"]


@pytest.fixture(scope="module")
def lmdm(ditto_weights):
    state = {k: v for k, v in ditto_weights.items() if not k.startswith(("stitch.", "schedule."))}
    m = ditto.LMDM(**ditto.infer_config(state, num_heads=DITTO_HEADS))
    m.load_state_dict(state, strict=True)
    return m.eval()


def _ditto_unclamped(alphas, t, tn):
    """The two DDIM radicands without the clamps (to check the clamps against)."""
    a, a_next = alphas[t], alphas[tn]
    r_sigma = (1 - a / a_next) * (1 - a_next) / (1 - a)
    sigma = r_sigma.clamp_min(0).sqrt()
    return r_sigma, 1 - a_next - sigma ** 2


@pytest.mark.parametrize("steps", SCHEDULE_STEPS)
def test_ditto_schedule_finite_for_every_steps(alphas, lmdm, steps):
    sched = DS.make_schedule(alphas, steps)
    n = sum(tn >= 0 for _, tn in sched.pairs)
    assert sched.steps == steps and n == steps - 1
    for name in ("alpha_next_sqrt", "c", "sigma"):
        v = getattr(sched, name)
        assert v.shape == (n,) and _finite(v), name
        assert bool(((v >= 0) & (v <= 1)).all()), f"{name} leaves [0, 1]: {v}"
    # the step's noise budget: c^2 + sigma^2 = 1 - a_next (up to float32 rounding of values <= 1)
    a_next = torch.stack([alphas[tn] for _, tn in sched.pairs if tn >= 0]) if n else alphas.new_zeros(0)
    assert bool(((sched.c ** 2 + sched.sigma ** 2) <= 1 - a_next + 4 * torch.finfo(torch.float32).eps).all())
    # the eps-from-x0 coefficients the sampler applies at every t of these pairs: finite, and exactly what
    # the model's own noise_from_x0 computes
    ts = torch.tensor([t for t, tn in sched.pairs if tn >= 0], dtype=torch.long)
    for name in ("eps_xt", "eps_x0"):
        v = getattr(sched, name)
        assert v.shape == (n,) and _finite(v) and bool((v > 0).all()), name
    if n:
        eps = lmdm.noise_from_x0(torch.ones(n, 1, 1), ts, torch.ones(n, 1, 1))
        assert _finite(eps)
        assert torch.equal(eps.reshape(n), sched.eps_xt * 1.0 - 1.0 / sched.eps_x0)


def test_ditto_schedule_clamps_only_the_rounding_edge(alphas):
    """3 steps is the case that went NaN on the machine that found it (``1 - a' - sigma^2 = -5.96e-08`` for the pair
    (999, 665)); the clamps give 0 wherever a radicand comes out below 0 and leave every in-range value bit for bit
    as the plain sqrt computes it (the sweep uses this machine's own rounding, whichever way it goes)."""
    for steps in SCHEDULE_STEPS:
        sched = DS.make_schedule(alphas, steps)
        for i, (t, tn) in enumerate(p for p in sched.pairs if p[1] >= 0):
            r_sigma, r_c = _ditto_unclamped(alphas, t, tn)
            for radicand, got in ((r_sigma, sched.sigma[i]), (r_c, sched.c[i])):
                if radicand >= 0:
                    assert torch.equal(got, radicand.sqrt()), (steps, t, tn)
                else:
                    assert float(got) == 0.0, (steps, t, tn)
    # that pair's radicand is at float32's rounding edge: exactly it is a (1 - a')^2 / (a' (1 - a)), far below one
    # ulp of the terms of 1 - a' - sigma^2 (each <= 1), so the float32 value is within 2 ulps of 0, and its sign is
    # how the machine's kernels round (below 0 on an AVX-512 Xeon, above on an AVX2 EPYC): both must stay finite
    assert DS.time_pairs(3)[0] == (999, 665)
    a, a_next = float(alphas[999]), float(alphas[665])
    exact = a * (1 - a_next) ** 2 / (a_next * (1 - a))
    eps = torch.finfo(torch.float32).eps
    assert 0 <= exact < eps / 4 and abs(float(_ditto_unclamped(alphas, 999, 665)[1])) <= 2 * eps
    # and a clamp exercised on every machine: with eta = 2, sigma^2 = 4 r_sigma exceeds 1 - a' for that pair in exact
    # arithmetic, so the second radicand is well below 0: c is 0, not NaN
    wide = DS.make_schedule(alphas, 3, eta=2.0)
    assert _finite(wide.c) and _finite(wide.sigma) and float(wide.c[0]) == 0.0 and float(wide.sigma[0]) > 0


def test_ditto_schedule_degenerate_step_pair():
    """``a_t == a_t'`` (a flat stretch of a schedule): sigma's radicand is exactly 0, no NaN."""
    flat = torch.full((1000,), 0.25)
    sched = DS.make_schedule(flat, 7)
    assert _finite(sched.sigma) and _finite(sched.c) and bool((sched.sigma == 0).all())
    assert torch.allclose(sched.c, torch.full_like(sched.c, 0.75 ** 0.5))


def test_ditto_noise_coefficients_finite_at_every_t(lmdm):
    """``eps = sqrt(1/(1-a_t)) x_t - x0 / sqrt(1/a_t - 1)`` at all 1000 timesteps, the first (a_0 ~ 1)
    and the last (a_999 ~ 2e-9) included."""
    t = torch.arange(1000)
    eps = lmdm.noise_from_x0(torch.ones(1000, 1, 1), t, torch.full((1000, 1, 1), 0.5))
    assert _finite(eps)


@pytest.fixture(scope="module")
def ditto_inputs(ditto_io):
    feats = ditto_io["stream_offline.aud_feat"][:FRAMES]
    cond = ditto_io["stream_offline.cond_extra"][0]
    src = ditto_io["source.kp_cond"][0]
    raw = {k: ditto_io[f"source.x_s_info.{k}"] for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    return feats, cond, src, raw


@pytest.mark.parametrize("steps", SWEEP)
def test_ditto_motion_finite_for_every_steps(lmdm, ditto_inputs, steps):
    feats, cond, src, raw = ditto_inputs
    seq = ditto.generate(lmdm, feats, cond, src, steps=steps, seed=steps)
    assert seq.shape == (FRAMES, 265) and _finite(seq)
    assert float(seq.abs().max()) > 0
    motion = ditto.to_motion(seq, raw)
    for name in ("exp", "pitch", "yaw", "roll", "t", "scale"):
        assert _finite(getattr(motion, name)), name
    assert float(motion.exp.abs().max()) > 0 and float(motion.scale.abs().min()) > 0


# --------------------------------------------------------------------------- JoyVASA
@pytest.mark.parametrize("mode", SCHEDULES)
def test_joyvasa_schedule_finite_for_every_steps(mode):
    for steps in SCHEDULE_STEPS:
        sched = DiffusionSchedule(steps, mode)
        for name in ("betas", "alphas", "alpha_bars", "sigmas_flex", "sigmas_inflex"):
            assert _finite(getattr(sched, name)), (mode, steps, name)
        c0, c1, sigma = step_coefficients(sched, torch.arange(steps, 0, -1))
        for name, v in (("c0", c0), ("c1", c1), ("sigma", sigma)):
            assert v.shape == (steps,) and _finite(v), (mode, steps, name)
            assert bool((v >= 0).all()), (mode, steps, name)
        # the last step (t = 1) lands on x0 exactly: no noise and no x_t left
        assert float(sigma[-1]) == 0 and float(c0[-1]) == 0


def test_joyvasa_step_coefficients_match_per_step_scalars():
    """The vectorised coefficients the sweep checks are the ones the sampler uses, one t at a time."""
    sched = DiffusionSchedule(50, "cosine")
    c0, c1, sigma = step_coefficients(sched, torch.arange(50, 0, -1))
    for i, t in enumerate(range(50, 0, -1)):
        s0, s1, ss = step_coefficients(sched, t)
        assert torch.equal(c0[i], s0) and torch.equal(c1[i], s1) and torch.equal(sigma[i], ss)


@pytest.fixture(scope="module")
def joyvasa(tmp_path_factory):
    state = {k: v for k, v in load_file(str(JOYVASA_FIX / "weights.safetensors")).items()
             if not k.startswith("retarget.")}
    path = tmp_path_factory.mktemp("numerics") / "joyvasa_tiny.safetensors"
    save_file(state, str(path))
    return load_joyvasa(path, config=json.loads((JOYVASA_FIX / "config.json").read_text()))


@pytest.fixture(scope="module")
def joyvasa_inputs():
    io = load_file(str(JOYVASA_FIX / "io.safetensors"))
    feats = io["stream.constant_row.window_audio_feat"][0, 0].float()          # one window (100, d)
    template = load_template({k: v for k, v in io.items() if k.startswith("template.")})
    raw = {k: io[f"source.raw.{k}"] for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    return feats, template, K.kp_info(raw)


@pytest.mark.parametrize("steps", SWEEP)
def test_joyvasa_motion_finite_for_every_steps(joyvasa, joyvasa_inputs, steps):
    feats, template, source = joyvasa_inputs
    released = joyvasa.diffusion_sched
    joyvasa.diffusion_sched = DiffusionSchedule(steps, "cosine")
    try:
        gen = joyvasa_generate(joyvasa, (feats, 100 - FRAMES), template, seed=steps)
    finally:
        joyvasa.diffusion_sched = released
    assert gen["exp"].shape == (FRAMES, 21, 3)
    for name in ("exp", "scale", "t", "pitch", "yaw", "roll", "R"):
        assert _finite(gen[name]), name
    motion = joyvasa_motion(gen, source)
    for name in ("exp", "pitch", "yaw", "roll", "t", "scale", "R"):
        assert _finite(getattr(motion, name)), name
    assert float(motion.exp.abs().max()) > 0 and float(motion.scale.abs().min()) > 0


# --------------------------------------------------------------------------- guarded angle maths
def test_rotation_power_trace_rounding_above_3():
    """A rotation whose trace rounds above 3 (cos > 1 before the clamp) is the identity's power."""
    r = torch.eye(3)[None] * (1 + torch.finfo(torch.float32).eps)
    assert float(r.diagonal(dim1=-2, dim2=-1).sum()) > 3
    for p in (0.0, 0.5, 1.0, 2.0):
        out = rotation_power(r, p)
        assert _finite(out) and torch.equal(out, torch.eye(3)[None]), p


def test_rotation_power_trace_rounding_below_minus_1():
    """180 degrees about x with the trace rounded below -1 (cos < -1 before the clamp): half is 90 degrees."""
    e = torch.finfo(torch.float32).eps
    r = torch.diag(torch.tensor([1.0, -1.0 - e, -1.0 - e]))[None]
    assert float(r.diagonal(dim1=-2, dim2=-1).sum()) < -1
    half = rotation_power(r, 0.5)
    assert _finite(half)
    torch.testing.assert_close(half @ half, torch.diag(torch.tensor([1.0, -1.0, -1.0]))[None], atol=1e-6, rtol=0)
    torch.testing.assert_close(half[0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)


def test_euler_degrees_at_gimbal_rounding_edge():
    """``-R[0, 2]`` a hair beyond 1 (yaw 90 degrees, rounded): asin's clamp gives 90, not NaN."""
    r = K.rotation_matrix(torch.tensor([0.0]), torch.tensor([90.0]), torch.tensor([0.0]))
    r[0, 0, 2] = -(1 + torch.finfo(torch.float32).eps)
    pitch, yaw, roll = euler_degrees(r)
    assert _finite(pitch) and _finite(yaw) and _finite(roll)
    assert float(yaw) == pytest.approx(90.0, abs=1e-4)


def test_crop_square_degenerate_and_vertical_faces():
    """Eye and lip centres that coincide (a zero-length axis) or are exactly vertical (``acos(1)``)."""
    same = np.zeros((68, 2))
    centre, side, angle = crop_square(same)
    assert np.isfinite(centre).all() and np.isfinite(side) and angle == 0.0
    upright = np.zeros((68, 2))
    upright[60:68] = [0.0, 1e6]  # the lips exactly below the eyes: ux = (1, 0), acos at its edge
    centre, side, angle = crop_square(upright)
    assert np.isfinite(centre).all() and np.isfinite(side) and angle == 0.0


# --------------------------------------------------------------------------- guarded divisions
def test_open_ratios_with_zero_length_reference():
    """Coincident eye corners / mouth corners: the official eps keeps the ratios finite (0 here)."""
    lmk = torch.zeros(203, 2)
    assert torch.equal(K.eye_ratio(lmk), torch.zeros(2)) and torch.equal(K.lip_ratio(lmk), torch.zeros(1))
    eye_open, eye_ball = ditto.eye_features(torch.zeros(1, 478, 3))
    assert torch.equal(eye_open, torch.zeros(1, 2)) and torch.equal(eye_ball, torch.zeros(1, 6))


def test_lip_opening_log_of_silence():
    """The peak hold works in the log domain: silent frames (log 0 = -inf) give 0, never NaN."""
    for env in (np.zeros(50), np.r_[np.zeros(10), np.ones(5), np.zeros(40)], np.r_[np.ones(3), np.zeros(3)]):
        out = lip_opening(env)
        assert out.shape == env.shape and np.isfinite(out).all() and (out >= 0).all() and (out <= 1).all()
    assert lip_opening(np.r_[np.zeros(10), np.ones(5), np.zeros(40)])[12] > 0
