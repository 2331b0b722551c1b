"""Loading the official SDA model files (``grid.dat``, ``timit.dat``, ``crema.dat``) and their
safetensors twin.

Official file
    A torch legacy pickle of a ``model_dict``: ``encoder`` / ``encoder_id`` / ``generator`` state
    dicts, the scalars of :data:`~.model.SCALAR_KEYS` and ``mean_face`` (a numpy ``[68, 2]`` (x, y)
    template). It is read with :func:`core.weights.load_checkpoint` (``weights_only`` with numpy
    allow-listed): no pickled code runs. Keys VideoAnimator does not read are ignored.

Safetensors twin (written by :func:`convert_to_safetensors`)
    Flat tensors ``encoder.*``, ``encoder_id.*``, ``generator.*`` (official key names) and
    ``mean_face`` (float64 ``[68, 2]``); the scalars are a JSON object in the safetensors
    *metadata* under the key ``"sda_config"`` (e.g. ``{"img_size": [128, 96], "audio_rate": 50000,
    ...}``), because safetensors metadata is the place for plain settings and keeps the tensor
    set identical to the official state dicts. A twin without that metadata (such as a plain
    :func:`core.weights.convert_to_safetensors` output) loads when the scalars are given as
    ``config=``.

Every load is strict: keys and shapes are checked against the model built from the file's
scalars before anything is copied, and mismatches raise :class:`~core.errors.CheckpointError`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from ..errors import CheckpointError
from ..files import atomic_write
from ..weights import check_state_dict, load_checkpoint
from .model import SCALAR_KEYS, SDAConfig, SDAModel

#: safetensors metadata key holding the JSON scalars
META_KEY = "sda_config"
MODULES = ("encoder", "encoder_id", "generator")
ConfigLike = Union[SDAConfig, Mapping[str, Any], None]


def _config(config: ConfigLike, what: str) -> Optional[SDAConfig]:
    if config is None or isinstance(config, SDAConfig):
        return config
    return SDAConfig.from_dict(config, what)


def _mean_face(value, what: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise CheckpointError(f"{what}: 'mean_face' is not a numeric array") from None
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] < 46 or not np.isfinite(arr).all():
        raise CheckpointError(f"{what}: 'mean_face' must be a finite [68, 2] landmark template, "
                              f"got shape {arr.shape}")
    return arr


def read_checkpoint(path: os.PathLike, config: ConfigLike = None
                    ) -> Tuple[SDAConfig, np.ndarray, Dict[str, Dict[str, torch.Tensor]]]:
    """``(config, mean_face, {"encoder": sd, "encoder_id": sd, "generator": sd})`` of an official
    ``.dat`` or a safetensors twin. ``config`` (an :class:`SDAConfig` or a dict of the scalars)
    overrides the file's scalars and is required for a twin without ``sda_config`` metadata."""
    path = Path(path)
    what = f"SDA model file '{path.name}'"
    raw = load_checkpoint(path)  # CheckpointError for missing / corrupt / code-carrying files
    if path.suffix.lower() == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        scalars = None
        if META_KEY in meta:
            try:
                scalars = json.loads(meta[META_KEY])
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{what}: its '{META_KEY}' metadata is not valid JSON: {exc}") from exc
        cfg = _config(config, what) or (SDAConfig.from_dict(scalars, what) if isinstance(scalars, dict) else None)
        if cfg is None:
            raise CheckpointError(
                f"{what} has no SDA settings (safetensors metadata '{META_KEY}'). Convert the official grid.dat "
                f"with core.sda.convert_to_safetensors, or pass the model settings ({', '.join(SCALAR_KEYS)}).")
        if "mean_face" not in raw:
            raise CheckpointError(f"{what} has no 'mean_face' tensor (the face alignment template)")
        states = {m: {} for m in MODULES}
        unexpected = []
        for key, value in raw.items():
            head, _, rest = key.partition(".")
            if head in states and rest:
                states[head][rest] = value
            elif key != "mean_face":
                unexpected.append(key)
        if unexpected:
            raise CheckpointError(f"{what} has tensors outside encoder./encoder_id./generator.: {unexpected[:8]}")
        return cfg, _mean_face(raw["mean_face"], what), states

    if not isinstance(raw, Mapping):
        raise CheckpointError(f"{what} holds a {type(raw).__name__}, not the official model_dict")
    for m in MODULES:
        if not isinstance(raw.get(m), Mapping):
            raise CheckpointError(f"{what} has no '{m}' weights (top-level keys: {sorted(map(str, raw))[:12]}); "
                                  f"it is not a speech-driven-animation model file")
    if "mean_face" not in raw:
        raise CheckpointError(f"{what} has no 'mean_face' (the face alignment template)")
    cfg = _config(config, what) or SDAConfig.from_dict(raw, what)
    states = {}
    for m in MODULES:
        bad = [k for k, v in raw[m].items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"{what}: '{m}' holds non-tensor entries {bad[:5]}")
        states[m] = dict(raw[m])
    return cfg, _mean_face(raw["mean_face"], what), states


def build_model(config: ConfigLike, mean_face: Optional[np.ndarray] = None, device="meta") -> SDAModel:
    """The networks for ``config`` (default on the meta device: shapes only, no memory)."""
    cfg = _config(config, "SDA settings")
    with torch.device(device):
        return SDAModel(cfg, mean_face)


def load_sda(path: os.PathLike, device="cpu", config: ConfigLike = None) -> SDAModel:
    """An :class:`~.model.SDAModel` in eval mode on ``device`` from an official ``.dat`` or its
    safetensors twin (see the module docstring). Raises :class:`CheckpointError` naming the file
    for unreadable files, missing settings, and any missing / unexpected / misshaped tensor."""
    path = Path(path)
    cfg, mean_face, states = read_checkpoint(path, config)
    model = build_model(cfg, mean_face, "meta")
    for name in MODULES:
        module = getattr(model, name)
        check_state_dict(module, states[name], f"SDA '{name}' weights in '{path.name}'")
        expected = module.state_dict()
        for key, value in states[name].items():
            if value.is_floating_point() != expected[key].is_floating_point():
                raise CheckpointError(f"SDA '{name}' weights in '{path.name}': '{key}' has dtype {value.dtype}")
        module.load_state_dict(states[name], strict=True, assign=True)
    model = model.to(device=torch.device(device) if not isinstance(device, torch.device) else device,
                     dtype=torch.float32)
    for rnn in (model.encoder.rnn, model.generator.rnn_noise):
        if rnn is not None:
            rnn.flatten_parameters()
    return model.eval().requires_grad_(False)


def convert_to_safetensors(src: os.PathLike, dst: Optional[os.PathLike] = None, config: ConfigLike = None) -> Path:
    """Write the safetensors twin of an official ``.dat`` (atomic): flat official keys,
    ``mean_face`` and the scalars as ``sda_config`` metadata. Returns the written path."""
    from safetensors.torch import save_file

    src = Path(src)
    dst = Path(dst) if dst else src.with_suffix(".safetensors")
    cfg, mean_face, states = read_checkpoint(src, config)
    flat = {f"{m}.{k}": v.detach().to("cpu").contiguous().clone() for m in MODULES for k, v in states[m].items()}
    flat["mean_face"] = torch.from_numpy(np.ascontiguousarray(mean_face, dtype=np.float64))
    with atomic_write(dst) as tmp:
        save_file(flat, str(tmp), metadata={META_KEY: json.dumps(cfg.to_dict()), "converted_from": src.name})
    return dst


__all__ = ["META_KEY", "build_model", "convert_to_safetensors", "load_sda", "read_checkpoint"]
