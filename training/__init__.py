"""Training / fine-tuning Ditto's audio-to-motion diffusion model (LMDM) in plain torch.

Follows the official training code (antgroup/ditto-talkinghead, branch ``train``, see
``shared/reference/ditto/README.md`` section 2 "Training"). Not part of the ComfyUI nodes: nothing
in ``core/`` or ``nodes/`` imports it, and the registry package leaves it out (``.comfyignore``).

* :mod:`.build`: videos -> cached clips (LivePortrait motion and keypoints, HuBERT features,
  emotion and eye conditions), :func:`build_dataset`.
* :mod:`.dataset`: the clip files and the 80-frame training windows (:class:`MotionDataset`,
  :class:`WindowSchedule`).
* :mod:`.losses`: the objective (x0 prediction, per-part position / velocity / acceleration MSE,
  classifier-free guidance drop), :func:`diffusion_loss`.
* :mod:`.checkpoints`: the EMA (:class:`EMA`), the resumable training state and the safetensors
  checkpoint :func:`~..core.motion.ditto.load.load_lmdm` reads.
* :mod:`.loop`: :class:`TrainConfig`, :func:`build_model`, :func:`train`.
* :mod:`.cli` / ``__main__``: the command line, ``python -m training`` from the pack's folder.

The modules import ``core`` as their sibling (``from ..core ...``), so this package is used as a
sub-package of the loaded pack (``run.py``'s ``load_pack()``, then ``<pack>.training``). The names
below are loaded on first use, so that ``python -m training``, which first imports this folder as a
top-level package, gets as far as ``__main__`` (which loads the pack).
"""
import importlib

_EXPORTS = {
    "common": ("AUDIO_SPEC", "CLIP_FORMAT", "COND_DIM", "MIN_FRAMES", "NEUTRAL_EYE", "PARTS", "SEQ_FRAMES"),
    "build": ("VIDEO_EXTENSIONS", "build_dataset", "clip_name", "find_videos", "hubert_features_fn",
              "motion_vectors"),
    "dataset": ("MotionDataset", "WindowSchedule", "collate", "list_clips", "write_clip"),
    "losses": ("diffusion_loss", "draw_step", "fixed_batch_loss", "part_losses", "q_sample"),
    "checkpoints": ("CHECKPOINT_FORMAT", "EMA", "STATE_FORMAT", "STATE_NAME", "export_checkpoint",
                    "export_from_state", "load_train_state"),
    "loop": ("LOG_NAME", "TrainConfig", "TrainResult", "build_model", "model_config", "train"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}


def __getattr__(name):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if "." not in __name__:
        raise ImportError(f"'{__name__}' was imported as a top-level package, but it is part of the "
                          f"talking-head pack and imports the pack's core as its sibling: load the pack first "
                          f"(run.py's load_pack(), then '<pack>.training'), or use the command line, "
                          f"`python -m training` in the pack's folder")
    return getattr(importlib.import_module(f".{module}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_MODULE_OF))


__all__ = sorted(_MODULE_OF)
