"""Loading First Order Motion Model checkpoints.

Accepts the official ``vox-cpk.pth.tar`` unchanged (legacy pickle ``{generator, kp_detector,
discriminator, optimizer_*, epoch}``, read through the safe loader) and the same tensors as
safetensors with ``generator.`` / ``kp_detector.`` prefixed keys. Every generator and keypoint
detector key must match the network exactly; anything else in the file (discriminator,
optimiser states, epoch) is ignored.

The architecture is read off the tensor shapes (:func:`infer_config`), so vox-256, vox-adv-256
and the tiny parity checkpoint all run through the same code; the two hyper-parameters that
leave no trace in the weights (keypoint temperature, gaussian variance) come from the published
configs (0.1 and 0.01 in all of them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import torch

from ..configs import load_preset
from ..errors import CheckpointError
from ..weights import check_state_dict, load_state_dict
from . import model as M

REQUIRED = ("generator", "kp_detector")
#: side of the square frames every published FOM checkpoint was trained on (vox-256): both what the
#: networks read and what the generator writes
RESOLUTION = 256


def preset(name: str = "vox-256") -> dict:
    """A shipped config (``configs/<name>.json``), ``model_params`` as in the official YAML."""
    return load_preset(__file__, name)


@dataclass
class FOM:
    """The two inference networks of a checkpoint and the config they were built from."""

    kp_detector: M.KPDetector
    generator: M.OcclusionAwareGenerator
    config: dict
    source: str = ""

    def modules_for_cache(self):
        return [self.kp_detector, self.generator]

    @property
    def input_size(self) -> int:
        """Side of the square frames the networks read (:data:`RESOLUTION`, 256, unless the config
        names an ``input_size``)."""
        return int(self.config.get("input_size", RESOLUTION))

    @property
    def output_size(self) -> int:
        """Side of the square frames the generator writes (the input size: FOM does not upscale)."""
        return self.input_size

    def optimize_for_inference(self) -> "FOM":
        """Fold BatchNorms, use sub-pixel upsampling convs and channels-last memory (faster on
        CPU and GPU; outputs equal to float rounding, ~1e-6). The state dict keeps its official
        keys minus the folded BatchNorms, so do this only on a model used for inference."""
        for module in self.modules_for_cache():
            M.fuse_for_inference(module).to(memory_format=torch.channels_last)
        return self


def _count(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in state if (m := rx.match(k))})


def _scale_from_kernel(state: Mapping[str, torch.Tensor], key: str) -> float:
    if key not in state:
        return 1
    size = state[key].shape[-1]
    for scale in (0.5, 0.25, 0.125, 1 / 3, 0.2):
        if M.antialias_kernel_size(scale) == size:
            return scale
    raise CheckpointError(f"cannot tell the downscale factor from {key} of size {size}")


def _max_width(state: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return max(v.shape[0] for k, v in state.items() if rx.match(k))


def infer_config(state: Mapping[str, torch.Tensor], temperature: float = 0.1, kp_variance: float = 0.01) -> dict:
    """``model_params`` matching a flat state dict with ``generator.`` / ``kp_detector.`` keys."""
    try:
        kp_conv = state["kp_detector.kp.weight"]
        enc0 = state["kp_detector.predictor.encoder.down_blocks.0.conv.weight"]
        num_kp, num_channels = kp_conv.shape[0], enc0.shape[1]
        kp_blocks = _count(state, r"kp_detector\.predictor\.encoder\.down_blocks\.(\d+)\.conv\.weight")
        kp_params = {
            "temperature": temperature,
            "block_expansion": state[f"kp_detector.predictor.decoder.up_blocks.{kp_blocks - 1}.conv.weight"].shape[0],
            "max_features": _max_width(state, r"kp_detector\.predictor\.encoder\.down_blocks\.\d+\.conv\.weight"),
            "scale_factor": _scale_from_kernel(state, "kp_detector.down.weight"),
            "num_blocks": kp_blocks,
        }
        jac = state.get("kp_detector.jacobian.weight")
        if jac is not None and jac.shape[0] == 4:
            kp_params["single_jacobian_map"] = num_kp != 1
        dm = "generator.dense_motion_network."
        dm_blocks = _count(state, re.escape(dm) + r"hourglass\.encoder\.down_blocks\.(\d+)\.conv\.weight")
        gen_params = {
            "block_expansion": state["generator.first.conv.weight"].shape[0],
            "max_features": _max_width(state, r"generator\.(down_blocks|up_blocks)\.\d+\.conv\.weight"),
            "num_down_blocks": _count(state, r"generator\.down_blocks\.(\d+)\.conv\.weight"),
            "num_bottleneck_blocks": _count(state, r"generator\.bottleneck\.r(\d+)\.conv1\.weight"),
            "estimate_occlusion_map": f"{dm}occlusion.weight" in state,
            "dense_motion_params": {
                "block_expansion": state[f"{dm}hourglass.decoder.up_blocks.{dm_blocks - 1}.conv.weight"].shape[0],
                "max_features": _max_width(state, re.escape(dm) + r"hourglass\.encoder\.down_blocks\.\d+\.conv\.weight"),
                "num_blocks": dm_blocks,
                "scale_factor": _scale_from_kernel(state, f"{dm}down.weight"),
                "kp_variance": kp_variance,
            },
        }
    except KeyError as exc:
        raise CheckpointError(f"not a First Order Motion Model checkpoint: key {exc} is missing") from None
    return {"model_params": {
        "common_params": {"num_kp": num_kp, "num_channels": num_channels, "estimate_jacobian": jac is not None},
        "kp_detector_params": kp_params,
        "generator_params": gen_params,
    }}


def _split(flat: Mapping[str, torch.Tensor], name: str) -> Dict[str, torch.Tensor]:
    return {k[len(name) + 1:]: v for k, v in flat.items() if k.startswith(name + ".")}


def load_fom(path: Union[str, Path], config: Optional[dict] = None) -> FOM:
    """Build the networks and load a checkpoint (official ``.pth.tar`` or ``.safetensors``) on the CPU."""
    path = Path(path)
    flat = load_state_dict(path)
    missing = [name for name in REQUIRED if not any(k.startswith(name + ".") for k in flat)]
    if missing:
        tops = sorted({k.split(".", 1)[0] for k in flat})
        raise CheckpointError(f"{path.name} is not a First Order Motion Model checkpoint: it has no "
                              f"{' / '.join(missing)} weights (top-level keys: {tops[:10]})")
    config = config or infer_config(flat)
    kp_detector, generator = M.build(config)
    for name, module in (("kp_detector", kp_detector), ("generator", generator)):
        state = _split(flat, name)
        check_state_dict(module, state, f"{path.name} ({name})")
        module.load_state_dict(state, strict=True)
    return FOM(kp_detector.eval(), generator.eval(), config, str(path))
