"""Seeded full-size weights for any module, by the reference harness's rules, and frame error measures.

The rules are those of ``tests/fixtures/liveportrait/README`` section 2: per tensor a
``numpy.random.RandomState`` seeded with ``crc32(f"{seed}|{module}|{key}")``, uniform values drawn in float64
and cast to float32: ``num_batches_tracked`` zeros; ``running_mean`` U(-0.1, 0.1); ``running_var``
U(0.5, 1.5); tensors of 2+ dims U(-a, a) with ``a = sqrt(3 / fan_in)``; 1-D ``weight`` U(0.8, 1.2); ``bias``
U(-0.1, 0.1). tests/lp_fullsize.py builds LivePortrait with them (its reference outputs were made so);
:func:`seed_module` gives any other network (FOM) the same kind of weights for the half-precision bounds.
"""
from __future__ import annotations

import math
import zlib

import numpy as np
import torch


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


def seed_module(module: torch.nn.Module, name: str, seed: int = 0) -> torch.nn.Module:
    """``module`` with every state-dict entry replaced by its seeded value (``name`` prefixes the keys)."""
    state = {key: torch.from_numpy(np.asarray(_value(seed, name, key, tuple(v.shape)))).to(v.dtype)
             for key, v in module.state_dict().items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


def frame_errors(got: torch.Tensor, want: torch.Tensor) -> dict:
    """Max and mean absolute error and PSNR (dB, peak 1) of frames in 0..1."""
    err = (got - want).abs()
    mse = float(err.square().mean())
    return {"max_abs": float(err.max()), "mean_abs": float(err.mean()),
            "psnr_db": 10 * math.log10(1.0 / max(mse, 1e-20))}
