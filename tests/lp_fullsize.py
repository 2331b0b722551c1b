"""Official-size LivePortrait modules with the reference data's seeded weights (numpy only, no download).

The rules are those of ``tests/fixtures/liveportrait/README`` section 2 (the reference harness's
seeded weights): per tensor a ``numpy.random.RandomState`` seeded with
``crc32(f"{seed}|{module}|{key}")``, uniform values drawn in float64 and cast to float32:

* ``num_batches_tracked`` zeros; ``running_mean`` U(-0.1, 0.1); ``running_var`` U(0.5, 1.5);
* tensors of 2+ dims U(-a, a) with ``a = sqrt(3 / fan_in)``; 1-D ``weight`` U(0.8, 1.2); ``bias`` U(-0.1, 0.1);
* spectral-norm vectors: 30 float64 power iterations on ``weight_orig`` from a seeded normal ``v``.

Only the appearance extractor, the warping module and the SPADE decoder are built here (what rendering
needs); the full-size reference outputs (``fullsize_seed0_compact.safetensors``) check them.
"""
from __future__ import annotations

import zlib
from functools import lru_cache

import numpy as np
import torch

from conftest import FIXTURES
from core.liveportrait.load import _build, preset

MANIFEST = FIXTURES / "liveportrait" / "checkpoint_manifest.json"
COMPACT = FIXTURES / "liveportrait" / "fullsize_seed0_compact.safetensors"
MODULES = {"appearance_feature_extractor": "appearance_feature_extractor_params",
           "warping_module": "warping_module_params", "spade_generator": "spade_generator_params"}


def _rng(seed: int, module: str, key: str) -> np.random.RandomState:
    return np.random.RandomState(zlib.crc32(f"{seed}|{module}|{key}".encode()) & 0xFFFFFFFF)


def _value(seed: int, module: str, key: str, shape) -> np.ndarray:
    rs = _rng(seed, module, key)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, dtype=np.int64)
    if key.endswith("running_mean"):
        return rs.uniform(-0.1, 0.1, shape)
    if key.endswith("running_var"):
        return rs.uniform(0.5, 1.5, shape)
    if len(shape) >= 2:
        a = np.sqrt(3.0 / float(np.prod(shape[1:])))
        return rs.uniform(-a, a, shape)
    if key.endswith("weight"):
        return rs.uniform(0.8, 1.2, shape)
    if key.endswith("bias"):
        return rs.uniform(-0.1, 0.1, shape)
    raise KeyError(f"no seeding rule for {module}.{key}")


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
