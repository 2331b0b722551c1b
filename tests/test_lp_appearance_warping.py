"""LivePortrait appearance extractor F and warping module W vs the reference fixture.

Tiny fixture (tests/fixtures/liveportrait): seeded weights with the official key names and the
reference outputs of the official implementation (see shared reference README). Full-size
checks build the official-config modules without weights and compare their state dicts with
the official checkpoint manifest.
"""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import tolerance as tol
from core.liveportrait.appearance import AppearanceFeatureExtractor
from core.liveportrait.warping import WarpingNetwork

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "liveportrait"
CONFIGS = ROOT / "core" / "liveportrait" / "configs"


def _params(config, key):
    return json.loads((CONFIGS / config).read_text())["model_params"][key]


@pytest.fixture(scope="module")
def io():
    return load_file(str(FIX / "io.safetensors"))


@pytest.fixture(scope="module")
def appearance():
    m = AppearanceFeatureExtractor(**_params("tiny.json", "appearance_feature_extractor_params"))
    m.load_state_dict(load_file(str(FIX / "weights" / "appearance_feature_extractor.safetensors")),
                      strict=True)
    return m.eval()


@pytest.fixture(scope="module")
def warping():
    m = WarpingNetwork(**_params("tiny.json", "warping_module_params"))
    m.load_state_dict(load_file(str(FIX / "weights" / "warping_module.safetensors")), strict=True)
    return m.eval()


def test_appearance_matches_reference(appearance, io):
    with torch.no_grad():
        f = appearance(io["input.I_s"])
    assert f.shape == io["F.feature_3d"].shape == (1, 4, 8, 16, 16)
    tol.close_network(f, io["F.feature_3d"], tol.LP_F)


def test_appearance_channels_last_input(appearance, io):
    """The pipeline feeds an NHWC-strided tensor; results must not depend on the strides."""
    x = io["input.pipeline_I_s"]
    x_nhwc = x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    with torch.no_grad():
        f = appearance(x_nhwc)
    assert f.shape == (1, 4, 8, 16, 16)
    tol.close_network(f, io["input.pipeline_f_s"], tol.LP_F)


_W_OUTPUTS = [("occlusion_map", "W.occlusion_map"), ("deformation", "W.deformation"),
              ("out", "W.out"), ("mask", "W.dense.mask")]


@pytest.mark.parametrize("sampler", ["torch", "gather"])
@pytest.mark.parametrize("broadcast", [False, True], ids=["feature_b2", "feature_b1_broadcast"])
def test_warping_matches_reference(warping, io, broadcast, sampler):
    """Both 3-D samplers (torch's grid_sample; the gathers MPS uses) reproduce the official module."""
    f = io["F.feature_3d"]
    if not broadcast:
        f = f.expand(2, -1, -1, -1, -1)
    warping.sampler = sampler
    try:
        with torch.no_grad():
            out = warping(f, io["W.in_kp_driving"], io["W.in_kp_source"])
    finally:
        warping.sampler = "auto"
    for key, ref in _W_OUTPUTS:
        assert out[key].shape == io[ref].shape, key
        tol.close_network(out[key], io[ref], tol.LP_W, what=key)


def test_warping_rejects_bad_batches(warping, io):
    f = io["F.feature_3d"].expand(2, -1, -1, -1, -1)
    kp = io["W.in_kp_driving"]
    with pytest.raises(ValueError):
        warping(f, torch.cat([kp, kp[:1]]), torch.cat([kp, kp[:1]]))


def test_warping_without_occlusion(io):
    params = dict(_params("tiny.json", "warping_module_params"), estimate_occlusion_map=False)
    m = WarpingNetwork(**params).eval()
    assert not any(k.startswith("dense_motion_network.occlusion") for k in m.state_dict())
    with torch.no_grad():
        out = m(io["F.feature_3d"], io["W.in_kp_driving"], io["W.in_kp_source"])
    assert out["occlusion_map"] is None
    assert out["out"].shape == (2, 8, 16, 16)


def _manifest_entries(name):
    manifest = json.loads((FIX / "checkpoint_manifest.json").read_text())
    entry = manifest["files"][name]
    return entry["num_parameters"], [(t["key"], list(t["shape"]), t["dtype"]) for t in entry["tensors"]]


@pytest.mark.parametrize("name,cls,key,nparams", [
    ("appearance_feature_extractor", AppearanceFeatureExtractor,
     "appearance_feature_extractor_params", 836_224),
    ("warping_module", WarpingNetwork, "warping_module_params", 45_529_829),
])
def test_fullsize_state_dict_matches_manifest(name, cls, key, nparams):
    with torch.device("meta"):  # shapes only, no allocation / init cost
        m = cls(**_params("liveportrait.json", key))
    expected_n, expected = _manifest_entries(name)
    got = [(k, list(v.shape), str(v.dtype).replace("torch.", "")) for k, v in m.state_dict().items()]
    assert got == expected
    assert sum(p.numel() for p in m.parameters()) == expected_n == nparams


def test_conv3d_by_depth_taps_is_the_3d_convolution():
    """The half-precision CPU route of the dense-motion mask conv (depth taps as output channels of one
    conv2d) computes the same sum as Conv3d: run in float32 it differs by summation order only."""
    from core.liveportrait.warping import _conv3d, _conv3d_by_depth_taps

    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv3d(6, 5, kernel_size=7, padding=3)
    x = torch.rand(2, 6, 5, 9, 8, generator=g) * 2 - 1
    with torch.no_grad():
        want = conv(x)
        got = _conv3d_by_depth_taps(conv, x)
        assert got.shape == want.shape and got.dtype == torch.float32
        # one output sums 6 x 7 x 7 x 7 products (+ the bias) of |x| <= 1 with the weights
        tol.close_sum(got, want, terms=6 * 343 + 1, magnitude=float(conv.weight.abs().sum(dim=(1, 2, 3, 4)).max()))
        # dispatch: float32 keeps Conv3d; bf16 on the CPU takes the depth-tap route, to bf16 rounding
        assert torch.equal(_conv3d(conv, x), want)
        half = _conv3d(conv, x.to(torch.bfloat16))
        assert half.dtype == torch.float32
        assert float((half - want).abs().max()) <= 0.02 * float(want.abs().max())


@pytest.mark.parametrize("packing", [True, False])
def test_conv_bn_half_precision_folds_and_packs(monkeypatch, packing):
    """The hourglass's conv + batch norm on the CPU in half precision: the norm folded into the weights, rounded
    to bf16 once, packed for oneDNN where the weight outweighs the activations. Against the float32 conv and norm
    the error is that of bf16 operands: each product loses at most 2^-8 of |w x| (two roundings of 2^-9), plus the
    final rounding of the result (2^-9 of |y|), bounded per output through conv(|x|, |w|)."""
    from core.liveportrait import warping
    from core.liveportrait.warping import _PACKED, _conv_bn

    monkeypatch.setitem(warping._PACKING, "mkldnn", packing)  # False: a torch without oneDNN's packing
    g = torch.Generator().manual_seed(0)
    for cin, cout, size in ((8, 64, (3, 2, 2)), (6, 4, (4, 8, 8))):  # weight > activations (packed), and not
        conv = torch.nn.Conv3d(cin, cout, kernel_size=3, padding=1).eval()
        norm = torch.nn.BatchNorm3d(cout).eval()
        with torch.no_grad():
            norm.running_mean.uniform_(-0.2, 0.2, generator=g)
            norm.running_var.uniform_(0.5, 1.5, generator=g)
            norm.weight.uniform_(0.8, 1.2, generator=g)
            norm.bias.uniform_(-0.1, 0.1, generator=g)
        x = torch.rand(1, cin, *size, generator=g) * 2 - 1
        with torch.inference_mode():
            want = norm(conv(x))
            scale = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).view(-1, 1, 1, 1, 1)
            size_of_terms = torch.nn.functional.conv3d(x.abs(), (conv.weight * scale).abs(), padding=1)
            for run in (lambda: _conv_bn(conv, norm, x.to(torch.bfloat16)),   # bf16 input
                        lambda: _conv_bn(conv, norm, x)):                     # float32 input under autocast
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    got = run()
                assert got.dtype == torch.bfloat16 and got.shape == want.shape
                bound = 2.0 ** -8 * (size_of_terms + (conv.bias * scale.view(-1)).abs().view(1, -1, 1, 1, 1)) \
                    + 2.0 ** -9 * want.abs() + 1e-6
                assert torch.all((got.float() - want).abs() <= bound)
            # new weights (load_state_dict writes in place) are packed again
            before = _conv_bn(conv, norm, x.to(torch.bfloat16))
            conv.load_state_dict({k: v * 2 for k, v in conv.state_dict().items()})
            after = _conv_bn(conv, norm, x.to(torch.bfloat16))
            assert not torch.equal(before, after) and conv in _PACKED
            # float32 without autocast, and training mode, are the plain modules
            assert torch.equal(_conv_bn(conv, norm, x), norm(conv(x)))
            norm.train()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert torch.equal(_conv_bn(conv, norm, x), norm(conv(x)))


def test_conv2d_over_depth_is_the_reshaped_conv():
    """The occlusion conv of a channels-last hourglass output: each depth slice convolved with its kernel slice,
    the D partial sums added in float32; in float32 it differs from conv(reshape) by summation order only."""
    from core.liveportrait.warping import _conv2d_over_depth

    g = torch.Generator().manual_seed(1)
    b, c, d, h, w = 2, 5, 4, 9, 8
    conv = torch.nn.Conv2d(c * d, 1, kernel_size=7, padding=3)
    x = (torch.rand(b, c, d, h, w, generator=g) * 2 - 1).contiguous(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        want = conv(x.reshape(b, c * d, h, w))
        got = _conv2d_over_depth(conv, x)
    assert got.shape == want.shape and got.dtype == torch.float32
    tol.close_sum(got, want, terms=c * d * 49 + 1,
                  magnitude=float(conv.weight.detach().abs().sum(dim=(1, 2, 3)).max()))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
def test_hourglass_blocks_stay_in_half_precision_on_the_cpu(layout):
    """Under bf16 autocast the down block's pool and the up block's upsampling run in bf16 (autocast would do
    them in float32), in the input's layout; the values are those of the float32 blocks to bf16 rounding."""
    from core.liveportrait.warping import DownBlock3d, UpBlock3d

    g = torch.Generator().manual_seed(2)
    x = (torch.rand(1, 6, 3, 8, 8, generator=g) * 2 - 1).contiguous(memory_format=layout)
    for block in (DownBlock3d(6, 16).eval(), UpBlock3d(6, 16).eval()):
        with torch.inference_mode():
            want = block(x)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got = block(x)
        assert got.dtype == torch.bfloat16 and got.shape == want.shape
        assert got.is_contiguous(memory_format=layout)
        # bf16 operands and result: a few parts in 2^8 of the largest term sums; the blocks' outputs are O(1)
        assert float((got.float() - want).abs().max()) <= 2.0 ** -6 * float(want.abs().max())
