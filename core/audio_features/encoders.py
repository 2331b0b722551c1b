"""Speech encoders (HuBERT through transformers, Ditto's ONNX HuBERT through onnxruntime) and the
two registries AudioToEmbedding chooses from: :data:`ENCODERS` and :data:`CHUNKINGS`.

An encoder is a callable ``encoder(chunks [N, S] float32) -> [N, F, D]`` with attributes
``name``, ``dim``, ``sample_rate`` and ``spec`` (a dict merged into the embeddings' spec). A
chunking turns a whole 16 kHz mono waveform into per-video-frame features with an encoder.
Other model families (JoyVASA) register their own with :func:`register_encoder` /
:func:`register_chunking`.
"""
from __future__ import annotations

import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from .. import weights as W
from ..cache import CACHE, file_key
from ..device import resolve_device, resolve_dtype
from ..errors import CheckpointError, InputError, MissingDependencyError, WeightsMissingError
from . import ditto

HUBERT_NAME = "hubert-large-ls960-ft"
HUBERT_CONFIG_ID = "hubert-large-ls960-ft/config"
HUBERT_WEIGHTS_ID = "hubert-large-ls960-ft/weights"
DITTO_ONNX_NAME = "ditto-onnx"
DITTO_ONNX_ID = "ditto/hubert_streaming_fix_kv"
CACHE_FAMILY = "audio_encoder"
LAST = "last_hidden_state"


# --------------------------------------------------------------------------- registries
@dataclass
class EncoderInfo:
    """One selectable encoder. ``load(device, dtype, **options)`` returns the encoder callable."""

    name: str
    load: Callable[..., Callable]
    dim: int
    sample_rate: int = 16000
    description: str = ""
    #: options ``load`` understands besides device/dtype (others are refused with a clear error)
    options: Tuple[str, ...] = ()


@dataclass
class ChunkingInfo:
    """One selectable chunking. ``run(samples [T], encoder, batch_size=, progress=)``
    returns features ``[rows, D]`` (row n = video frame n), or ``(features, num_frames)``."""

    name: str
    run: Callable[..., Any]
    fps: float = 25.0
    sample_rate: int = 16000
    description: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)


ENCODERS: Dict[str, EncoderInfo] = {}
CHUNKINGS: Dict[str, ChunkingInfo] = {}


def register_encoder(info: EncoderInfo, replace: bool = False) -> EncoderInfo:
    if info.name in ENCODERS and not replace:
        raise ValueError(f"audio encoder {info.name!r} is already registered")
    ENCODERS[info.name] = info
    return info


def register_chunking(info: ChunkingInfo, replace: bool = False) -> ChunkingInfo:
    if info.name in CHUNKINGS and not replace:
        raise ValueError(f"audio chunking {info.name!r} is already registered")
    CHUNKINGS[info.name] = info
    return info


def encoder_info(name: str) -> EncoderInfo:
    try:
        return ENCODERS[name]
    except KeyError:
        raise InputError(f"unknown audio encoder {name!r}; choose one of: {', '.join(ENCODERS)}") from None


def chunking_info(name: str) -> ChunkingInfo:
    try:
        return CHUNKINGS[name]
    except KeyError:
        raise InputError(f"unknown audio chunking {name!r}; choose one of: {', '.join(CHUNKINGS)}") from None


def get_encoder(name: str = HUBERT_NAME, device="auto", precision="auto", **options) -> Callable:
    """The encoder callable registered as ``name``, loaded (cached) on ``device``/``precision``."""
    info = encoder_info(name)
    unknown = [k for k in options if k not in info.options]
    if unknown:
        raise InputError(f"audio encoder {name!r} does not take option(s) {unknown}; it takes {list(info.options)}")
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    return info.load(dev, dtype, **options)


# --------------------------------------------------------------------------- layers
_LAYER_RE = re.compile(r"^\s*(?:hidden_states\s*\[\s*(-?\d+)\s*\]|(-?\d+))\s*$")


def parse_layer(layer: Union[str, int, None]) -> Optional[int]:
    """``"last_hidden_state"``/None -> None; ``"hidden_states[i]"``, ``"i"`` or ``i`` -> i."""
    if layer is None or (isinstance(layer, str) and layer.strip() in ("", LAST)):
        return None
    if isinstance(layer, int):
        return layer
    m = _LAYER_RE.match(str(layer))
    if not m:
        raise InputError(f"audio encoder layer must be '{LAST}' or 'hidden_states[i]', got {layer!r}")
    return int(m.group(1) if m.group(1) is not None else m.group(2))


def layer_name(layer: Union[str, int, None]) -> str:
    idx = parse_layer(layer)
    return LAST if idx is None else f"hidden_states[{idx}]"


# --------------------------------------------------------------------------- HuBERT (transformers)
def _no_init_weights():
    """transformers' context that skips random initialisation (the checkpoint overwrites it)."""
    for mod in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            return __import__(mod, fromlist=["no_init_weights"]).no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def hubert_config(config_path: Path):
    from transformers import HubertConfig

    try:
        data = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{config_path}: not a readable HuBERT config.json: {exc}") from exc
    if data.get("model_type", "hubert") != "hubert":
        raise CheckpointError(f"{config_path}: model_type is {data.get('model_type')!r}, not 'hubert'; "
                              f"is it the config of facebook/hubert-large-ls960-ft?")
    return HubertConfig.from_dict(data)


_WEIGHT_NORM_NAMES = (("weight_g", "parametrizations.weight.original0"),
                      ("weight_v", "parametrizations.weight.original1"))


def hubert_state_dict(raw: Mapping[str, torch.Tensor], expected_keys) -> Dict[str, torch.Tensor]:
    """A HubertModel / HubertForCTC checkpoint -> HubertModel keys: ``hubert.`` prefix removed,
    CTC head (``lm_head``) and other heads dropped, weight-norm names (old ``weight_g/weight_v`` vs
    ``parametrizations.weight.original0/1``) mapped to what this torch/transformers expects."""
    expected = set(expected_keys)
    has_prefix = any(k.startswith("hubert.") for k in raw)
    out: Dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        if has_prefix:
            if not k.startswith("hubert."):
                continue  # lm_head.*, dropout, projector... of a task model
            k = k[len("hubert."):]
        if k not in expected:
            for old, new in _WEIGHT_NORM_NAMES:
                if k.endswith("." + old) and k[: -len(old)] + new in expected:
                    k = k[: -len(old)] + new
                elif k.endswith("." + new) and k[: -len(new)] + old in expected:
                    k = k[: -len(new)] + old
        out[k] = v
    return out


def build_hubert(config_path: Path, weights_path: Path):
    """``transformers.HubertModel`` from a config.json and a weights file (safetensors, or a
    ``.bin``/``.pth`` read with ``torch.load(weights_only=True)``): nothing pickled executes."""
    from transformers import HubertModel

    config = hubert_config(config_path)
    with _no_init_weights():
        model = HubertModel(config)
    raw = W.load_checkpoint(weights_path)
    if isinstance(raw, Mapping) and "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    raw = W.flatten_state(raw)
    state = hubert_state_dict(raw, model.state_dict().keys())
    W.check_state_dict(model, state, f"{Path(weights_path).name} (HuBERT)", ignore=("masked_spec_embed",))
    model.load_state_dict(state, strict=False)
    if "masked_spec_embed" not in state and getattr(model, "masked_spec_embed", None) is not None:
        with torch.no_grad():  # only used for training-time masking; keep it defined
            model.masked_spec_embed.zero_()
    return model.eval().requires_grad_(False)


def hubert_files(path: Optional[Union[str, Path]] = None, download: bool = True) -> Tuple[Path, Path]:
    """(config.json, weights) of HuBERT-large-ls960-ft.

    ``path``: a folder in Hugging Face layout (config.json + model.safetensors or
    pytorch_model.bin), or the weights file itself with config.json beside it; None = the
    weights manager (models/audio_encoders/hubert-large-ls960-ft/, downloaded when allowed).
    """
    if path is not None:
        p = Path(path).expanduser()
        folder = p if p.is_dir() else p.parent
        config = folder / "config.json"
        if p.is_file():
            weights = p
        else:
            names = [Path(n).name for n in W.model_file(HUBERT_WEIGHTS_ID).names]
            weights = next((folder / n for n in names if (folder / n).is_file()), folder / names[0])
        missing = [str(x) for x in (config, weights) if not x.is_file()]
        if missing:
            raise WeightsMissingError(
                f"HuBERT files not found: {', '.join(missing)}. A HuBERT folder needs config.json and "
                f"model.safetensors or pytorch_model.bin (Hugging Face layout), e.g. from "
                f"{W.model_file(HUBERT_WEIGHTS_ID).source_text()}")
        return config, weights
    found, errors = {}, []
    for fid in (HUBERT_CONFIG_ID, HUBERT_WEIGHTS_ID):
        try:
            found[fid] = W.resolve(fid, download=download)
        except WeightsMissingError as exc:
            errors.append(str(exc))
    if errors:
        raise WeightsMissingError("\n\n".join(errors))
    return found[HUBERT_CONFIG_ID], found[HUBERT_WEIGHTS_ID]


class _Captured(Exception):
    """Raised by a forward hook once the chosen layer ran: the later layers are skipped."""


class HubertEncoder:
    """HuBERT over fixed-size chunks -> one chosen layer ``[N, frames, D]``, on the model's device.

    ``layer``: ``"last_hidden_state"`` (default, what Ditto uses: the model's output; for the
    large, stable-layer-norm model = the final LayerNorm applied after the last transformer
    layer) or ``"hidden_states[i]"`` = the residual stream after ``i`` transformer layers
    (0 = the input of the first layer, after the positional convolution; negative counts from
    the end; never the final LayerNorm). Layers are captured with hooks, so the meaning does not
    depend on the transformers version (transformers 4 put the LayerNorm output in
    ``hidden_states[-1]``, transformers 5 does not), and the layers after ``i`` are not run.
    The waveform is used as is (no zero-mean/unit-variance normalisation, as in Ditto).
    """

    sample_rate = 16000

    def __init__(self, model, layer: Union[str, int, None] = LAST, name: str = HUBERT_NAME) -> None:
        self.model = model
        idx = parse_layer(layer)
        n_layers = len(model.encoder.layers)
        if idx is not None:
            if not -(n_layers + 1) <= idx <= n_layers:
                raise InputError(f"HuBERT has hidden_states[0..{n_layers}]; layer {layer_name(layer)!r} does not exist")
            idx = idx % (n_layers + 1)
        self.layer_index = idx
        self.layer = layer_name(idx)
        self.name = name
        self.dim = int(model.config.hidden_size)

    @property
    def spec(self) -> Dict[str, Any]:
        return {"encoder": self.name, "layer": self.layer, "dim": self.dim, "sample_rate": self.sample_rate}

    def _run_to_layer(self, x: torch.Tensor) -> torch.Tensor:
        layers = self.model.encoder.layers
        got: List[torch.Tensor] = []

        def keep(value):
            got.append(value[0] if isinstance(value, (tuple, list)) else value)
            raise _Captured

        if self.layer_index == 0:
            handle = layers[0].register_forward_pre_hook(lambda mod, args, kwargs: keep(args[0] if args else
                                                                                          kwargs["hidden_states"]),
                                                         with_kwargs=True)
        else:
            handle = layers[self.layer_index - 1].register_forward_hook(lambda mod, args, out: keep(out))
        try:
            self.model(x)
        except _Captured:
            pass
        finally:
            handle.remove()
        if not got:
            raise RuntimeError(f"HuBERT layer {self.layer} was not reached")
        return got[0]

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        p = next(self.model.parameters())
        x = torch.as_tensor(chunks).to(p.device, p.dtype)
        if x.ndim == 1:
            x = x[None]
        with torch.inference_mode():
            if self.layer_index is None:
                return self.model(x).last_hidden_state
            return self._run_to_layer(x)


def load_hubert(device, dtype, layer: Union[str, int, None] = LAST, path=None, download: bool = True,
                name: str = HUBERT_NAME) -> HubertEncoder:
    """A :class:`HubertEncoder` over the cached HubertModel (ComfyUI's memory manager sees it)."""
    config, weights = hubert_files(path, download)
    model = CACHE.get(CACHE_FAMILY, ("hubert",) + file_key(config) + file_key(weights),
                      lambda: build_hubert(config, weights), device, dtype,
                      info={"file": f"HuBERT ({Path(weights).parent.name}/{Path(weights).name})"})
    return HubertEncoder(model, layer, name)


# --------------------------------------------------------------------------- ONNX (onnxruntime)
def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError:
        raise MissingDependencyError(
            "The 'ditto-onnx' audio encoder runs Ditto's hubert_streaming_fix_kv.onnx and needs the optional "
            "package onnxruntime, which is not installed. Install it (pip install onnxruntime, or "
            "onnxruntime-gpu for CUDA) or choose the encoder 'hubert-large-ls960-ft' in AudioToEmbedding "
            "(PyTorch; needs config.json + pytorch_model.bin from "
            "https://huggingface.co/facebook/hubert-large-ls960-ft in models/audio_encoders/hubert-large-ls960-ft/)."
        ) from None
    return onnxruntime


class OnnxEncoder:
    """An ONNX speech encoder taking one chunk ``(1, S)`` float32 and returning ``(F, D)`` (or
    ``(1, F, D)``), like Ditto's ``hubert_streaming_fix_kv.onnx`` (``(1, 6480)`` -> ``(20, 1024)``).
    Chunks run one at a time, as Ditto runs them. fp32 only (the graph's own precision)."""

    sample_rate = 16000

    def __init__(self, path: Union[str, Path], device: Optional[torch.device] = None, name: str = DITTO_ONNX_NAME,
                 dim: int = 1024) -> None:
        ort = import_onnxruntime()
        device = device or torch.device("cpu")
        available = ort.get_available_providers()
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in available:
            idx = device.index if device.index is not None else 0
            providers = [("CUDAExecutionProvider", {"device_id": idx}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{Path(path).name}: onnxruntime could not load it (corrupt or truncated "
                                  f"download?): {exc}") from exc
        self.path = Path(path)
        self.name = name
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        out_shape = self.session.get_outputs()[0].shape
        self.dim = int(out_shape[-1]) if out_shape and isinstance(out_shape[-1], int) else dim
        self.layer = "onnx-output"

    @property
    def spec(self) -> Dict[str, Any]:
        return {"encoder": self.name, "layer": self.layer, "dim": self.dim, "sample_rate": self.sample_rate}

    def __call__(self, chunks: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(chunks).detach().to("cpu", torch.float32)
        if x.ndim == 1:
            x = x[None]
        outs = []
        for row in x.numpy():
            y = np.asarray(self.session.run(None, {self.input_name: row.reshape(1, -1)})[0])
            outs.append(torch.from_numpy(y.reshape(-1, y.shape[-1]).astype(np.float32, copy=False)))
        return torch.stack(outs)


def load_ditto_onnx(device, dtype, path=None, download: bool = True, layer: Union[str, None] = None) -> OnnxEncoder:
    if layer not in (None, "", LAST, "onnx-output"):
        raise InputError("the 'ditto-onnx' encoder has one fixed output; leave the layer at 'last_hidden_state'")
    import_onnxruntime()  # before a 1.4 GB download: say what is missing first
    file = W.resolve(DITTO_ONNX_ID, explicit=path, download=download)
    return CACHE.get(CACHE_FAMILY, ("onnx",) + file_key(file), lambda: OnnxEncoder(file, device), device,
                     torch.float32, info={"file": f"Ditto ONNX HuBERT ({file.name})"})


# --------------------------------------------------------------------------- built-ins
register_encoder(EncoderInfo(
    HUBERT_NAME, load_hubert, 1024,
    description="facebook/hubert-large-ls960-ft through transformers (PyTorch); Ditto's audio encoder",
    options=("layer", "path", "download")))
register_encoder(EncoderInfo(
    DITTO_ONNX_NAME, load_ditto_onnx, 1024,
    description="Ditto's released hubert_streaming_fix_kv.onnx through onnxruntime (optional package)",
    options=("layer", "path", "download")))

register_chunking(ChunkingInfo(
    "ditto-offline", ditto.ditto_offline_features, 25.0, 16000,
    description="Ditto offline: 6480-sample chunks every 5 frames from audio sample -2000; one row per video frame"))
register_chunking(ChunkingInfo(
    "ditto-online", ditto.ditto_online_features, 25.0, 16000,
    description="Ditto online/streaming: 1920-sample zero prefix, a chunk every 3200 samples (80 samples later "
                "than offline); whole chunks, so a few rows past the end of the audio"))


def list_encoders() -> List[str]:
    return list(ENCODERS)


def list_chunkings() -> List[str]:
    return list(CHUNKINGS)
