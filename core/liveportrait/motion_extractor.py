"""LivePortrait motion extractor M: a ConvNeXt-V2 backbone with seven linear heads.

Architecture (state-dict names in brackets, all under ``detector.``):

* stem ``downsample_layers.0`` = Conv2d(3, C0, 4, stride 4) [``.0``] -> channels-first
  LayerNorm, eps 1e-6 [``.1``];
* before stages 1..3 ``downsample_layers.i`` = channels-first LayerNorm [``.0``] ->
  Conv2d(C_{i-1}, C_i, 2, stride 2) [``.1``];
* ``stages.i.j`` blocks: depthwise Conv2d 7x7, pad 3 [``dwconv``] -> to channels-last ->
  LayerNorm eps 1e-6 [``norm``] -> Linear C -> 4C [``pwconv1``] -> exact GELU ->
  GRN [``grn.gamma``, ``grn.beta``, shape (1,1,1,4C)] -> Linear 4C -> C [``pwconv2``] ->
  back to channels-first -> residual add (no layer scale, no drop path at inference);
* global average pool over H, W -> LayerNorm eps 1e-6 [``norm``] -> heads ``fc_kp`` (3*num_kp),
  ``fc_scale`` (1), ``fc_pitch``/``fc_yaw``/``fc_roll`` (num_bins), ``fc_t`` (3),
  ``fc_exp`` (3*num_kp), all plain Linear, no activation.

GRN (global response normalisation), on channels-last ``x`` (B,H,W,C)::

    Gx = ||x||_2 over (H, W)            (B,1,1,C)
    Nx = Gx / (mean_C(Gx) + 1e-6)
    out = gamma * (x * Nx) + beta + x

Input: RGB in [0, 1], (B,3,H,W), no mean/std normalisation (official size 256x256).
Output: the raw heads ``{kp (B,63), pitch/yaw/roll (B,66) logits, t (B,3), exp (B,63),
scale (B,1)}``; :func:`core.liveportrait.kinematics.kp_info` turns them into the motion
representation (degrees, (B,21,3) keypoints).
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
import torch.nn as nn

#: backbone name (as in ``models.yaml``) -> (depths, dims)
BACKBONES: Dict[str, tuple] = {
    "convnextv2_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    # the tiny parity fixture (tests/fixtures/liveportrait): same class, reduced sizes
    "convnextv2_fixture": ((1, 1, 2, 1), (8, 16, 32, 64)),
}

LN_EPS = 1e-6
GRN_EPS = 1e-6


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a channels-first (B,C,H,W) tensor.

    ``(x - mean_C) / sqrt(var_C + eps) * weight + bias`` with the biased variance."""

    def __init__(self, channels: int, eps: float = LN_EPS):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GRN(nn.Module):
    """Global response normalisation on channels-last input (B,H,W,C)."""

    def __init__(self, channels: int, eps: float = GRN_EPS):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx = torch.linalg.vector_norm(x, ord=2, dim=(1, 2), keepdim=True)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx) + self.beta + x


class ConvNeXtV2Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()  # exact (erf) GELU
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B,H,W,C)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    """ConvNeXt-V2 feature extractor + LivePortrait's motion heads (the ``detector``)."""

    def __init__(self, depths: Sequence[int], dims: Sequence[int], num_kp: int = 21, num_bins: int = 66,
                 in_chans: int = 3):
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"ConvNeXtV2 needs 4 stages, got depths={depths} dims={dims}")
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4),
                                                    LayerNorm2d(dims[0])))
        for i in range(1, 4):
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(dims[i - 1]),
                                                        nn.Conv2d(dims[i - 1], dims[i], kernel_size=2, stride=2)))
        self.stages = nn.ModuleList(nn.Sequential(*[ConvNeXtV2Block(dims[i]) for _ in range(depths[i])])
                                    for i in range(4))
        self.norm = nn.LayerNorm(dims[-1], eps=LN_EPS)
        c = dims[-1]
        # same order as the official state dict
        self.fc_kp = nn.Linear(c, 3 * num_kp)
        self.fc_scale = nn.Linear(c, 1)
        self.fc_pitch = nn.Linear(c, num_bins)
        self.fc_yaw = nn.Linear(c, num_bins)
        self.fc_roll = nn.Linear(c, num_bins)
        self.fc_t = nn.Linear(c, 3)
        self.fc_exp = nn.Linear(c, 3 * num_kp)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean(dim=(-2, -1)))

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        f = self.features(x)
        return {
            "kp": self.fc_kp(f),
            "pitch": self.fc_pitch(f),
            "yaw": self.fc_yaw(f),
            "roll": self.fc_roll(f),
            "t": self.fc_t(f),
            "exp": self.fc_exp(f),
            "scale": self.fc_scale(f),
        }


class MotionExtractor(nn.Module):
    """``MotionExtractor(num_kp=21, backbone="convnextv2_tiny", num_bins=66)``.

    ``forward(x)``: x (B,3,H,W) RGB in [0,1] -> dict of raw heads ``kp`` (B,3K), ``pitch``,
    ``yaw``, ``roll`` (B,num_bins) logits, ``t`` (B,3), ``exp`` (B,3K), ``scale`` (B,1).
    Official checkpoint ``motion_extractor.pth`` loads strictly (keys ``detector.*``)."""

    def __init__(self, num_kp: int = 21, backbone: str = "convnextv2_tiny", num_bins: int = 66, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"MotionExtractor: unexpected arguments {sorted(kwargs)}")
        if backbone not in BACKBONES:
            raise ValueError(f"unknown motion extractor backbone {backbone!r}; known: {sorted(BACKBONES)}")
        depths, dims = BACKBONES[backbone]
        self.num_kp = num_kp
        self.num_bins = num_bins
        self.backbone = backbone
        self.detector = ConvNeXtV2(depths, dims, num_kp=num_kp, num_bins=num_bins)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.detector(x)


__all__ = ["BACKBONES", "ConvNeXtV2", "ConvNeXtV2Block", "GRN", "LayerNorm2d", "MotionExtractor"]
