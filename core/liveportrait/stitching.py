"""LivePortrait stitching and eye/lip retargeting networks (three small MLPs).

``StitchingRetargetingNetwork(input_size, hidden_sizes, output_size)`` is
``Linear -> ReLU -> ... -> Linear`` held in ``self.mlp`` (an ``nn.Sequential``), so the
Linear layers sit at even indices: ``mlp.0, mlp.2, ..., mlp.{2*len(hidden_sizes)}``; the last
Linear has no activation. Official sizes (``stitching_retargeting_module_params``):

* stitching (file sub-dict ``retarget_shoulder``): 126 -> [128, 128, 64] -> 65, last ``mlp.6``;
* lip (``retarget_mouth``): 65 -> [128, 128, 64] -> 63, last ``mlp.6``;
* eye (``retarget_eye``): 66 -> [256, 256, 128, 128, 64] -> 63, last ``mlp.10``.

The official ``stitching_retargeting_module.pth`` is a dict of those sub-dicts whose keys carry
the DDP prefix ``module.``; :func:`split_state_dict` also accepts the flattened
``<subdict>.<key>`` layout (safetensors) and Kijai's ``<subdict>_module.<key>``.
"""
from __future__ import annotations

from typing import Dict, Mapping, Sequence

import torch
import torch.nn as nn

#: our role name -> sub-dict name in the official file
SUBDICTS: Dict[str, str] = {"stitching": "retarget_shoulder", "lip": "retarget_mouth", "eye": "retarget_eye"}


class StitchingRetargetingNetwork(nn.Module):
    def __init__(self, input_size: int, hidden_sizes: Sequence[int], output_size: int):
        super().__init__()
        sizes = [int(input_size), *[int(h) for h in hidden_sizes]]
        layers = []
        for i in range(len(sizes) - 1):
            layers += [nn.Linear(sizes[i], sizes[i + 1]), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(sizes[-1], int(output_size)))
        self.mlp = nn.Sequential(*layers)
        self.input_size = int(input_size)
        self.output_size = int(output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def build_networks(params: Mapping[str, Mapping]) -> Dict[str, StitchingRetargetingNetwork]:
    """``{"stitching", "lip", "eye"}`` networks from ``stitching_retargeting_module_params``."""
    return {name: StitchingRetargetingNetwork(**params[name]) for name in SUBDICTS if name in params}


def _strip(key: str) -> str:
    return key[len("module."):] if key.startswith("module.") else key


def split_state_dict(state: Mapping) -> Dict[str, Dict[str, torch.Tensor]]:
    """Per-network state dicts (``module.`` stripped) keyed ``stitching`` / ``lip`` / ``eye``.

    Accepts the official nested dict ``{retarget_shoulder: {module.mlp.0.weight: ...}, ...}``
    (extra entries ignored), the flattened ``retarget_shoulder.module.mlp.0.weight`` layout, and
    ``retarget_shoulder_module.mlp.0.weight``. Missing sub-dicts are simply absent."""
    out: Dict[str, Dict[str, torch.Tensor]] = {}
    for name, sub in SUBDICTS.items():
        if isinstance(state.get(sub), Mapping):
            out[name] = {_strip(k): v for k, v in state[sub].items()}
            continue
        found = {}
        for prefix in (sub + ".", sub + "_"):
            for k, v in state.items():
                if isinstance(k, str) and k.startswith(prefix) and torch.is_tensor(v):
                    found[_strip(k[len(prefix):])] = v
        if found:
            out[name] = found
    return out


__all__ = ["SUBDICTS", "StitchingRetargetingNetwork", "build_networks", "split_state_dict"]
