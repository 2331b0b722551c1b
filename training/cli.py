"""Train or fine-tune Ditto's audio-to-motion model (LMDM) on talking-face videos.

Run from the pack's folder (``python /path/to/the/pack/training ...`` works from anywhere)::

    # 1. cache LivePortrait motion + HuBERT features, one .safetensors per clip (resumable)
    python -m training build-dataset videos/ --out data/ditto [--flip] [--no-crop]

    # 2. fine-tune the released model (EMA weights -> runs/me/lmdm_ema.safetensors; resumable)
    python -m training train --data data/ditto --out runs/me \\
        --init models/ditto/lmdm_v0.4_hubert.pth --steps 2000 --batch-size 32

    #    or train a new one from scratch with a given size
    python -m training train --data data/ditto --out runs/small --latent-dim 256 \\
        --ff-size 512 --num-layers 4 --num-heads 4 --steps 50000

    # 3. (optional) export the EMA or raw weights of a training state at any time
    python -m training export runs/me/train_state.pt --out lmdm_step1200.safetensors

The checkpoint loads with ``core.motion.ditto.load_lmdm`` and drives ``ditto.generate``.
Without an emotion model the neutral label is used on every frame, without MediaPipe landmarks
a constant neutral eye condition (see ``training/build.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..core.errors import InputError, TalkingHeadError
from .build import VIDEO_EXTENSIONS, build_dataset, find_videos, hubert_features_fn
from .checkpoints import export_from_state
from .loop import train


def _add_build(sub) -> None:
    p = sub.add_parser("build-dataset", help="cache motion, keypoints and audio features of videos",
                       description="Cache the training data of talking-face videos: LivePortrait motion (265) and "
                                   "canonical keypoints (63) of every frame of one fixed face crop per clip at 25 fps, "
                                   "HuBERT features (1024, Ditto's offline chunking), neutral emotion and eye "
                                   "conditions. One .safetensors per clip; existing files are kept, so an "
                                   "interrupted run continues where it stopped. Clips shorter than 81 frames are "
                                   "skipped.")
    p.add_argument("videos", nargs="+", help="video files or folders (searched recursively); "
                                             "VIDEO=AUDIO pairs a video with a separate audio file")
    p.add_argument("--out", required=True, help="folder for the cached clips")
    p.add_argument("--fps", type=float, default=25.0, help="frame rate of the motion (Ditto: 25)")
    p.add_argument("--no-crop", action="store_true", help="the videos already are face crops: use frames as they are")
    p.add_argument("--detector", default="face-alignment sfd",
                   help="face detector for the crop (face-alignment sfd, face-alignment blazeface, center)")
    p.add_argument("--crop-scale", type=float, default=None, help="crop size / face size (default 2.3, Ditto's)")
    p.add_argument("--crop-vy", type=float, default=None, help="vertical crop shift (default -0.125, Ditto's)")
    p.add_argument("--flip", action="store_true", help="also cache a mirrored copy of every clip "
                                                       "(motion extracted from the flipped frames)")
    p.add_argument("--batch-size", type=int, default=16, help="frames per motion-extractor pass")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--precision", default="fp32", help="motion extractor precision: fp32, fp16, bf16")
    p.add_argument("--liveportrait-dir", default=None, help="folder with the five LivePortrait files "
                                                            "(default: the weights manager)")
    p.add_argument("--hubert", default=None, help="HuBERT model folder/file (default: the weights manager)")
    p.add_argument("--no-download", action="store_true", help="never download missing weights")


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train or fine-tune LMDM on cached clips",
                       description="Train LMDM (x0 prediction, 1000-step cosine schedule, per-part position/velocity/"
                                   "acceleration MSE, classifier-free-guidance drop 0.2) with AdamW, an EMA of the "
                                   "weights and gradient clipping. Resumes from OUT/train_state.pt when it exists. "
                                   "Writes OUT/lmdm_ema.safetensors (EMA weights) at the end.")
    p.add_argument("--config", default=None, help="JSON file of training settings (command-line flags win)")
    p.add_argument("--data", nargs="+", help="folders or files of cached clips (from build-dataset)")
    p.add_argument("--out", dest="out_dir", help="run folder (training state, log, checkpoint)")
    p.add_argument("--init", default=None, help="checkpoint to fine-tune (official lmdm_v0.4_hubert.pth or a "
                                                "safetensors twin); omit to train from scratch")
    for flag, kind, text in (  # the numeric settings: flag, type, help
            ("--latent-dim", int, "model width for a new model (released: 512)"),
            ("--ff-size", int, "feed-forward width for a new model (released: 1024)"),
            ("--num-layers", int, "decoder layers for a new model (released: 8)"),
            ("--num-heads", int, "attention heads (new model; overrides an --init file's)"),
            ("--num-encoder-layers", int, "condition-encoder layers for a new model (released: 2)"),
            ("--steps", int, "total optimiser steps (default 2000)"),
            ("--batch-size", int, "windows per step (default 32)"),
            ("--lr", float, "AdamW learning rate (default 1e-4)"),
            ("--weight-decay", float, "AdamW weight decay (default 0.02)"),
            ("--warmup-steps", int, "linear learning-rate warm-up steps (default 0)"),
            ("--grad-clip", float, "gradient-norm clip, 0 = off (default 1.0)"),
            ("--ema-decay", float, "EMA decay (default 0.999)"),
    ):
        p.add_argument(flag, type=kind, help=text)
    p.add_argument("--no-ema-warmup", dest="ema_warmup", action="store_false", default=None,
                   help="use the EMA decay from the first step (default: min(decay, (1+n)/(10+n)))")
    p.add_argument("--cond-drop", dest="cond_drop_prob", type=float, help="condition drop probability (default 0.2)")
    p.add_argument("--last-frame-loss", action="store_true", default=None,
                   help="add the first-frame-vs-cond_frame loss (reference --use_last_frame_loss)")
    p.add_argument("--part-weights", default=None, help='JSON loss weights per part, e.g. \'{"exp": 2}\'')
    p.add_argument("--precision", help="auto (bf16/fp16 autocast on CUDA, fp32 elsewhere), fp32, bf16, fp16")
    p.add_argument("--device", help="auto, cuda, mps or cpu")
    p.add_argument("--seed", type=int, help="seed of the window order, noise and a new model's init (default 0)")
    p.add_argument("--save-every", type=int, help="write the training state every N steps (default 500)")
    p.add_argument("--log-every", type=int, help="log averaged loss parts every N steps (default 10)")
    p.add_argument("--num-workers", type=int, help="data-loader worker processes (default 0)")
    p.add_argument("--no-preload", dest="preload", action="store_false", default=None,
                   help="read windows from the files instead of holding all clips in memory")
    p.add_argument("--no-resume", dest="resume", action="store_false", default=None,
                   help="start over even if OUT/train_state.pt exists (it will be overwritten)")
    p.add_argument("--output", help="checkpoint file name inside OUT (default lmdm_ema.safetensors)")


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write the weights of a training state as a safetensors checkpoint",
                       description="Export the EMA (default) or raw weights of OUT/train_state.pt.")
    p.add_argument("state", help="training state file (train_state.pt)")
    p.add_argument("--out", required=True, help="safetensors file to write")
    p.add_argument("--raw", action="store_true", help="export the raw (non-EMA) weights")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m training", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    _add_build(sub)
    _add_train(sub)
    _add_export(sub)
    return ap


def _videos(items):
    out = []
    for it in items:
        if "=" in it and not Path(it).exists():
            v, a = it.split("=", 1)
            out.append((v, a))
        else:
            out.append(it)
    return out


def cmd_build(args) -> int:
    # the videos first: a wrong path should not wait for (or download) the models
    found = find_videos(_videos(args.videos))
    absent = [str(v) for v, _ in found if not v.is_file()]
    if absent or not found:
        raise InputError(f"no video at {', '.join(absent)}" if absent else
                         f"no videos ({', '.join(sorted(VIDEO_EXTENSIONS))}) found in {' '.join(args.videos)}")
    download = not args.no_download
    from ..core.liveportrait import get_liveportrait

    models = get_liveportrait("human", device=args.device, download=download,
                              folder=Path(args.liveportrait_dir) if args.liveportrait_dir else None)
    dev = next(models.motion.parameters()).device
    features_fn = hubert_features_fn(device=dev, model_path=args.hubert, download=download)
    res = build_dataset(found, args.out, models, features_fn, fps=args.fps, crop=not args.no_crop,
                        detector=args.detector, crop_scale=args.crop_scale, crop_vy=args.crop_vy,
                        batch_size=args.batch_size, precision=args.precision, flip=args.flip, device=dev,
                        download=download)
    print(f"written {len(res['written'])}, kept {len(res['kept'])}, skipped {len(res['skipped'])}")
    for video, reason in res["skipped"]:
        print(f"  skipped {video}: {reason}")
    return 0


_TRAIN_KEYS = ("data", "out_dir", "init", "latent_dim", "ff_size", "num_layers", "num_heads", "num_encoder_layers",
               "steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "ema_decay", "ema_warmup",
               "cond_drop_prob", "last_frame_loss", "precision", "device", "seed", "save_every", "log_every",
               "num_workers", "preload", "resume", "output")


def cmd_train(args) -> int:
    cfg = json.loads(Path(args.config).read_text(encoding="utf-8")) if args.config else {}
    for k in _TRAIN_KEYS:
        v = getattr(args, k, None)
        if v is not None:
            cfg[k] = v
    if args.part_weights:
        cfg["part_weights"] = json.loads(args.part_weights)
    if not cfg.get("data") or not cfg.get("out_dir"):
        print("train: --data and --out are required (or set them in --config)", file=sys.stderr)
        return 2
    res = train(cfg)
    return 0 if res.checkpoint is not None else 1


def cmd_export(args) -> int:
    path = export_from_state(args.state, args.out, use_ema=not args.raw)
    print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return {"build-dataset": cmd_build, "train": cmd_train, "export": cmd_export}[args.command](args)
    except TalkingHeadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (the last saved state / cached clips are kept)", file=sys.stderr)
        return 130


__all__ = ["main", "parser"]
