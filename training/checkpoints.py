"""What a training run writes and reads back: the EMA of the weights, the resumable training state
and the final checkpoint.

* :class:`EMA`: torch's :class:`~torch.optim.swa_utils.AveragedModel` with
  :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`.
* The training state (``train_state.pt``, :data:`STATE_FORMAT`): model, EMA, optimiser, grad
  scaler, step, RNG states and configs, written atomically; loaded with ``weights_only=True``.
* The checkpoint (:func:`export_checkpoint`): LMDM weights under their official key names as
  safetensors, with the metadata :func:`~..core.motion.ditto.load.load_lmdm` reads
  (``num_heads``) plus the model config, the audio-feature spec and the condition layout.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..core.errors import CheckpointError
from ..core.files import atomic_write
from ..core.motion.ditto.model import LMDM
from .common import AUDIO_SPEC, COND_LAYOUT, PathLike

STATE_FORMAT = "talkinghead.ditto-train-state"
CHECKPOINT_FORMAT = "talkinghead.ditto-lmdm"
STATE_NAME = "train_state.pt"


# =========================================================================== EMA
class EMA(AveragedModel):
    """Exponential moving average of a model's parameters.

    * The average starts as the model's weights at construction (the first
      :meth:`update_parameters` of an ``AveragedModel`` copies them). The update after optimiser
      step ``n`` (then ``n_averaged == n``) moves it ``1 - d`` of the way to the model's weights with
      ``d = min(decay, (1 + n) / (10 + n))`` when ``warmup`` (the average follows the model early
      on), else ``d = decay``; :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn` does the
      blending (one ``torch._foreach_lerp_`` over all parameters).
    * Buffers are copied from the model, not averaged (``use_buffers=False``). For LMDM this
      changes nothing: its buffers (the cosine schedule, the rotary frequencies) never change, so
      an average of them is the same values; copying is also the only safe choice for a
      non-float buffer, which the EMA blend would round.
    * :meth:`weights` is the averaged state dict under the model's own key names (what a
      checkpoint holds), :meth:`load_weights` puts one back when a run resumes.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999, warmup: bool = True):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"the EMA decay must be in [0, 1], got {decay}")
        super().__init__(model, multi_avg_fn=self._blend, use_buffers=False)
        self.decay, self.warmup = float(decay), bool(warmup)
        self.update_parameters(model)        # n_averaged 0 -> 1: the average is the model's weights

    def decay_at(self, n: int) -> float:
        """The decay of the update made after optimiser step ``n``."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def _blend(self, averaged: List[torch.Tensor], current: List[torch.Tensor], n_averaged) -> None:
        # ``n_averaged`` is the counter copied to the parameters' device; the buffer itself lives on
        # the CPU, so reading it costs no device sync
        get_ema_multi_avg_fn(self.decay_at(int(self.n_averaged)))(averaged, current, n_averaged)

    def weights(self) -> Dict[str, torch.Tensor]:
        """The averaged weights: the model's state dict (its key names), detached CPU copies."""
        return {k: v.detach().cpu().clone() for k, v in self.module.state_dict().items()}

    def load_weights(self, state: Mapping[str, torch.Tensor], step: int) -> None:
        """Continue from ``state`` (:meth:`weights` of a run stopped after optimiser step ``step``)."""
        own = self.module.state_dict()
        mismatch = set(own) ^ set(state)
        if mismatch:
            raise CheckpointError(f"EMA state does not match the model: {sorted(mismatch)[:5]}")
        self.module.load_state_dict({k: torch.as_tensor(state[k]) for k in own})
        self.n_averaged.fill_(int(step) + 1)   # the copy at construction, then one update per step


# =========================================================================== checkpoints
def export_checkpoint(state: Mapping[str, torch.Tensor], config: Mapping[str, int], path: PathLike,
                      audio_spec: Optional[Mapping] = None, extra: Optional[Mapping[str, Any]] = None) -> Path:
    """Write LMDM weights (official key names, no prefix) as safetensors with the metadata
    :func:`~..core.motion.ditto.load.load_lmdm` reads (``num_heads``) plus the model config, the
    audio-feature spec and the condition layout (JSON strings)."""
    from safetensors.torch import save_file

    with torch.device("meta"):      # only the key names are needed
        ref = list(LMDM(**config).state_dict())
    missing = set(ref) ^ set(state)
    if missing:
        raise CheckpointError(f"weights do not match an LMDM of config {dict(config)}: {sorted(missing)[:5]}")
    tensors = {k: state[k].detach().to("cpu", torch.float32).contiguous().clone() for k in ref}
    meta = {"format": CHECKPOINT_FORMAT, "num_heads": str(int(config["num_heads"])),
            "model_config": json.dumps({k: int(v) for k, v in config.items()}),
            "audio_features": json.dumps(dict(audio_spec or AUDIO_SPEC)), "cond_layout": COND_LAYOUT,
            "motion_layout": "scale-1 1 | pitch 66 | yaw 66 | roll 66 | t 3 | exp 63",
            "prediction": "x0", "schedule": "cosine 1000 (s=8e-3)"}
    if extra:
        meta["training"] = json.dumps(dict(extra), default=str)
    path = Path(path)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def rng_state() -> Dict[str, Any]:
    """The torch, Python, NumPy (and CUDA) RNG states, as tensors and plain values (``weights_only``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    st = {"torch": torch.get_rng_state(), "python": random.getstate(),
          "numpy": {"kind": kind, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                    "has_gauss": int(has_gauss), "cached": float(cached)}}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (the CUDA states only on the same number of GPUs)."""
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = st["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def save_train_state(path: Path, state: Mapping[str, Any]) -> None:
    """Write a training state atomically (a crash never leaves half a state under ``path``)."""
    with atomic_write(path) as tmp:
        torch.save(dict(state), str(tmp))


def load_train_state(path: PathLike) -> Dict[str, Any]:
    """A training state written by ``train`` (loaded without executing pickled code)."""
    path = Path(path)
    try:
        st = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path.name}: not a readable training state: {exc}") from exc
    if not isinstance(st, Mapping) or st.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path.name} is not a Ditto training state written by train()")
    return dict(st)


def export_from_state(state_path: PathLike, out: PathLike, use_ema: bool = True) -> Path:
    """The EMA (or raw, ``use_ema=False``) weights of a training state as a safetensors checkpoint."""
    st = load_train_state(state_path)
    cfg = json.loads(st["train_config"])
    return export_checkpoint(st["ema"] if use_ema else st["model"], st["model_config"], out,
                             cfg.get("audio_spec"), {"step": int(st["step"]), "weights": "ema" if use_ema else "raw",
                                                     "init": cfg.get("init")})


__all__ = ["CHECKPOINT_FORMAT", "EMA", "STATE_FORMAT", "STATE_NAME", "export_checkpoint", "export_from_state",
           "load_train_state", "rng_state", "save_train_state", "set_rng_state"]
