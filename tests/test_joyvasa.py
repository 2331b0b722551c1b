"""JoyVASA (audio -> LivePortrait motion) vs the official code.

Tiny parity fixture (tests/fixtures/joyvasa, see its README): seeded tiny weights under the
official key names and outputs of the official implementation: audio encoder steps, the
denoiser in both positional-encoding modes, the schedule, single-window sampling, the two-window
stream (draw order, context, pad drop, de-normalisation + EMA) and the keypoints handed to the
warping module by the official CLI and Gradio settings. The released checkpoint is checked
structurally (every key and shape, parameter count) without weights.
"""
import argparse
import json
import math
import pathlib
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tolerance as tol
from conftest import FIXTURES
from core.errors import Cancelled, CheckpointError, InputError
from core.host import HOST
from core.liveportrait import kinematics as K
from core.liveportrait.motion import DriveOptions, SourceMotion, driving_keypoints
from core.liveportrait.stitching import StitchingRetargetingNetwork
from core.motion.joyvasa import (PE_MODES, audio_features, drive_options, generate, generate_normalized,
                                 load_joyvasa, load_template, plan_windows, to_motion)
from core.audio_features.joyvasa import padded_audio
from core.motion.joyvasa.compose import euler_degrees, rotation_power
from core.motion.joyvasa.load import infer_config, map_weight_norm, prepare_state
from core.motion.joyvasa.model import JoyVASA, DiffusionSchedule, alignment_mask, make_config, pad_audio
from core.motion.joyvasa.sampler import guided_denoiser, make_schedule, sample
from core.motion.joyvasa.template import LAYOUT

FIX = FIXTURES / "joyvasa"
POSE = ("exp", "scale", "t", "pitch", "yaw", "roll", "R")
CFG_SCALE = 2.8
#: the fixture's stream: 2 windows of the 50-step sampler (two passes per step), each window's audio encoded
STREAM = tol.joyvasa_sampler(50, windows=2)
#: the HuBERT feature extractor's first conv and its group norm (a mean over all 12815 frames of the window)
CNN = tol.JOYVASA_GROUP_NORM.then(tol.Net("JoyVASA HuBERT convs 1-6 (32 ch x 3 taps)", 6, 96))
#: the denoiser's input tokens: feature projection (73 in), positional table, step MLP (32 in)
TOKENS = tol.Net("JoyVASA token embedding", 3, 73)
#: the source / generated motion -> degrees (66-bin expectations), rotation, keypoints (and the tiny
#: fixture's retargeting MLPs); the angles err on the 195-degree scale (3.4 rad) and move kp @ R by as much
COMPOSE = tol.Net("JoyVASA motion -> 66-bin expectations, rotation, keypoint transform", 3, tol.DEGREE_BINS)


def pose_magnitude(template, motion, key):
    """The size of the terms of the de-normalisation ``m * (max - min) + min`` (``m * std + mean`` for exp)
    for normalised ``motion``: the sampler's error on ``m`` arrives scaled by the template's range. The
    rotation's entries move by the angles' error in radians."""
    if key == "R":
        return math.radians(max(pose_magnitude(template, motion, k) for k in ("pitch", "yaw", "roll")))
    a, b = LAYOUT[key]
    m = float(torch.as_tensor(motion).reshape(-1, motion.shape[-1])[:, a:b].abs().max())
    if key == "exp":
        return m * float(template["std_exp"].abs().max()) + float(template["mean_exp"].abs().max())
    lo, hi = template[f"min_{key}"], template[f"max_{key}"]
    return m * float((hi - lo).abs().max()) + float(lo.abs().max())


def source_kp_magnitude(raw):
    return math.radians(tol.DEGREE_TERMS) * tol.lp_kp_magnitude(raw["kp"], raw["exp"], raw["scale"], raw["t"])


# The fixtures were made with 1 torch thread; at 1 thread this implementation reproduces them (nearly) bit for
# bit. With more threads, reductions reorder: the normalised motion moves by ~1e-6 and angles (x template range
# ~50 degrees) by ~2e-5.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def io():
    return {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(FIX / "io.safetensors")).items()}


@pytest.fixture(scope="module")
def cfg():
    return json.loads((FIX / "config.json").read_text())


@pytest.fixture(scope="module")
def state():
    return {k: v for k, v in load_file(str(FIX / "weights.safetensors")).items() if not k.startswith("retarget.")}


@pytest.fixture(scope="module")
def st_path(tmp_path_factory, state):
    p = tmp_path_factory.mktemp("joyvasa") / "tiny.safetensors"
    save_file(state, str(p))
    return p


@pytest.fixture(scope="module")
def model(st_path, cfg):
    return load_joyvasa(st_path, config=cfg)


@pytest.fixture(scope="module")
def template(io):
    return load_template({k: v for k, v in io.items() if k.startswith("template.")})


@pytest.fixture(scope="module")
def retarget():
    w = load_file(str(FIX / "weights.safetensors"))
    nets = {"stitching": StitchingRetargetingNetwork(126, [128, 128, 64], 65),
            "lip": StitchingRetargetingNetwork(65, [128, 128, 64], 63)}
    for name, net in nets.items():
        p = f"retarget.{name}."
        net.load_state_dict({k[len(p):]: v for k, v in w.items() if k.startswith(p)}, strict=True)
        net.eval()
    return nets


def _fixture_noise(z):
    draws = iter(z)
    return lambda _t: next(draws)


# --------------------------------------------------------------------------- network parity
def test_audio_encoder(model, io):
    with torch.no_grad():
        steps = model.encode_audio(io["audio_enc.audio"], return_all=True)
        cnn = model.audio_encoder.feature_extractor(steps["padded"])
    assert steps["padded"].shape == (1, 64080)
    assert torch.equal(steps["padded"], io["audio_enc.padded"])
    tol.close_network(cnn, io["audio_enc.cnn_features"], CNN)
    for key in ("last_hidden_state", "interp_25fps", "audio_feat"):
        tol.close_network(steps[key], io[f"audio_enc.{key}"], tol.JOYVASA_AUDIO, what=key)
    h = steps["last_hidden_state"]
    # linear resampling = pair mean: a sum and a halving
    tol.close_elementwise(steps["interp_25fps"], (h[:, 0::2] + h[:, 1::2]) / 2, ops=2)


def test_pad_audio_general_lengths():
    x = torch.arange(1000, dtype=torch.float32)[None]
    y = pad_audio(x)                               # side 20: two reflect pads of 10
    assert y.shape[1] == 1040 and y[0, 20] == 0 and y[0, 0] == 0 and y[0, 10] == 10 and y[0, 19] == 1
    x = torch.arange(1002, dtype=torch.float32)[None]
    y = pad_audio(x)                               # side 19: reflect 9 twice, then replicate 1
    assert y.shape[1] == 1040 and y[0, 0] == y[0, 1] and y[0, -1] == y[0, -2] and y[0, 19] == 0


@pytest.mark.parametrize("mode", PE_MODES)
def test_denoiser(model, io, mode):
    net = model.denoising_net
    net.pe_mode = mode
    try:
        args = (io["denoiser.motion_feat"], io["denoiser.audio_feat"], io["denoiser.prev_motion_feat"],
                io["denoiser.prev_audio_feat"], io["denoiser.step"])
        with torch.no_grad():
            tol.close_network(net.tokens(args[0], args[2], args[4]), io[f"denoiser.{mode}.tokens_in"], TOKENS)
            tol.close_network(net(*args), io[f"denoiser.{mode}.out"], tol.JOYVASA_DENOISER)
            # the sampler's path: each layer's cross-attention computed once from the memory alone
            cross = net.cross_attention(torch.cat([args[3], args[1]], dim=1))
            assert cross is not None and len(cross) == len(net.transformer.layers)
            tol.close_network(net(*args, cross=cross), io[f"denoiser.{mode}.out"], tol.JOYVASA_DENOISER,
                              what="precomputed cross-attention")
    finally:
        net.pe_mode = "constant_row"
    # the conditional half of the batch is the audio encoder's output, the other the null feature
    tol.close_network(io["denoiser.audio_feat"][1], io["audio_enc.audio_feat"][0], tol.JOYVASA_AUDIO)
    assert torch.equal(io["denoiser.audio_feat"][0], model.null_audio_feat[0].expand(100, -1).detach())


def test_cross_attention_shortcut_only_where_exact(model, io):
    """The precomputed cross-attention is used only with the released width-1 alignment mask, in eval mode:
    a wider mask lets a token mix several memory tokens by weights that depend on it (the stock decoder then
    runs, and the sampler follows it)."""
    net = model.denoising_net
    memory = torch.cat([io["denoiser.prev_audio_feat"], io["denoiser.audio_feat"]], dim=1)
    assert net.cross_attention(memory) is not None
    net.train()
    try:
        assert net.cross_attention(memory) is None
    finally:
        net.eval()
    saved = net.alignment_mask.clone()
    try:
        net.alignment_mask.copy_(alignment_mask(saved.shape[0], 2))
        assert net.cross_attention(memory) is None
        feat = model.encode_audio(io["audio_enc.audio"])
        x = io["sample.x_T"]
        # the guided denoiser falls back to the stock decoder: equal to calling the network without a table
        with torch.no_grad():
            got = guided_denoiser(model, feat, cfg_scale=CFG_SCALE)(x, 7)
            n = x.shape[0]
            stock = net(torch.cat([x] * 2), torch.cat([model.null_audio_feat.expand(n, x.shape[1], -1), feat]),
                        model.start_motion_feat.expand(2 * n, -1, -1), model.start_audio_feat.expand(2 * n, -1, -1),
                        torch.full((2 * n,), 7))[:, -x.shape[1]:]
        assert torch.equal(got, stock[:n] + CFG_SCALE * (stock[n:] - stock[:n]))
    finally:
        net.alignment_mask.copy_(saved)


def test_schedule(model, io):
    fresh = DiffusionSchedule(50, "cosine")
    # values in [0, 1]: a cosine, a square, two ratios, a difference and a clip per beta; alpha_bar is the exp of
    # a running sum of 50 logs (each entry |log alpha_bar| <= 10 times alpha_bar <= 1 / e); sigma a ratio and root
    for key in ("betas", "alphas", "alpha_bars", "sigmas_inflex"):
        tol.close_sum(getattr(fresh, key), io[f"schedule.{key}"], terms=50 + 6, magnitude=1, what=key)
        tol.close_sum(getattr(model.diffusion_sched, key), io[f"schedule.{key}"], terms=50 + 6, magnitude=1, what=key)
    assert float(fresh.betas[0]) == 0.0 and fresh.betas.shape == (51,)


@pytest.mark.parametrize("mode", PE_MODES)
def test_sample(model, io, mode):
    model.pe_mode = mode
    try:
        feat = model.encode_audio(io["audio_enc.audio"])
        states = {}  # x_t for each t: the state the denoiser is given at step t
        guided = guided_denoiser(model, feat, cfg_scale=CFG_SCALE)

        def denoiser(x, t):
            states[t] = x.clone()
            return guided(x, t)

        schedule = make_schedule(model.diffusion_sched)
        calls = []
        x0 = sample(denoiser, io["sample.x_T"], schedule, io["sample.z"], lambda d, t: calls.append((d, t)))
    finally:
        model.pe_mode = "constant_row"
    assert schedule.timesteps == list(range(50, 0, -1)) and calls == [(i + 1, 50) for i in range(50)]
    tol.close_network(x0, io[f"sample.{mode}.out"], tol.joyvasa_sampler(50))
    for t, key in ((49, "x_t49"), (25, "x_t25"), (1, "x_t01")):
        tol.close_network(states[t], io[f"sample.{mode}.{key}"], tol.joyvasa_sampler(50 - t), what=key)


@pytest.mark.parametrize("mode", PE_MODES)
def test_stream(model, io, template, mode):
    model.pe_mode = mode
    try:
        res = generate_normalized(model, io["stream.audio"], cfg_scale=CFG_SCALE, x_T=io["stream.x_T"],
                                  noise=_fixture_noise(io["stream.z"]), return_windows=True)
    finally:
        model.pe_mode = "constant_row"
    tol.close_network(res["window_motion"], io[f"stream.{mode}.window_motion"][:, 0], STREAM)
    tol.close_network(res["window_audio_feat"], io[f"stream.{mode}.window_audio_feat"][:, 0], tol.JOYVASA_AUDIO)
    assert res["n_pad_frames"] == 60 and res["motion"].shape == (140, 73)
    from core.motion.joyvasa.template import to_pose_sequence
    out = to_pose_sequence(template, res["motion"], smooth=True)
    for key in POSE:
        ref = io[f"stream.{mode}.motion.{key}"]
        tol.close_network(out[key], ref, STREAM, magnitude=pose_magnitude(template, res["motion"], key), what=key)


def test_window_plan():
    plan = plan_windows(88000)
    assert (plan.n_windows, plan.n_pad_frames, plan.n_frames) == (2, 60, 140)
    audio = torch.randn(88000)
    ref = torch.nn.functional.pad(torch.nn.functional.pad(audio, (1280, 640)), (0, plan.n_pad_samples))
    assert torch.equal(padded_audio(audio).reshape(ref.shape), ref)
    # the official clip_len rule: a window boundary hit exactly keeps one window; the tail is dropped
    p = plan_windows(64000 - 1920 + 300)
    assert (p.n_windows, p.n_pad_frames, p.n_frames) == (1, 0, 100) and p.n_pad_samples == -300
    p = plan_windows(1)
    assert (p.n_windows, p.n_frames) == (1, 3)
    with pytest.raises(InputError, match="empty"):
        padded_audio(torch.zeros(0))
    with pytest.raises(InputError, match="1-D"):
        padded_audio(torch.zeros(2, 100))


# --------------------------------------------------------------------------- public API
def test_audio_features_and_generate(model, io, template):
    feats, n_pad = audio_features(model, io["stream.audio"])
    assert feats.shape == (200, 32) and feats.dtype == torch.float32 and n_pad == 60
    tol.close_network(feats.reshape(2, 100, 32), io["stream.constant_row.window_audio_feat"][:, 0], tol.JOYVASA_AUDIO)
    kw = dict(cfg_scale=CFG_SCALE, x_T=io["stream.x_T"])
    from_audio = generate(model, io["stream.audio"], template, noise=_fixture_noise(io["stream.z"]), **kw)
    from_feats = generate(model, (feats, n_pad), template, noise=_fixture_noise(io["stream.z"]), **kw)
    motion = io["stream.constant_row.window_motion"]
    for key in POSE:
        torch.testing.assert_close(from_audio[key], from_feats[key], atol=0, rtol=0)
        tol.close_network(from_audio[key], io[f"stream.constant_row.motion.{key}"], STREAM,
                          magnitude=pose_magnitude(template, motion, key), what=key)
    assert from_audio["exp"].shape == (140, 21, 3) and from_audio["R"].shape == (140, 3, 3)


def test_seed_draw_order_progress_and_cancel(model, template, monkeypatch):
    audio = torch.randn(16000) * 0.1          # one window: x_T then 49 z, all from the CPU generator
    g = torch.Generator().manual_seed(7)
    x_T = torch.randn(1, 100, 73, generator=g)
    zs = [torch.randn(1, 100, 73, generator=g) for _ in range(49)]
    calls = []
    a = generate(model, audio, template, seed=7, progress=lambda d, t: calls.append((d, t)))
    b = generate(model, audio, template, x_T=x_T, noise=_fixture_noise(zs))
    for key in POSE:
        torch.testing.assert_close(a[key], b[key], atol=0, rtol=0)
    assert a["exp"].shape[0] == plan_windows(16000).n_frames == 28
    assert calls[-1] == (50, 50) and len(calls) == 50
    unsmoothed = generate(model, audio, template, seed=7, smooth=False)
    torch.testing.assert_close(unsmoothed["exp"], a["exp"])
    assert not torch.equal(unsmoothed["yaw"], a["yaw"])
    # cancelling: the host's interrupt or the callback raising, both at a step of core.progress.Progress
    steps = []

    def interrupt():
        if len(steps) >= 3:
            raise Cancelled("interrupted")

    monkeypatch.setattr(HOST, "check_interrupt", interrupt)
    with pytest.raises(Cancelled, match="interrupted"):
        generate(model, audio, template, seed=7, progress=lambda d, t: steps.append(d))
    assert steps == [1, 2, 3]
    monkeypatch.setattr(HOST, "check_interrupt", None)

    def cancel(d, t):
        if d == 2:
            raise Cancelled("from the callback")

    with pytest.raises(Cancelled, match="from the callback"):
        generate(model, audio, template, seed=7, progress=cancel)


# --------------------------------------------------------------------------- composition
def _source(io):
    raw = {k: io[f"source.raw.{k}"] for k in ("pitch", "yaw", "roll", "t", "exp", "scale", "kp")}
    info = K.kp_info(raw)
    lip = K.lip_ratio(io["source.lmk203"]).reshape(1, 1)
    return info, SourceMotion.from_kp_info(info, lip=lip)


def _generated(io, mode="constant_row"):
    return {k: io[f"stream.{mode}.motion.{k}"].reshape(140, *io[f"stream.{mode}.motion.{k}"].shape[2:]) for k in POSE}


@pytest.mark.parametrize("preset", ["cli", "gradio"])
def test_compose(io, retarget, preset):
    info, src = _source(io)
    raw = {k: io[f"source.raw.{k}"] for k in ("kp", "exp", "scale", "t")}
    tol.close_network(src.x_s, io[f"compose_{preset}.x_s"], COMPOSE, magnitude=source_kp_magnitude(raw))
    assert abs(float(src.lip) - 0.12) < 1e-3
    gen = _generated(io)
    for source in (info, src):  # motion-extractor info (degrees) or a SourceMotion
        motion = to_motion(gen, source)
        assert motion.composed and len(motion) == 140 and motion.R is not None
        x_d = driving_keypoints(src, motion, drive_options(preset), retarget["stitching"], retarget["lip"])
        tol.close_network(x_d, io[f"compose_{preset}.x_d"], COMPOSE.then(tol.LP_STITCH).then(tol.LP_STITCH),
                          magnitude=source_kp_magnitude(raw))
    opts = drive_options(preset)
    assert isinstance(opts, DriveOptions) and opts.multiplier == (1.1 if preset == "cli" else 1.0)


def test_compose_strengths_and_angles(io, retarget):
    info, src = _source(io)
    gen = _generated(io)
    m1 = to_motion(gen, info)
    rot_ops = tol.LP_ROT_OPS
    # the stored Euler angles describe R: R -> angles (float64, one rounding to float32 of up to 180 degrees,
    # i.e. pi rad) -> R again, on top of R's own products
    tol.close_elementwise(K.rotation_matrix(m1.pitch, m1.yaw, m1.roll), m1.R, ops=2 * rot_ops + 4, magnitude=1)
    # strength 0: the source's own pose and expression in every frame
    m0 = to_motion(gen, info, pose_strength=0.0, expression_strength=0.0)
    tol.close_elementwise(m0.R, src.R.expand(140, 3, 3), ops=2 * rot_ops, magnitude=1)
    tol.close_elementwise(m0.exp, src.exp.expand(140, 21, 3), ops=1)
    tol.close_elementwise(m0.scale, src.scale.reshape(1).expand(140), ops=1)
    tol.close_elementwise(m0.t[:, :2], src.t[:, :2].expand(140, 2), ops=1)
    x_d = driving_keypoints(src, m0, DriveOptions(relative=False, stitching=False))
    kp_mag = tol.lp_kp_magnitude(src.kp, src.exp, src.scale, src.t)
    tol.close_elementwise(x_d, src.x_s.expand(140, 21, 3), ops=2 * rot_ops + tol.LP_KP_OPS, magnitude=kp_mag)
    # half strength twice = full rotation; monotone expression scaling (float64 axis-angle: the float32
    # inputs' and outputs' roundings and two 3-term products)
    R_rel = m1.R @ src.R.transpose(1, 2)
    half = rotation_power(R_rel, 0.5)
    tol.close_elementwise(half @ half, R_rel, ops=2 * rot_ops + 2 * 3, magnitude=1)
    big = K.rotation_matrix(torch.tensor([150.0, 0.0, 179.9, 180.0, 0.001]), torch.tensor([20.0, 180.0, 0.0, 0.0, 0.0]),
                            torch.tensor([-30.0, 0.0, 0.0, 0.0, 0.0]))
    third = rotation_power(big, 1 / 3)
    tol.close_elementwise(third @ third @ third, big, ops=rot_ops + 3 * 3, magnitude=1)
    assert torch.equal(rotation_power(big, 0.0), torch.eye(3).expand(5, 3, 3))
    mh = to_motion(gen, info, expression_strength=0.5)
    exp_mag = float(m1.exp.abs().max() + src.exp.abs().max())
    tol.close_elementwise(mh.exp - src.exp, (m1.exp - src.exp) * 0.5, ops=4, magnitude=exp_mag)
    p, y, r = euler_degrees(K.rotation_matrix(torch.tensor([10.0]), torch.tensor([-20.0]), torch.tensor([30.0])))
    # an error in R's unit-size entries moves an angle by as much in radians, by 1 / cos(yaw) more for asin
    tol.close_elementwise(torch.stack([p, y, r]).reshape(3), torch.tensor([10.0, -20.0, 30.0]), ops=rot_ops + 1,
                          magnitude=math.degrees(1) / math.cos(math.radians(20)))


# --------------------------------------------------------------------------- loading
def _probe(m, io):
    """Cheap outputs covering every part: audio features, denoiser, schedule, start/null parameters."""
    with torch.no_grad():
        feat = m.encode_audio(io["audio_enc.audio"])
        out = m.denoising_net(io["denoiser.motion_feat"], io["denoiser.audio_feat"], io["denoiser.prev_motion_feat"],
                              io["denoiser.prev_audio_feat"], io["denoiser.step"])
    return [feat, out, m.diffusion_sched.alpha_bars, m.start_motion_feat, m.start_audio_feat, m.null_audio_feat]


def _args(**kw):
    base = dict(mode="train", exp_name="test", data_root=pathlib.PosixPath("data"), motion_feat_dim=73, n_motions=100,
                n_prev_motions=10, feature_dim=32, audio_model="hubert_zh", n_diff_steps=50, fps=25,
                pad_mode="zero", use_indicator=True, n_layers=6, n_heads=8, diff_schedule="cosine")
    base.update(kw)
    return argparse.Namespace(**base)


def test_official_pt_layout_matches_safetensors(tmp_path, state, cfg, model, io):
    legacy = map_weight_norm(state, new_style=False)   # older torch: weight_g / weight_v
    assert any(k.endswith("pos_conv_embed.conv.weight_g") for k in legacy)
    pt = tmp_path / "motion_generator_hubert_chinese.pt"
    torch.save({"args": _args(), "model": legacy, "iter": 1}, pt)
    from_pt = load_joyvasa(pt, config=cfg)
    assert from_pt.source_args["audio_model"] == "hubert_zh" and from_pt.config["fps"] == 25
    # flat twins: with the 'model.' prefix (convert_to_safetensors of the .pt), and without TE.pe / PE.pe
    from core.weights import convert_to_safetensors
    twin = convert_to_safetensors(pt, tmp_path / "twin.safetensors")
    assert all(k.startswith("model.") for k in load_file(str(twin)))
    bare = {k: v for k, v in state.items() if k not in ("denoising_net.TE.pe", "denoising_net.PE.pe")}
    save_file(bare, str(tmp_path / "bare.safetensors"))
    loaded = [from_pt, load_joyvasa(twin, config=cfg), load_joyvasa(tmp_path / "bare.safetensors", config=cfg)]
    ref = _probe(model, io)
    for m in loaded:
        for a, b in zip(_probe(m, io), ref):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    # the explicit config can also travel in the safetensors metadata
    save_file(state, str(tmp_path / "meta.safetensors"), metadata={"joyvasa_config": json.dumps(cfg)})
    assert load_joyvasa(tmp_path / "meta.safetensors").config["hubert"]["num_attention_heads"] == 4


def test_bad_checkpoints(tmp_path, state, cfg, st_path):
    # HuBERT heads cannot be read from a non-768 encoder's shapes: clear request for a config
    with pytest.raises(CheckpointError, match="attention heads"):
        load_joyvasa(st_path)
    pt = tmp_path / "gen.pt"
    torch.save({"args": _args(), "model": state, "iter": 1}, pt)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_joyvasa(truncated, config=cfg)
    missing = dict(state)
    missing.pop("denoising_net.motion_dec.2.bias")
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match=r"Missing keys \(1\): denoising_net.motion_dec.2.bias"):
        load_joyvasa(tmp_path / "missing.safetensors", config=cfg)
    wrong = dict(state)
    wrong["null_audio_feat"] = torch.zeros(1, 1, 31)
    save_file(wrong, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(CheckpointError, match="null_audio_feat"):
        load_joyvasa(tmp_path / "wrong.safetensors", config=cfg)
    extra = dict(state)
    extra["denoising_net.something_new"] = torch.zeros(3)
    save_file(extra, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="Unexpected keys"):
        load_joyvasa(tmp_path / "extra.safetensors", config=cfg)
    save_file({"conv.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(CheckpointError, match="not a JoyVASA motion generator"):
        load_joyvasa(tmp_path / "other.safetensors")
    nan = dict(state)
    nan["start_motion_feat"] = torch.full_like(state["start_motion_feat"], float("nan"))
    save_file(nan, str(tmp_path / "nan.safetensors"))
    with pytest.raises(CheckpointError, match="non-finite"):
        load_joyvasa(tmp_path / "nan.safetensors", config=cfg)


def test_released_checkpoint_structure():
    """Every key/shape of the real motion_generator_hubert_chinese.pt, in both weight-norm spellings,
    yields the released configuration and loads strictly (meta tensors: no weights needed)."""
    files = json.loads((FIX / "checkpoint_manifest.json").read_text())["files"]
    entry = next(v for k, v in files.items() if k.startswith("JoyVASA/motion_generator"))
    shapes = {k: torch.empty(v["shape"], dtype=getattr(torch, v["dtype"]), device="meta")
              for k, v in entry["state_dict"].items()}
    cfg = infer_config(shapes, {"fps": 25, "pad_mode": "zero"})
    assert cfg == make_config(None)
    assert cfg["hubert"]["num_attention_heads"] == 12 and cfg["n_layers"] == 8 and cfg["te_max_len"] == 501
    with torch.device("meta"):
        m = JoyVASA(cfg)
    assert sum(p.numel() for p in m.parameters()) == entry["num_parameters"]
    for spelling in (True, False):
        st = map_weight_norm(shapes, new_style=spelling)
        prepare_state(m, st, "released")  # raises on any key/shape mismatch
        no_te = {k: v for k, v in st.items() if k != "denoising_net.TE.pe"}
        prepare_state(m, no_te, "released without TE.pe")


# --------------------------------------------------------------------------- template
def test_template_sources(tmp_path, io, template):
    stats = {k[len("template."):]: io[k].numpy().astype(np.float32) for k in io if k.startswith("template.")}
    assert len(stats) == 45
    pkl = tmp_path / "motion_template.pkl"
    with open(pkl, "wb") as fh:
        pickle.dump(stats, fh)
    st = tmp_path / "motion_template.safetensors"
    save_file({f"template.{k}": torch.from_numpy(v) for k, v in stats.items()}, str(st))
    motion = torch.rand(5, 73)
    ref = template.denormalize(motion)
    for src in (pkl, st, stats):
        out = load_template(src).denormalize(motion)
        for key in ref:
            torch.testing.assert_close(out[key], ref[key], atol=0, rtol=0)
    tol.close_elementwise(ref["exp"].reshape(5, 63), motion[:, :63] * io["template.std_exp"] + io["template.mean_exp"],
                          ops=2)
    bad = tmp_path / "bad.pkl"
    with open(bad, "wb") as fh:
        pickle.dump({"mean_exp": np.zeros(63, np.float32)}, fh)
    with pytest.raises(CheckpointError, match="missing"):
        load_template(bad)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    evil = tmp_path / "evil.pkl"
    with open(evil, "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    with pytest.raises(CheckpointError, match="refused"):
        load_template(evil)
