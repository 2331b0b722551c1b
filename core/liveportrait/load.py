"""Loading LivePortrait's five official checkpoint files (or their safetensors twins).

* Official HF layout (``KwaiVGI/LivePortrait``): ``base_models/{appearance_feature_extractor,
  motion_extractor,warping_module,spade_generator}.pth`` are bare state dicts;
  ``retargeting_models/stitching_retargeting_module.pth`` is a dict of three sub-dicts
  (``retarget_shoulder`` = stitching, ``retarget_mouth`` = lip, ``retarget_eye`` = eye) whose keys
  carry DataParallel's ``module.`` prefix; anything else in that file is ignored.
* Safetensors: the same tensors, the stitching file flattened (``retarget_shoulder.module.mlp.0.weight``
  or Kijai's ``retarget_shoulder_module.mlp.0.weight``); both spellings are accepted.
* Every file goes through the safe loader and a strict key/shape check naming what is wrong.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from torch import nn

from ..configs import load_preset
from ..errors import CheckpointError
from ..weights import check_state_dict, load_state_dict

KINDS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator",
         "stitching_retargeting_module")
#: the official sizes: the networks read a 256x256 face crop, the decoder writes 512x512 faces
INPUT_SIZE = 256
OUTPUT_SIZE = 512


def preset(name: str = "liveportrait") -> dict:
    """A shipped config: ``liveportrait`` (the official models.yaml) or ``tiny`` (the parity fixture)."""
    return load_preset(__file__, name)


@dataclass(frozen=True)
class LivePortraitConfig:
    """The typed view of a config dict (:func:`preset`): the constructor arguments of each network and
    the image sizes (``input_size`` / ``output_size``, official 256 / 512 when the config names none)."""

    model_params: Mapping[str, Any]
    input_size: int = INPUT_SIZE
    output_size: int = OUTPUT_SIZE

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "LivePortraitConfig":
        sizes = {}
        for key, default in (("input_size", INPUT_SIZE), ("output_size", OUTPUT_SIZE)):
            value = config.get(key, default)
            whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if isinstance(value, bool) or not whole or value < 1:
                raise CheckpointError(f"a LivePortrait config's {key} must be a positive whole number of pixels, "
                                      f"got {value!r}")
            sizes[key] = int(value)
        return cls(config.get("model_params", {}), **sizes)

    def params(self, kind: str) -> Mapping[str, Any]:
        """Constructor arguments of one network (``kind`` as in :data:`KINDS`)."""
        try:
            return self.model_params[f"{kind}_params"]
        except KeyError:
            raise CheckpointError(f"the LivePortrait config has no model_params.{kind}_params (it has "
                                  f"{', '.join(sorted(self.model_params)) or 'none'})") from None


@dataclass
class LivePortraitModels:
    """The networks of one LivePortrait model set (human or animal)."""

    appearance: nn.Module
    motion: nn.Module
    warping: nn.Module
    spade: nn.Module
    stitching: nn.Module
    lip: Optional[nn.Module] = None
    eye: Optional[nn.Module] = None
    config: dict = field(default_factory=dict)

    def modules_for_cache(self):
        return [m for m in (self.appearance, self.motion, self.warping, self.spade, self.stitching,
                            self.lip, self.eye) if m is not None]

    @property
    def settings(self) -> LivePortraitConfig:
        """:attr:`config` as a :class:`LivePortraitConfig`."""
        return LivePortraitConfig.from_dict(self.config)

    @property
    def input_size(self) -> int:
        """Side of the square face crop the networks read (official 256)."""
        return self.settings.input_size

    @property
    def output_size(self) -> int:
        """Side of the square faces the decoder writes, and of the crop pasted back (official 512)."""
        return self.settings.output_size

    def optimize_for_inference(self) -> "LivePortraitModels":
        """Switch on the inference-only fast paths (today the SPADE decoder's,
        :meth:`.spade.SPADEDecoder.optimize_for_inference`: same outputs to float rounding, ~1.4x faster
        on CPU). Call it once on models used for inference only (:func:`core.liveportrait.get_liveportrait`
        does); models that are trained or differentiated keep the plain module graph by not calling it."""
        optimize = getattr(self.spade, "optimize_for_inference", None)
        if callable(optimize):
            optimize()
        return self


def _build(kind: str, params: Mapping) -> nn.Module:
    if kind == "appearance_feature_extractor":
        from .appearance import AppearanceFeatureExtractor
        return AppearanceFeatureExtractor(**params)
    if kind == "motion_extractor":
        from .motion_extractor import MotionExtractor
        return MotionExtractor(**params)
    if kind == "warping_module":
        from .warping import WarpingNetwork
        return WarpingNetwork(**params)
    if kind == "spade_generator":
        from .spade import SPADEDecoder
        return SPADEDecoder(**params)
    raise ValueError(kind)


def load_module(kind: str, path: Union[str, Path], config: Optional[dict] = None) -> nn.Module:
    """One network from its checkpoint file, strictly checked, in eval mode on the CPU."""
    params = LivePortraitConfig.from_dict(config or preset()).params(kind)
    path = Path(path)
    module = _build(kind, params)
    state = load_state_dict(path)
    check_state_dict(module, state, f"{path.name} ({kind})")
    module.load_state_dict(state, strict=True)
    return module.eval()


def load_retargeting(path: Union[str, Path], config: Optional[dict] = None) -> Dict[str, nn.Module]:
    """The three retargeting MLPs of ``stitching_retargeting_module.pth`` / ``.safetensors``."""
    from .stitching import SUBDICTS, build_networks, split_state_dict

    params = LivePortraitConfig.from_dict(config or preset()).params("stitching_retargeting_module")
    path = Path(path)
    flat = load_state_dict(path)
    parts = split_state_dict(flat)
    if "stitching" not in parts:
        tops = sorted({k.split(".", 1)[0] for k in flat})
        raise CheckpointError(f"{path.name} has no '{SUBDICTS['stitching']}' (stitching) weights; top-level keys: "
                              f"{tops[:10]}. Is it LivePortrait's stitching_retargeting_module?")
    nets = build_networks(params)
    out = {}
    for part, state in parts.items():
        check_state_dict(nets[part], state, f"{path.name} ({part})")
        nets[part].load_state_dict(state, strict=True)
        out[part] = nets[part].eval()
    return out


def load_liveportrait(paths: Mapping[str, Union[str, Path]], config: Optional[dict] = None) -> LivePortraitModels:
    """All networks from ``{kind: path}`` (kinds: :data:`KINDS`)."""
    config = config or preset()
    missing = [k for k in KINDS if k not in paths]
    if missing:
        raise CheckpointError(f"LivePortrait needs all five model files; missing: {', '.join(missing)}")
    retarget = load_retargeting(paths["stitching_retargeting_module"], config)
    return LivePortraitModels(
        appearance=load_module("appearance_feature_extractor", paths["appearance_feature_extractor"], config),
        motion=load_module("motion_extractor", paths["motion_extractor"], config),
        warping=load_module("warping_module", paths["warping_module"], config),
        spade=load_module("spade_generator", paths["spade_generator"], config),
        stitching=retarget["stitching"], lip=retarget.get("lip"), eye=retarget.get("eye"), config=config)
