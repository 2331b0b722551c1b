"""LivePortrait appearance feature extractor F.

Maps a cropped source portrait (RGB in [0, 1], no mean/std normalisation) to the 3-D
appearance feature volume ``f_s`` that the warping module deforms:

    (B, 3, H, W) -> (B, reshape_channel, reshape_depth, H/4, W/4)
    official: (1, 3, 256, 256) -> (1, 32, 16, 64, 64)

Architecture (re-implemented from the documented structure, parameter names match the
official ``appearance_feature_extractor.pth`` state dict exactly):

* ``first``        3x3 conv (pad 1) -> BatchNorm2d -> ReLU                  (3 -> 64)
* ``down_blocks.i`` 3x3 conv (pad 1) -> BatchNorm2d -> ReLU -> AvgPool2d(2)  (64 -> 128 -> 256)
* ``second``       1x1 conv, no norm / activation                          (256 -> 512)
* view as (B, reshape_channel, reshape_depth, H/4, W/4)
* ``resblocks_3d.3dr{i}`` pre-activation 3-D residual blocks:
  ``x + conv2(relu(norm2(conv1(relu(norm1(x))))))`` with 3x3x3 convs (pad 1), BatchNorm3d.

The module must be used in ``eval()`` mode (BatchNorm running statistics).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["AppearanceFeatureExtractor", "SameBlock2d", "DownBlock2d", "ResBlock3d"]


class SameBlock2d(nn.Module):
    """conv2d (same size) -> BatchNorm2d -> ReLU (or LeakyReLU(0.01) with ``lrelu=True``)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3,
                 padding: int = 1, lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, 0.01) if self.lrelu else F.relu(x)


class DownBlock2d(nn.Module):
    """conv2d 3x3 -> BatchNorm2d -> ReLU -> 2x2 average pooling."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(norm2(conv1(relu(norm1(x))))))."""

    def __init__(self, in_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        # registration order = official state-dict order: conv1, conv2, norm1, norm2
        self.conv1 = nn.Conv3d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv3d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm3d(in_features, affine=True)
        self.norm2 = nn.BatchNorm3d(in_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


class AppearanceFeatureExtractor(nn.Module):
    """LivePortrait F: image (B,3,H,W) in [0,1] -> feature volume (B,C,D,H/4,W/4)."""

    def __init__(self, image_channel: int = 3, block_expansion: int = 64, num_down_blocks: int = 2,
                 max_features: int = 512, reshape_channel: int = 32, reshape_depth: int = 16,
                 num_resblocks: int = 6):
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(f"reshape_channel*reshape_depth ({reshape_channel}*{reshape_depth}) "
                             f"must equal max_features ({max_features})")
        self.image_channel = image_channel
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.num_down_blocks = num_down_blocks

        self.first = SameBlock2d(image_channel, block_expansion, kernel_size=3, padding=1)
        down = []
        for i in range(num_down_blocks):
            cin = min(max_features, block_expansion * (2 ** i))
            cout = min(max_features, block_expansion * (2 ** (i + 1)))
            down.append(DownBlock2d(cin, cout, kernel_size=3, padding=1))
        self.down_blocks = nn.ModuleList(down)
        cin = min(max_features, block_expansion * (2 ** num_down_blocks))
        self.second = nn.Conv2d(cin, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel, kernel_size=3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.first(x)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        # reshape (not view): a channels-last (NHWC-strided) input yields channels-last activations
        out = out.reshape(b, self.reshape_channel, self.reshape_depth, h, w)
        return self.resblocks_3d(out)
