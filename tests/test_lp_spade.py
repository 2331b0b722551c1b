"""LivePortrait SPADE decoder (G): fixture parity, spectral-norm buffers, official layout."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from core.liveportrait.spade import SNConv2d, SPADEDecoder

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "liveportrait"
CONFIGS = ROOT / "core" / "liveportrait" / "configs"


def _params(name):
    return json.loads((CONFIGS / name).read_text())["model_params"]["spade_generator_params"]


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIX / "io.safetensors"))


@pytest.fixture(scope="module")
def weights():
    return load_file(str(FIX / "weights" / "spade_generator.safetensors"))


def _tiny(weights):
    g = SPADEDecoder(**_params("tiny.json"))
    g.load_state_dict(weights, strict=True)
    return g.eval()


def _fast(weights):
    """The decoder as the inference loader hands it out: optimised for inference (the fast path)."""
    return _tiny(weights).optimize_for_inference()


def _sn_buffers(g):
    return {k: v.clone() for k, v in g.state_dict().items() if k.endswith(("weight_u", "weight_v"))}


def test_tiny_fixture_parity(weights, io):
    g = _fast(weights)
    feature, expected = io["W.out"], io["G.out"]
    assert feature.shape == (2, 8, 16, 16) and expected.shape == (2, 3, 128, 128)
    with torch.no_grad():  # fast inference path
        fast = g(feature)
    with torch.inference_mode():
        fast_im = g(feature)
    reference = _tiny(weights)(feature)  # not optimised, autograd on -> plain module graph
    assert fast.shape == expected.shape and fast.is_contiguous()
    assert reference.requires_grad
    for out in (fast, fast_im, reference.detach()):
        tol.close_network(out, expected, tol.LP_G)
    assert 0 < fast.min() and fast.max() < 1


def test_fast_path_only_after_optimize_for_inference(weights, io, monkeypatch):
    """The fast path is switched on explicitly: a decoder without the call runs the module graph even
    with autograd off; with it, the fast path; both match the fixture within the same bound."""
    ran = []
    for name in ("_fast_forward", "_reference_forward"):
        method = getattr(SPADEDecoder, name)
        monkeypatch.setattr(SPADEDecoder, name, lambda self, x, _m=method, _n=name: ran.append(_n) or _m(self, x))
    plain, fast = _tiny(weights), _fast(weights)
    assert not plain.fast_path and fast.fast_path
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    with torch.inference_mode():
        out_plain = plain(io["W.out"])
        assert ran == ["_reference_forward"] and plain._prepared is None  # nothing prepared, nothing cached
        out_fast = fast(io["W.out"])
        assert ran == ["_reference_forward", "_fast_forward"] and fast._prepared is not None
    for out in (out_plain, out_fast):
        tol.close_network(out, io["G.out"], tol.LP_G)
    # the fast path computes no gradients: an input that needs one is refused with a clear message
    with pytest.raises(RuntimeError, match="optimize_for_inference"):
        fast(io["W.out"].clone().requires_grad_(True))
    out = fast(io["W.out"])  # autograd on, but nothing needs a gradient: the fast path
    assert ran[-1] == "_fast_forward" and not out.requires_grad
    # the loader for inference makes the call once; the plain loader does not
    from core.liveportrait.load import LivePortraitModels
    models = LivePortraitModels(*(torch.nn.Identity() for _ in range(3)), _tiny(weights), torch.nn.Identity())
    assert models.optimize_for_inference() is models and models.spade.fast_path


@pytest.mark.parametrize("channels_last,fold", [(True, True), (True, False), (False, True),
                                                (False, False)])
def test_tiny_fixture_parity_fast_variants(weights, io, channels_last, fold):
    g = _fast(weights)
    g.channels_last, g.fold_gamma_beta = channels_last, fold
    with torch.no_grad():
        out = g(io["W.out"])
    tol.close_network(out, io["G.out"], tol.LP_G)


def test_forward_leaves_spectral_vectors_alone(weights, io):
    g = _tiny(weights)
    before = _sn_buffers(g)
    assert len(before) == 2 * 18  # 6 x 2 + 2 x 3 spectral-norm convs
    fast = _fast(weights)
    with torch.no_grad():
        fast(io["W.out"])
    assert all(torch.equal(v, _sn_buffers(fast)[k]) for k, v in before.items())
    g(io["W.out"]).sum().backward()  # autograd path, eval
    g.train()
    g(io["W.out"])  # train mode: still no power iteration
    after = _sn_buffers(g)
    for k, v in before.items():
        assert torch.equal(after[k], v), k
    for k, v in weights.items():
        if k.endswith(("weight_u", "weight_v")):
            assert torch.equal(after[k], v), k


def test_spectral_norm_formula(weights):
    g = _tiny(weights)
    conv = g.up_0.conv_0
    w = weights["up_0.conv_0.weight_orig"].double()
    u, v = weights["up_0.conv_0.weight_u"].double(), weights["up_0.conv_0.weight_v"].double()
    sigma = u @ (w.reshape(w.shape[0], -1) @ v)
    # float32 sigma sums out x (in x 3 x 3) products u_i W_ij v_j: relative error up to n EPS sum|terms| / sigma,
    # then one division
    terms = u.abs() @ (w.reshape(w.shape[0], -1).abs() @ v.abs())
    n = w[0].numel() + w.shape[0]
    tol.close_sum(conv.compute_weight(), w / sigma, terms=n + 1,
                  magnitude=float((w / sigma).abs().max() * terms / sigma.abs()))
    assert not hasattr(conv, "weight") or not isinstance(getattr(conv, "weight"), torch.Tensor)


def test_fullsize_layout_matches_official_checkpoint():
    manifest = json.loads((FIX / "checkpoint_manifest.json").read_text())
    manifest = manifest["files"]["spade_generator"]
    with torch.device("meta"):
        g = SPADEDecoder(**_params("liveportrait.json"))
    sd = g.state_dict()
    param_keys = {k for k, _ in g.named_parameters()}
    got = [(k, list(v.shape), str(v.dtype).replace("torch.", ""),
            "parameter" if k in param_keys else "buffer") for k, v in sd.items()]
    want = [(t["key"], t["shape"], t["dtype"], t["kind"]) for t in manifest["tensors"]]
    assert got == want
    n_params = sum(p.numel() for p in g.parameters())
    assert n_params == 55_365_388 == manifest["num_parameters"]
    assert sum(b.numel() for b in g.buffers()) == manifest["num_buffer_elements"]
    with torch.no_grad():  # shapes only (meta tensors), both paths
        for optimise in (False, True):
            if optimise:
                g.optimize_for_inference()
            assert g.fast_path == optimise
            out = g(torch.empty(1, 256, 64, 64, device="meta"))
            assert out.shape == (1, 3, 512, 512)


@pytest.mark.parametrize("params,size", [
    (dict(upscale=2, block_expansion=2, max_features=32, num_down_blocks=2), (7, 10)),
    # up_1 64 -> 64: no learned shortcut; upscale 3
    (dict(upscale=3, block_expansion=16, max_features=64, num_down_blocks=2), (5, 4)),
    (dict(upscale=1, block_expansion=4, max_features=16, num_down_blocks=1), (1, 3)),
])
def test_fast_path_is_exact_rearrangement(params, size):
    """float64: the fast path equals the module graph up to rounding (folds are exact maths)."""
    torch.manual_seed(0)
    g = SPADEDecoder(**params).double().eval()
    feature = torch.randn(2, g.in_channels, *size, dtype=torch.float64)
    reference = g(feature).detach()
    scale = 4 * params["upscale"]
    assert reference.shape == (2, 3, scale * size[0], scale * size[1])
    g.optimize_for_inference()
    for channels_last in (True, False):
        for fold in (True, False):
            g.channels_last, g.fold_gamma_beta = channels_last, fold
            with torch.inference_mode():
                out = g(feature)
            assert (out - reference).abs().max().item() < 1e-12


def test_fast_path_cache_follows_weight_changes(weights, io):
    g = _fast(weights)
    feature = io["W.out"]
    with torch.no_grad():
        g(feature)  # builds the cache
    torch.manual_seed(1)
    other = {k: v + 0.01 * torch.randn_like(v) if not k.endswith(("weight_u", "weight_v")) else v
             for k, v in weights.items()}
    g.load_state_dict(other)
    with torch.no_grad():
        fast = g(feature)
        g.fast_path = False
        reference = g(feature)
    tol.close_network(fast, reference, tol.LP_G)
    assert (fast - io["G.out"]).abs().max().item() > 1e-3


def test_model_built_under_inference_mode(weights, io):
    """ComfyUI runs nodes under inference_mode: parameters become inference tensors."""
    with torch.inference_mode():
        g = SPADEDecoder(**_params("tiny.json")).eval()
        g.load_state_dict(weights)
        g.optimize_for_inference()
        first = g(io["W.out"])
        # keys whose fast-path weights are derived copies (folded / spectral-normalised)
        changed = {"up_1.norm_0.mlp_shared.0.weight": 0.5, "G_middle_2.conv_1.weight_u": -1.0}
        g.load_state_dict({k: v * changed.get(k, 1.0) for k, v in weights.items()})
        second = g(io["W.out"])
        g.fast_path = False
        reference = g(io["W.out"])
    tol.close_network(first, io["G.out"], tol.LP_G)
    tol.close_network(second, reference, tol.LP_G)
    assert (second - first).abs().max().item() > 1e-3


def test_sn_conv_state_dict_names():
    conv = SNConv2d(4, 3, 3, padding=1)
    assert list(conv.state_dict()) == ["bias", "weight_orig", "weight_u", "weight_v"]
    assert [k for k, _ in conv.named_buffers()] == ["weight_u", "weight_v"]
    # freshly initialised: u, v are the top singular pair -> spectral norm of the weight is 1
    w = conv.compute_weight().reshape(3, -1)
    assert abs(torch.linalg.matrix_norm(w, ord=2).item() - 1) < 1e-3
    assert list(SNConv2d(4, 3, 1, bias=False).state_dict()) == ["weight_orig", "weight_u",
                                                                "weight_v"]


def test_autocast_first_call_does_not_poison_cache(weights, io):
    """The first no-grad call may run under autocast; the cached weights stay full precision."""
    g = _fast(weights)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = g(io["W.out"])
            g.fast_path = False
            low_reference = g(io["W.out"])
            g.fast_path = True
        full = g(io["W.out"])
    assert low.dtype == torch.bfloat16
    assert (low.float() - low_reference.float()).abs().max().item() < 0.03
    tol.close_network(full, io["G.out"], tol.LP_G)


def test_half_precision_weights_prepared_once_in_that_dtype(weights, io):
    """Under autocast the prepared weights are rounded once to its dtype and cached so (no per-call casts);
    the result equals autocast casting the full-precision weights on every call; a full-precision call
    after it rebuilds them in float32."""
    g = _fast(weights)
    with torch.inference_mode():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = g(io["W.out"])
            assert g._prepared_key[2] == torch.bfloat16
            assert g._prepared["fc"][0].dtype == torch.bfloat16
            again = g(io["W.out"])
        g.clear_cache()
        # the same computation with float32 prepared weights that autocast casts at each conv
        prepared32 = g._prepare(torch.float32)
        g._prepare = lambda dtype=None: prepared32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            cast_per_call = g(io["W.out"])
        del g._prepare
        full = g(io["W.out"])
    assert torch.equal(low, again) and torch.equal(low, cast_per_call)
    assert g._prepared_key[2] == torch.float32
    tol.close_network(full, io["G.out"], tol.LP_G)


def test_inference_loader_optimises_the_decoder():
    """get_liveportrait (the loader for inference) makes the call once; load_liveportrait does not."""
    from core.cache import CACHE
    from core.liveportrait import KINDS, get_liveportrait, load_liveportrait, preset

    folder = FIX / "weights"
    try:
        models = get_liveportrait(folder=folder, device="cpu", download=False)
        assert models.spade.fast_path and models.input_size == 64 and models.output_size == 128
        assert get_liveportrait(folder=folder, device="cpu", download=False) is models
    finally:
        CACHE.unload("liveportrait")
    plain = load_liveportrait({k: folder / f"{k}.safetensors" for k in KINDS}, preset("tiny"))
    assert not plain.spade.fast_path
