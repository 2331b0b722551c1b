"""The training loop: :class:`TrainConfig`, the model to train (:func:`build_model`) and
:func:`train`.

* **Optimiser**: AdamW (lr 1e-4, weight decay 0.02; the reference used Adan with those values), an
  EMA of the weights (:class:`~.checkpoints.EMA`), autocast (bf16/fp16) on CUDA, gradient
  clipping, a resumable training state written atomically, and the final EMA weights as a
  safetensors checkpoint that :func:`~..core.motion.ditto.load.load_lmdm` reads directly
  (``num_heads`` in its metadata).
* Randomness is derived from ``(seed, step)`` (window order, ``sc`` frame, ``t``, noise, guidance
  drop), so a run resumed from its training state continues exactly as if never interrupted.
* The official network has dropout 0.1 inside its transformer layers;
  :class:`~..core.motion.ditto.model.LMDM` has no dropout modules (inference only), so training
  here runs without dropout.
"""
from __future__ import annotations

import dataclasses
import importlib.machinery
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch.utils.data import DataLoader

from ..core.errors import InputError
from ..core.motion.ditto.compose import MOTION_DIM
from ..core.motion.ditto.model import LMDM, RELEASED
from .checkpoints import EMA, STATE_FORMAT, STATE_NAME, export_checkpoint, load_train_state, rng_state, \
    save_train_state, set_rng_state
from .common import AUDIO_SPEC, COND_DIM, SEQ_FRAMES, mix_seed, say
from .dataset import MotionDataset, WindowSchedule, collate
from .losses import diffusion_loss, draw_step

LOG_NAME = "train_log.jsonl"


# =========================================================================== config / model
@dataclass
class TrainConfig:
    """Everything :func:`train` needs. ``init``: an official ``lmdm_v0.4_hubert.pth`` (or any
    checkpoint :func:`~..core.motion.ditto.load.load_lmdm` reads) to fine-tune; None: a new model of the given size
    (``latent_dim``, ``ff_size``, ``num_layers``, ``num_heads``, ``num_encoder_layers``).
    ``num_heads`` also overrides the head count of an ``init`` file (default: its metadata, else 8)."""

    data: Union[str, List[str]] = "dataset"
    out_dir: str = "runs/ditto"
    init: Optional[str] = None
    latent_dim: int = RELEASED["latent_dim"]
    ff_size: int = RELEASED["ff_size"]
    num_layers: int = RELEASED["num_layers"]
    num_heads: Optional[int] = None
    num_encoder_layers: int = RELEASED["num_encoder_layers"]
    seq_frames: int = SEQ_FRAMES
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.02
    betas: Tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    cond_drop_prob: float = 0.2
    part_weights: Optional[Dict[str, float]] = None
    last_frame_loss: bool = False
    precision: str = "auto"        # auto: bf16 (fp16 without bf16 support) on CUDA, fp32 elsewhere
    device: str = "auto"
    seed: int = 0
    save_every: int = 500
    log_every: int = 10
    num_workers: int = 0
    preload: bool = True
    resume: bool = True
    output: str = "lmdm_ema.safetensors"
    audio_spec: Dict[str, Any] = field(default_factory=lambda: dict(AUDIO_SPEC))

    @classmethod
    def from_any(cls, config) -> "TrainConfig":
        if isinstance(config, TrainConfig):
            return dataclasses.replace(config)
        if isinstance(config, Mapping):
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = set(config) - names
            if unknown:
                raise InputError(f"unknown training settings: {', '.join(sorted(unknown))}")
            cfg = cls(**config)
            cfg.betas = tuple(cfg.betas)
            return cfg
        raise InputError("config must be a TrainConfig or a dict")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d


def model_config(model: LMDM) -> Dict[str, int]:
    keys = ("motion_dim", "cond_dim", "seq_frames", "latent_dim", "ff_size", "num_layers", "num_heads",
            "num_encoder_layers")
    return {k: int(model.config[k]) for k in keys}


def build_model(cfg: TrainConfig) -> LMDM:
    """The model to train (float32, CPU, train mode): the ``init`` checkpoint, or a new one whose
    weights are drawn from ``cfg.seed`` (PyTorch default init; the null condition embeddings
    ``N(0, 1)`` like the reference's EDGE-style decoder)."""
    if cfg.init:
        from ..core.motion.ditto.load import load_lmdm

        model = load_lmdm(cfg.init, num_heads=cfg.num_heads, device="cpu")
        model.config.pop("path", None)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(mix_seed(cfg.seed, "init"))
            model = LMDM(motion_dim=MOTION_DIM, cond_dim=COND_DIM, seq_frames=cfg.seq_frames,
                         latent_dim=cfg.latent_dim, ff_size=cfg.ff_size, num_layers=cfg.num_layers,
                         num_heads=cfg.num_heads or RELEASED["num_heads"], num_encoder_layers=cfg.num_encoder_layers)
            torch.nn.init.normal_(model.null_cond_embed)
            torch.nn.init.normal_(model.null_cond_hidden)
    return model.float().train().requires_grad_(True)


def _amp_dtype(precision: str, dev: torch.device) -> torch.dtype:
    p = (precision or "auto").lower()
    if p == "auto":
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    table = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if p not in table:
        raise InputError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    if table[p] == torch.bfloat16 and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return table[p]


def _start_method_blocking_workers() -> Optional[str]:
    """The start method that keeps data-loader worker processes from unpickling the dataset, or
    None when they can. Forked workers share the loaded pack. Spawned ones ("spawn": Windows, macOS;
    "forkserver") import the dataset's module by name, which works only when the pack is importable
    from ``sys.path``, not when it was loaded from its folder (``run.py``, ``python -m training``,
    ComfyUI)."""
    method = multiprocessing.get_start_method()
    if method == "fork" or importlib.machinery.PathFinder.find_spec(__name__.split(".")[0], sys.path):
        return None
    return method


# =========================================================================== training
@dataclass
class TrainResult:
    checkpoint: Optional[Path]
    state: Path
    step: int
    history: List[Dict[str, float]]
    stopped: bool = False


def train(config, log_fn: Optional[Callable[[str], None]] = print,
          should_stop: Optional[Callable[[], bool]] = None) -> TrainResult:
    """Train or fine-tune LMDM on cached clips (see :class:`TrainConfig`).

    Resumes from ``out_dir/train_state.pt`` when it exists (``resume``); the state (model, EMA,
    optimiser, grad scaler, step, RNG states, configs) is written atomically every ``save_every``
    steps, at the end and when ``should_stop()`` turns True. Loss parts are averaged over
    ``log_every`` steps, printed through ``log_fn`` and appended to ``out_dir/train_log.jsonl``.
    At the end the EMA weights go to ``out_dir/<output>`` (safetensors, loadable by ``load_lmdm``).
    """
    from ..core.device import autocast, resolve_device

    cfg = TrainConfig.from_any(config)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path, log_path = out / STATE_NAME, out / LOG_NAME
    dev = resolve_device(cfg.device)
    amp = _amp_dtype(cfg.precision, dev)

    dataset = MotionDataset(cfg.data, cfg.seq_frames, cfg.preload)
    foreign = {json.dumps(s, sort_keys=True) for s in dataset.specs if s}
    want = {k: cfg.audio_spec.get(k) for k in ("encoder", "layer", "chunking", "dim")}
    for s in foreign:
        got = json.loads(s)
        if any(got.get(k) != v for k, v in want.items() if k in got):
            say(log_fn, f"warning: clips were made with audio features {got}, the checkpoint will claim {want}")
    if len(foreign) < len(dataset.specs):
        say(log_fn, "note: some clips do not record how their audio features were made")

    resume = load_train_state(state_path) if cfg.resume and state_path.is_file() else None
    if resume is not None:
        model = LMDM(**resume["model_config"]).float()
        model.train().requires_grad_(True)
    else:
        model = build_model(cfg)
    mcfg = model_config(model)
    if mcfg["cond_dim"] != dataset.cond_dim or mcfg["seq_frames"] != cfg.seq_frames or mcfg["motion_dim"] != MOTION_DIM:
        raise InputError(f"the model (cond {mcfg['cond_dim']}, {mcfg['seq_frames']} frames, motion "
                         f"{mcfg['motion_dim']}) does not fit the data (cond {dataset.cond_dim}, {cfg.seq_frames} "
                         f"frames, motion {MOTION_DIM})")
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.adam_eps,
                            weight_decay=cfg.weight_decay)
    ema = EMA(model, cfg.ema_decay, cfg.ema_warmup)
    scaler = torch.amp.GradScaler("cuda", enabled=(amp == torch.float16 and dev.type == "cuda"))
    step = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        ema.load_weights(resume["ema"], int(resume["step"]))
        if resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        step = int(resume["step"])
        if int(resume.get("num_windows", len(dataset))) != len(dataset):
            say(log_fn, f"warning: the data changed since the saved state ({resume.get('num_windows')} -> "
                        f"{len(dataset)} windows): the window order differs from an uninterrupted run")
        say(log_fn, f"resumed from {state_path} at step {step}")
    else:
        src = f"fine-tuning {cfg.init}" if cfg.init else "training from scratch"
        say(log_fn, f"{src}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {mcfg}")
    say(log_fn, f"data: {len(dataset.files)} clips, {dataset.num_frames} frames, {len(dataset)} windows; "
                f"device {dev}, autocast {str(amp).replace('torch.', '')}")

    def save_state() -> None:
        st = {"format": STATE_FORMAT, "version": 1, "step": step, "model_config": mcfg,
              "train_config": json.dumps(cfg.to_dict()), "num_windows": len(dataset),
              "model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
              "ema": ema.weights(), "optimizer": opt.state_dict(), "scaler": scaler.state_dict(),
              "rng": rng_state()}
        save_train_state(state_path, st)

    schedule = WindowSchedule(len(dataset), cfg.batch_size, cfg.seed)
    history: List[Dict[str, float]] = []
    stopped = False
    workers = cfg.num_workers
    blocked = _start_method_blocking_workers() if workers > 0 else None
    if blocked:
        say(log_fn, f"note: {workers} data-loader worker(s) started with '{blocked}' could not import this pack "
                    f"(it was loaded from its folder): the windows are read in this process instead, with the "
                    f"same results")
        workers = 0
    if step < cfg.steps:
        loader = DataLoader(dataset, batch_sampler=schedule.from_step(step), num_workers=workers,
                            collate_fn=collate, pin_memory=dev.type == "cuda",
                            persistent_workers=False)
        sums: Dict[str, float] = {}
        count, t0, skipped = 0, time.time(), 0
        n_t = int(model.alphas_cumprod.shape[0])
        for batch in loader:
            lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps > 0 else cfg.lr
            for g in opt.param_groups:
                g["lr"] = lr
            b = batch["x0"].shape[0]
            t, noise, keep = draw_step(b, cfg.seq_frames, MOTION_DIM, cfg.seed, step, cfg.cond_drop_prob, n_t)
            x0 = batch["x0"].to(dev, non_blocking=True)
            with autocast(dev, amp):
                loss, parts = diffusion_loss(model, x0, batch["cond_frame"].to(dev), batch["cond"].to(dev),
                                             t.to(dev), noise.to(dev), keep.to(dev), cfg.part_weights,
                                             cfg.last_frame_loss)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            if torch.isfinite(gnorm) or scaler.is_enabled():
                scaler.step(opt)       # the scaler itself skips non-finite fp16 steps
                scaler.update()
                skipped = 0
            else:
                skipped += 1
                say(log_fn, f"step {step + 1}: non-finite gradient, update skipped")
                if skipped >= 20:
                    save_state()
                    raise InputError(f"20 steps in a row had non-finite gradients (step {step + 1}); lower the "
                                     f"learning rate, use precision fp32, or check the data for NaN/inf values")
            step += 1
            ema.update_parameters(model)     # the update after step `step` (ema.n_averaged == step)
            names = list(parts) + ["loss", "grad_norm"]
            values = torch.stack([parts[k].detach().float() for k in parts] + [loss.detach().float(),
                                                                                gnorm.detach().float()]).cpu().tolist()
            for k, v in zip(names, values):     # one device sync per step
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            if step % max(cfg.log_every, 1) == 0 or step == cfg.steps:
                rec = {"step": step, "lr": lr, **{k: v / count for k, v in sums.items()},
                       "steps_per_s": count / max(time.time() - t0, 1e-9)}
                history.append(rec)
                with open(log_path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(rec) + "\n")
                pose = sum(rec.get(f"{k}_{m}", 0.0) for k in ("pitch", "yaw", "roll") for m in "PVA")
                say(log_fn, f"step {step}/{cfg.steps} loss {rec['loss']:.5f} (exp P {rec['exp_P']:.5f} "
                            f"V {rec['exp_V']:.5f} A {rec['exp_A']:.5f}, pose {pose:.5f}, t {rec['t_P']:.5f}, "
                            f"scale {rec['scale_P']:.6f}) |g| {rec['grad_norm']:.3f} lr {lr:.2e} "
                            f"{rec['steps_per_s']:.2f} it/s")
                sums, count, t0 = {}, 0, time.time()
            if step % max(cfg.save_every, 1) == 0 and step < cfg.steps:
                save_state()
            if step >= cfg.steps:
                break
            if should_stop is not None and should_stop():
                stopped = True
                break
        del loader
    save_state()
    ckpt = None
    if not stopped:
        ckpt = export_checkpoint(ema.weights(), mcfg, out / cfg.output, cfg.audio_spec,
                                 {"step": step, "weights": "ema", "ema_decay": cfg.ema_decay, "init": cfg.init,
                                  "lr": cfg.lr, "batch_size": cfg.batch_size, "clips": len(dataset.files),
                                  "windows": len(dataset)})
        say(log_fn, f"wrote {ckpt} (EMA weights, step {step})")
    else:
        say(log_fn, f"stopped at step {step}; state saved to {state_path}")
    return TrainResult(checkpoint=ckpt, state=state_path, step=step, history=history, stopped=stopped)


__all__ = ["LOG_NAME", "TrainConfig", "TrainResult", "build_model", "model_config", "train"]
