"""Loading JoyVASA's motion generator.

* Official ``motion_generator_hubert_chinese.pt`` (HF ``jdh-algo/JoyVASA``,
  ``motion_generator/``): ``torch.save({'args': argparse.Namespace, 'model': state_dict, 'iter': int})``,
  read by :func:`core.weights.load_checkpoint` (weights only; ``Namespace`` and paths allow-listed).
* A flat safetensors twin: the ``model`` tensors with or without the ``model.`` prefix (what
  :func:`core.weights.convert_to_safetensors` writes). An optional ``joyvasa_config`` JSON entry in
  the safetensors metadata gives the sizes explicitly.

The official loader pops ``denoising_net.TE.pe`` (recomputed) and loads with ``strict=False``; here
every other key and shape is checked strictly, ``TE.pe`` is always recomputed and ``PE.pe`` is
taken from the file when present (else computed: it is the same sinusoid table). HuBERT's
weight-norm parameters are accepted under both spellings: ``weight_g``/``weight_v`` (older torch)
and ``parametrizations.weight.original0``/``original1``.

Sizes are inferred from the tensor shapes (the number of HuBERT attention heads is not visible
in shapes: 768-wide encoders use 64-dim heads, as chinese-hubert-base; pass ``config`` for
anything else), with ``fps``/``pad_mode`` from the checkpoint's ``args`` when present.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ...errors import CheckpointError
from ...weights import check_state_dict, load_checkpoint, looks_like
from .model import JoyVASA, hubert_base_config, make_config

TE_KEY = "denoising_net.TE.pe"
PE_KEY = "denoising_net.PE.pe"
_WN_NEW = ("parametrizations.weight.original0", "parametrizations.weight.original1")
_WN_OLD = ("weight_g", "weight_v")


def read_checkpoint(path: os.PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """``(state_dict, args)`` of an official ``.pt`` or a safetensors twin (args may be empty)."""
    path = Path(path)
    obj = load_checkpoint(path)
    args: Dict[str, Any] = {}
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        state = dict(obj["model"])
        raw_args = obj.get("args")
        if raw_args is not None:
            args = dict(vars(raw_args)) if hasattr(raw_args, "__dict__") else dict(raw_args) \
                if isinstance(raw_args, Mapping) else {}
    elif isinstance(obj, Mapping):
        state = dict(obj)
        if any(isinstance(k, str) and k.startswith("model.") for k in state):
            state = {k[len("model."):]: v for k, v in state.items() if isinstance(k, str) and k.startswith("model.")}
        if path.suffix.lower() == ".safetensors":
            args = _safetensors_config(path)
    else:
        raise CheckpointError(f"{path.name}: not a JoyVASA motion generator (a {type(obj).__name__}, "
                              f"expected a dict with 'model' weights)")
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}
    if not state:
        raise CheckpointError(f"{path.name}: holds no JoyVASA weights")
    return state, args


def _safetensors_config(path: Path) -> Dict[str, Any]:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception:  # pragma: no cover - load_checkpoint already read it
        return {}
    text = meta.get("joyvasa_config")
    if not text:
        return {}
    try:
        return {"config": json.loads(text)}
    except ValueError as exc:
        raise CheckpointError(f"{path.name}: unreadable 'joyvasa_config' metadata: {exc}") from exc


def map_weight_norm(state: Mapping[str, torch.Tensor], new_style: bool = True) -> Dict[str, torch.Tensor]:
    """Rename HuBERT's positional-conv weight-norm keys to one spelling (new = parametrizations)."""
    src, dst = (_WN_OLD, _WN_NEW) if new_style else (_WN_NEW, _WN_OLD)
    out = {}
    for k, v in state.items():
        for a, b in zip(src, dst):
            if k.endswith("pos_conv_embed.conv." + a):
                k = k[: -len(a)] + b
                break
        out[k] = v
    return out


def _shape(state: Mapping[str, torch.Tensor], key: str, what: str) -> Tuple[int, ...]:
    if key not in state:
        raise CheckpointError(f"not a JoyVASA motion generator: '{key}' ({what}) is missing")
    return tuple(state[key].shape)


def infer_config(state: Mapping[str, torch.Tensor], args: Optional[Mapping[str, Any]] = None,
                 heads: Optional[int] = None) -> Dict[str, Any]:
    """Model sizes from the state dict shapes (``args`` for fps / pad mode; ``heads`` = HuBERT's
    attention heads when known)."""
    args = dict(args or {})
    state = map_weight_norm(state)
    _, lp, m = _shape(state, "start_motion_feat", "learned start motion")
    d, m_in = _shape(state, "denoising_net.feature_proj.weight", "feature projection")
    n_layers = 1 + max((int(mt.group(1)) for k in state
                        if (mt := re.match(r"denoising_net\.transformer\.layers\.(\d+)\.", k))), default=-1)
    ff = _shape(state, "denoising_net.transformer.layers.0.linear1.weight", "decoder feed-forward")[0]
    cfg: Dict[str, Any] = {
        "motion_feat_dim": m, "n_prev_motions": lp, "feature_dim": d, "n_layers": n_layers, "ff_dim": ff,
        "use_indicator": m_in == m + 1, "n_heads": 8,
    }
    if "denoising_net.alignment_mask" in state:
        cfg["n_motions"] = int(state["denoising_net.alignment_mask"].shape[0]) - lp
    elif args.get("n_motions"):
        cfg["n_motions"] = int(args["n_motions"])
    if "diffusion_sched.betas" in state:
        cfg["n_diff_steps"] = int(state["diffusion_sched.betas"].shape[0]) - 1
    if PE_KEY in state:
        cfg["pe_max_len"] = int(state[PE_KEY].shape[1])
    if TE_KEY in state:
        cfg["te_max_len"] = int(state[TE_KEY].shape[1])
    for key in ("fps", "pad_mode", "diff_schedule"):
        if args.get(key) not in (None, ""):
            cfg[key] = int(args[key]) if key == "fps" else str(args[key])
    hub = hubert_base_config()
    n_conv = 1 + max((int(mt.group(1)) for k in state
                      if (mt := re.match(r"audio_encoder\.feature_extractor\.conv_layers\.(\d+)\.conv\.weight$", k))),
                     default=-1)
    if n_conv <= 0:
        raise CheckpointError("not a JoyVASA motion generator: no audio_encoder.feature_extractor weights")
    conv = [tuple(state[f"audio_encoder.feature_extractor.conv_layers.{i}.conv.weight"].shape) for i in range(n_conv)]
    hidden, _ = _shape(state, "audio_encoder.feature_projection.projection.weight", "HuBERT feature projection")
    pos = _shape(state, "audio_encoder.encoder.pos_conv_embed.conv." + _WN_NEW[1], "HuBERT positional conv")
    n_hub = 1 + max((int(mt.group(1)) for k in state
                     if (mt := re.match(r"audio_encoder\.encoder\.layers\.(\d+)\.", k))), default=-1)
    hub.update({
        "hidden_size": hidden, "num_hidden_layers": n_hub, "num_feat_extract_layers": n_conv,
        "conv_dim": [c[0] for c in conv], "conv_kernel": [c[2] for c in conv],
        "conv_bias": "audio_encoder.feature_extractor.conv_layers.0.conv.bias" in state,
        "num_conv_pos_embeddings": pos[2], "num_conv_pos_embedding_groups": hidden // pos[1],
        "intermediate_size": _shape(state, "audio_encoder.encoder.layers.0.feed_forward.intermediate_dense.weight",
                                    "HuBERT feed-forward")[0],
        "feat_proj_layer_norm": "audio_encoder.feature_projection.layer_norm.weight" in state,
        "feat_extract_norm": "layer" if "audio_encoder.feature_extractor.conv_layers.1.layer_norm.weight" in state
        else "group",
    })
    if len(hub["conv_stride"]) != n_conv:
        raise CheckpointError(f"HuBERT with {n_conv} conv layers: pass an explicit config (strides unknown)")
    if heads:
        hub["num_attention_heads"] = int(heads)
    elif hidden % 64:
        raise CheckpointError(f"HuBERT width {hidden} is not the released 768: the number of attention heads "
                              f"cannot be read from the weights; pass config={{'hubert': {{'num_attention_heads': "
                              f"...}}}} (or store it as 'joyvasa_config' safetensors metadata)")
    else:
        hub["num_attention_heads"] = hidden // 64
    cfg["hubert"] = hub
    return make_config(cfg)


def _explicit_heads(explicit: Optional[Mapping[str, Any]]) -> Optional[int]:
    src = dict(explicit or {})
    if isinstance(src.get("model"), Mapping):
        src = dict(src["model"])
    hub = src.get("hubert")
    return int(hub["num_attention_heads"]) if isinstance(hub, Mapping) and hub.get("num_attention_heads") else None


def _merge(inferred: Dict[str, Any], explicit: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
    if not explicit:
        return inferred
    src = dict(explicit)
    if isinstance(src.get("model"), Mapping):
        src = dict(src["model"])
    out = dict(inferred)
    out["hubert"] = dict(inferred["hubert"])
    if isinstance(src.get("hubert"), Mapping):
        out["hubert"].update(src["hubert"])
    for k, v in src.items():
        if k != "hubert" and k in out and v is not None:
            out[k] = v
    if "mlp_ratio" in src and "ff_dim" not in src:
        out["ff_dim"] = int(src["mlp_ratio"]) * int(out["feature_dim"])
    return make_config(out)


def prepare_state(model: JoyVASA, state: Mapping[str, torch.Tensor], label: str) -> Dict[str, torch.Tensor]:
    """The file's tensors renamed/completed for ``model`` and strictly checked (raises CheckpointError)."""
    expected = model.state_dict()
    new_style = any(k.endswith(_WN_NEW[0]) for k in expected)
    state = map_weight_norm(state, new_style=new_style)
    state.pop(TE_KEY, None)  # recomputed, as the official loader does
    state[TE_KEY] = expected[TE_KEY]
    if PE_KEY not in state:
        state[PE_KEY] = expected[PE_KEY]
    check_state_dict(model, state, label)
    bad = [k for k, v in state.items()
           if v.is_floating_point() and v.device.type != "meta" and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{label}: non-finite values in {', '.join(bad[:5])} (corrupt file?)")
    return state


def load_joyvasa(path: os.PathLike, pe_mode: str = "constant_row", config: Optional[Mapping[str, Any]] = None,
                 device="cpu") -> JoyVASA:
    """The motion generator from an official ``.pt`` or a safetensors twin (eval mode, float32).

    ``pe_mode``: ``"constant_row"`` for the released weights (trained before the official PE fix),
    ``"sinusoidal"`` for weights trained with the current official code."""
    path = Path(path)
    state, args = read_checkpoint(path)
    explicit = config if config is not None else args.get("config")
    try:
        cfg = _merge(infer_config(state, args, _explicit_heads(explicit)), explicit)
    except CheckpointError as exc:
        hint = looks_like(state, "joyvasa")
        raise CheckpointError(f"{path.name}: {exc}" + (f".{hint}" if hint else "")) from exc
    except (KeyError, IndexError, ValueError, TypeError) as exc:
        hint = looks_like(state, "joyvasa")
        raise CheckpointError(f"{path.name}: not a JoyVASA motion generator ({type(exc).__name__}: {exc})"
                              + (f".{hint}" if hint else "")) from exc
    model = JoyVASA(cfg, pe_mode=pe_mode)
    state = prepare_state(model, state, f"{path.name} (JoyVASA motion generator)")
    model.load_state_dict(state, strict=True)
    model.source_args = {k: (str(v) if isinstance(v, Path) else v) for k, v in args.items() if k != "config"}
    return model.to(device).eval()


__all__ = ["infer_config", "load_joyvasa", "map_weight_norm", "prepare_state", "read_checkpoint"]
