"""tests/tolerance.py: its bounds are the documented formulas, a failure says where and why, and per model
family one plausible small real bug, put in here by monkeypatching, makes the parity tests' own comparison
fail while the unchanged code passes it (so the bounds are tight enough to mean something)."""
import dataclasses
import importlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file

import tolerance as tol
from conftest import FIXTURES, ROOT

# Tiny networks: one torch thread is faster than two competing for a busy 2-core CPU.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------- the module itself
def test_bounds_are_the_documented_formulas():
    assert tol.EPS == 2.0 ** -23 == torch.finfo(torch.float32).eps
    assert tol.elementwise_bound(3, 250.0) == 3 * tol.EPS * 250.0
    assert tol.sum_bound(66, 195.0) == 66 * tol.EPS * 195.0
    a, b = tol.Net("a", 4, 100), tol.Net("b", 2, 900)
    assert a.roundings == 400 and a.then(b).roundings == 400 + 1800 and a.times(10).roundings == 4000
    assert a.then(b).recipe == "4 x 100 + 2 x 900" and a.then(b).layers == 6 and a.then(b).widest == 900
    assert tol.network_bound(a, 2.0) == tol.PROB * math.sqrt(400) * tol.EPS * 2.0
    # a sampler: the condition encoder once per window, the decoder twice per step
    s = tol.ditto_sampler(10, windows=3)
    assert s.roundings == 3 * (tol.DITTO_COND.roundings + 20 * tol.DITTO_DECODER.roundings)


def test_failure_names_the_worst_element_its_index_and_the_bound():
    expected = torch.zeros(2, 3, 4)
    actual = expected.clone()
    actual[1, 2, 3] = 1e-3
    actual[0, 0, 0] = 1e-6
    net = tol.Net("toy net", 4, 100)
    with pytest.raises(AssertionError) as err:
        tol.close_network(actual, expected, net, magnitude=1.0, what="toy")
    msg = str(err.value)
    assert msg.startswith("toy: max |actual - expected| = 0.001 at index (1, 2, 3)")
    assert "actual 0.001" in msg and "expected 0" in msg
    bound = tol.network_bound(net, 1.0)
    assert f"network bound {bound:.3g} = PROB 8 x sqrt(400 roundings = 4 x 100) x EPS x magnitude 1 (toy net)" in msg
    assert f"({1e-3 / bound:.3g} x the bound)" in msg
    # within the bound: the observed error / bound comes back
    assert tol.close_network(actual * 0, expected, net, magnitude=1.0) == 0.0
    assert 0 < tol.close_elementwise(torch.tensor([1.0 + tol.EPS]), torch.tensor([1.0]), ops=2) == 0.5


def test_shapes_nans_and_uint8():
    tol.close_elementwise(torch.ones(1, 5, 1), torch.ones(5), ops=0)  # the fixtures' extra batch axes
    with pytest.raises(AssertionError, match="shape"):
        tol.close_elementwise(torch.ones(5, 2), torch.ones(2, 5), ops=1)
    with pytest.raises(AssertionError, match="inf"):
        tol.close_sum(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), terms=1000)
    tol.close_sum(torch.tensor([float("nan")]), torch.tensor([float("nan")]), terms=1)  # NaN where expected
    u8 = torch.tensor([0, 128, 255], dtype=torch.uint8)
    tol.close_uint8(u8, torch.tensor([1, 127, 255], dtype=torch.uint8))
    with pytest.raises(AssertionError, match="at index \\(1,\\)"):
        tol.close_uint8(u8, torch.tensor([0, 126, 255], dtype=torch.uint8))
    # head-pose degrees: the bins' 195-degree scale, not the angle's value
    bound = tol.network_bound(tol.Net("66-bin expectation", 1, 66), 195.0)
    tol.close_degrees(torch.tensor([0.1 + 0.9 * bound]), torch.tensor([0.1]))
    with pytest.raises(AssertionError, match="195 degrees"):
        tol.close_degrees(torch.tensor([0.1 + 1.1 * bound]), torch.tensor([0.1]))


# --------------------------------------------------------------------------- one caught bug per family
def test_sda_window_offset_by_one_sample_is_caught(monkeypatch):
    """The speech padded one sample late (50 kHz: 20 microseconds): every audio window moves by one
    sample. test_case_a_stages' comparison of the audio code z fails."""
    from core import sda
    preprocess = importlib.import_module("core.sda.preprocess")
    io = load_file(str(FIXTURES / "sda" / "io.safetensors"))
    model = sda.load_sda(FIXTURES / "sda" / "tiny-grid.dat")

    def z():
        with torch.inference_mode():
            return model.encoder(sda.audio_windows(io["A.speech"][:, 0], model.config)[None])[0]

    tol.close_network(z(), io["A.z"], tol.SDA_AUDIO)
    good = preprocess.pad_speech

    def late(speech, cfg):
        padded = good(speech, cfg)
        return torch.cat([padded.new_zeros(1), padded[:-1]])

    monkeypatch.setattr(preprocess, "pad_speech", late)
    with pytest.raises(AssertionError, match="SDA audio encoder"):
        tol.close_network(z(), io["A.z"], tol.SDA_AUDIO)


def test_fom_grid_sample_align_corners_is_caught(monkeypatch):
    """grid_sample with align_corners=True (torch's default before 1.3; the official code runs with
    False): every warp samples half a pixel off. test_generator_outputs' comparison fails."""
    from core import fom as F
    model_mod = importlib.import_module("core.fom.model")
    io = load_file(str(FIXTURES / "fom" / "io.safetensors"))
    model = F.load_fom(FIXTURES / "fom" / "weights.safetensors")

    def prediction():
        kp = {p: {"value": io[f"{p}.value"], "jacobian": io[f"{p}.jacobian"]} for p in ("kp_norm.rel_adapt",
                                                                                         "kp_source")}
        with torch.inference_mode():
            return model.generator(io["source"], kp["kp_norm.rel_adapt"], kp["kp_source"])["prediction"]

    tol.close_network(prediction(), io["gen.prediction"], tol.FOM_GEN)
    assert model_mod.ALIGN_CORNERS is False
    monkeypatch.setattr(model_mod, "ALIGN_CORNERS", True)
    with pytest.raises(AssertionError, match="FOM generator"):
        tol.close_network(prediction(), io["gen.prediction"], tol.FOM_GEN)


def test_liveportrait_instance_norm_eps_is_caught():
    """SPADE's parameter-free InstanceNorm2d with eps 1e-6 instead of torch's 1e-5 (the official
    default). test_tiny_fixture_parity's comparison of the decoder output fails."""
    from core.liveportrait.spade import SPADEDecoder
    params = json.loads((ROOT / "core" / "liveportrait" / "configs" / "tiny.json").read_text())
    io = load_file(str(FIXTURES / "liveportrait" / "io.safetensors"))
    g = SPADEDecoder(**params["model_params"]["spade_generator_params"])
    g.load_state_dict(load_file(str(FIXTURES / "liveportrait" / "weights" / "spade_generator.safetensors")))
    g.optimize_for_inference()  # the fast path, whose prepared weights carry the eps
    with torch.no_grad():
        tol.close_network(g(io["W.out"]), io["G.out"], tol.LP_G)
        norms = [m for m in g.modules() if isinstance(m, torch.nn.InstanceNorm2d)]
        assert norms and all(m.eps == 1e-5 for m in norms)
        for m in norms:
            m.eps = 1e-6
        g.clear_cache()
        with pytest.raises(AssertionError, match="LivePortrait G"):
            tol.close_network(g(io["W.out"]), io["G.out"], tol.LP_G)


def test_ditto_ddim_coefficient_of_the_neighbouring_step_is_caught():
    """Each DDIM step uses the next step's noise coefficient c (an off-by-one in the step index).
    test_ddim_sample_parity's comparison of the 10-step sample fails."""
    from core.motion import ditto
    from core.motion.ditto import sampler as S
    fix = FIXTURES / "ditto"
    io = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(fix / "io.safetensors")).items()}
    state = {k: v for k, v in load_file(str(fix / "weights.safetensors")).items()
             if not k.startswith(("stitch.", "schedule."))}
    lmdm = ditto.LMDM(**ditto.infer_config(state, num_heads=4))
    lmdm.load_state_dict(state, strict=True)
    lmdm.eval()

    def sample(schedule):
        denoiser = S.guided_denoiser(lmdm, io["denoiser.cond_frame"], io["denoiser.cond"], 2.0)
        return S.sample(denoiser, io["sample10.x_T"], schedule, io["sample10.step_noise"])

    good = S.make_schedule(lmdm.alphas_cumprod, 10)
    tol.close_network(sample(good), io["sample10.out"], tol.ditto_sampler(10))
    shifted = dataclasses.replace(good, c=torch.cat([good.c[1:], good.c[-1:]]))
    with pytest.raises(AssertionError, match="DDIM steps"):
        tol.close_network(sample(shifted), io["sample10.out"], tol.ditto_sampler(10))


def test_joyvasa_sigma_of_the_neighbouring_step_is_caught(tmp_path):
    """The sampler's noise scale sigma_t read one step early (sigma_{t-1}). test_sample's comparison of
    the 50-step window fails."""
    from core.motion.joyvasa import load_joyvasa
    from core.motion.joyvasa.sampler import guided_denoiser, make_schedule, sample as joyvasa_sample
    fix = FIXTURES / "joyvasa"
    io = {k: v.float() if v.is_floating_point() else v for k, v in load_file(str(fix / "io.safetensors")).items()}
    state = {k: v for k, v in load_file(str(fix / "weights.safetensors")).items() if not k.startswith("retarget.")}
    save_file(state, str(tmp_path / "tiny.safetensors"))
    model = load_joyvasa(tmp_path / "tiny.safetensors", config=json.loads((fix / "config.json").read_text()))
    with torch.no_grad():
        feat = model.encode_audio(io["audio_enc.audio"])

    def sample():  # the schedule is made from the model's (patched below) schedule buffers on every call
        return joyvasa_sample(guided_denoiser(model, feat, cfg_scale=2.8), io["sample.x_T"],
                              make_schedule(model.diffusion_sched), io["sample.z"])

    tol.close_network(sample(), io["sample.constant_row.out"], tol.joyvasa_sampler(50))
    sched = model.diffusion_sched
    good = sched.get_sigmas
    sched.get_sigmas = lambda t, flexibility=0.0: good(max(int(t) - 1, 1), flexibility)
    with pytest.raises(AssertionError, match="JoyVASA 1 window"):
        tol.close_network(sample(), io["sample.constant_row.out"], tol.joyvasa_sampler(50))


def test_audio_feature_window_offset_by_one_sample_is_caught(monkeypatch):
    """Ditto's 6480-sample chunks start one sample late. test_compute_embeddings_end_to_end_with_tiny_hubert's
    comparison (tiny HuBERT features vs transformers on the official chunks) fails."""
    pytest.importorskip("transformers")
    from test_audio_features import tiny_config
    from transformers import HubertForCTC

    from core.audio_features import ditto as D
    torch.manual_seed(0)
    model = HubertForCTC(tiny_config()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    t = torch.arange(int(1.37 * 16000)) / 16000
    wave = 0.4 * torch.sin(2 * math.pi * 220 * t) * (1 + torch.sin(2 * math.pi * 3 * t))

    def encoder(chunks):
        return model.hubert(chunks).last_hidden_state

    with torch.no_grad():
        n = D.num_video_frames(wave.numel())
        want = D.reduce_chunk_output(encoder(D.gather_chunks(wave, D.offline_chunk_starts(wave.numel()))))[:n]
        tol.close_network(D.ditto_offline_features(wave, encoder), want, tol.HUBERT_TINY_PAIRS)
        good = D.offline_chunk_starts
        monkeypatch.setattr(D, "offline_chunk_starts", lambda num: [s + 1 for s in good(num)])
        with pytest.raises(AssertionError, match="tiny HuBERT"):
            tol.close_network(D.ditto_offline_features(wave, encoder), want, tol.HUBERT_TINY_PAIRS)
