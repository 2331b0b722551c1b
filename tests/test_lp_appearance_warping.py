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


@pytest.mark.parametrize("broadcast", [False, True], ids=["feature_b2", "feature_b1_broadcast"])
def test_warping_matches_reference(warping, io, broadcast):
    f = io["F.feature_3d"]
    if not broadcast:
        f = f.expand(2, -1, -1, -1, -1)
    with torch.no_grad():
        out = warping(f, io["W.in_kp_driving"], io["W.in_kp_source"])
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
