"""Official-size LivePortrait modules with the reference data's seeded weights (numpy only, no download).

The per-tensor rules are in tests/seeded.py (the reference harness's, ``tests/fixtures/liveportrait/README``
section 2); spectral-norm vectors come from 30 float64 power iterations on ``weight_orig`` from a seeded
normal ``v``.

Only the appearance extractor, the warping module and the SPADE decoder are built here (what rendering
needs); the full-size reference outputs (``fullsize_seed0_compact.safetensors``) check them. The helpers below
render the reference's inputs with them the way users' renders run (tests/test_lp_fullsize.py,
bench/gpu_numerics.py).
"""
from __future__ import annotations

from functools import lru_cache
from types import SimpleNamespace

import numpy as np
import torch

from conftest import FIXTURES
from core.device import autocast, resolve_dtype
from core.liveportrait.load import LivePortraitModels, _build, preset
from core.liveportrait.render import LivePortraitSource, render_frames
from seeded import _rng, _value, frame_errors  # noqa: F401  (frame_errors: imported from here by the tests)

MANIFEST = FIXTURES / "liveportrait" / "checkpoint_manifest.json"
COMPACT = FIXTURES / "liveportrait" / "fullsize_seed0_compact.safetensors"
MODULES = {"appearance_feature_extractor": "appearance_feature_extractor_params",
           "warping_module": "warping_module_params", "spade_generator": "spade_generator_params"}


def _power_iteration(seed: int, module: str, prefix: str, weight: np.ndarray):
    w = weight.reshape(weight.shape[0], -1).astype(np.float64)
    v = _rng(seed, module, f"{prefix}.weight_v").standard_normal(w.shape[1])
    v /= np.linalg.norm(v)
    u = None
    for _ in range(30):
        u = w @ v
        u /= np.linalg.norm(u)
        v = w.T @ u
        v /= np.linalg.norm(v)
    return u, v


def seeded_state_dict(module: str, seed: int = 0) -> dict:
    import json
    tensors = json.loads(MANIFEST.read_text())["files"][module]["tensors"]
    out, vectors = {}, {}
    for t in tensors:
        key, shape = t["key"], tuple(t["shape"])
        if key.endswith(("weight_u", "weight_v")):
            continue
        out[key] = _value(seed, module, key, shape)
    for t in tensors:
        key = t["key"]
        if key.endswith("weight_u"):
            prefix = key[:-len(".weight_u")]
            vectors[prefix] = _power_iteration(seed, module, prefix, out[f"{prefix}.weight_orig"].astype(np.float32))
    for prefix, (u, v) in vectors.items():
        out[f"{prefix}.weight_u"], out[f"{prefix}.weight_v"] = u, v
    return {t["key"]: torch.from_numpy(np.asarray(out[t["key"]]).astype(
        np.int64 if t["dtype"] == "int64" else np.float32)) for t in tensors}


@lru_cache(maxsize=None)
def seeded_module(module: str, seed: int = 0) -> torch.nn.Module:
    """The official-size ``module`` (F, W or G) with the seeded weights, in eval mode."""
    m = _build(module, preset("liveportrait")["model_params"][MODULES[module]])
    m.load_state_dict(seeded_state_dict(module, seed), strict=True)
    return m.eval()


def seeded_nets() -> dict:
    """``{"F", "W", "G"}``: the seeded modules, the decoder on its inference path (the one users run)."""
    g = seeded_module("spade_generator")
    g.optimize_for_inference()
    return {"F": seeded_module("appearance_feature_extractor"), "W": seeded_module("warping_module"), "G": g}


def source_image(ref: dict) -> torch.Tensor:
    """The reference's source face, ``[1,3,256,256]`` in 0..1."""
    return ref["input.I_s_u8"].permute(2, 0, 1).unsqueeze(0).float() / 255


def render_seeded(nets: dict, ref: dict, device="cpu", precision: str = "fp32") -> torch.Tensor:
    """The source volume and the reference's two driving frames in ``precision`` on ``device``, as
    prepare_source and render_frames make them: ``[2,3,512,512]`` float32 on the CPU. Moves the nets there."""
    dev = torch.device(device)
    for m in nets.values():
        m.to(dev)
    with torch.inference_mode(), autocast(dev, resolve_dtype(precision, dev)):
        feature = nets["F"](source_image(ref).to(dev))
    models = LivePortraitModels(nets["F"], None, nets["W"], nets["G"], None, config=preset("liveportrait"))
    source = LivePortraitSource(feature_3d=feature, motion=SimpleNamespace(x_s=ref["W.in_kp_source"][:1]))
    return torch.cat(list(render_frames(models, source, ref["W.in_kp_driving"], batch_size=2, device=dev,
                                        precision=precision)))
