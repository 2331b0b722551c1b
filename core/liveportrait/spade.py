"""LivePortrait SPADE decoder ("G"): warped 2-D feature map -> RGB image in (0, 1).

Written from the documented architecture (PIPELINE.md step 7) and the official checkpoint keys
(``checkpoint_manifest.json``, file ``spade_generator``); parameter names reproduce those keys
exactly so an official ``spade_generator.pth`` (or Kijai's safetensors) loads with a strict
``load_state_dict``.

Layout (``C = min(max_features, block_expansion * 2**num_down_blocks)``, official 256, tiny 8)::

    fc          3x3 conv C -> 2C
    G_middle_i  6 SPADE res-blocks 2C -> 2C             (input scale)
    up          nearest x2
    up_0        SPADE res-block 2C -> C                 (2x)
    up          nearest x2
    up_1        SPADE res-block C -> 64                 (4x)
    conv_img    LeakyReLU(0.2) -> 3x3 conv 64 -> 3*upscale**2 -> PixelShuffle(upscale); sigmoid

Every SPADE normalisation is modulated by the decoder INPUT (the "segmentation map") resized
(nearest) to the current scale: ``IN(x) * (1 + gamma(s)) + beta(s)`` with
``a = ReLU(conv3x3(s))`` (128 hidden channels), ``gamma = conv3x3(a)``, ``beta = conv3x3(a)``.
Res-block: ``shortcut + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x))))))`` with the shortcut
``conv_s(norm_s(x))`` (1x1, no bias, no activation) when the channel count changes, else ``x``.
conv_0/conv_1/conv_s are spectrally normalised (eval-only, see :class:`SNConv2d`).

Speed (CPU, batch 1, official size; see ``_fast_forward``): in eval mode under ``no_grad`` /
``inference_mode`` the decoder runs an exact re-arrangement of the same computation.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SNConv2d", "SPADE", "SPADEResBlock", "SPADEDecoder"]

#: hard-coded in the official class (not in models.yaml)
OUT_CHANNELS = 64
SPADE_HIDDEN = 128
LRELU_SLOPE = 0.2
N_MIDDLE = 6


class SNConv2d(nn.Module):
    """Conv2d with an eval-only spectral norm stored the way ``torch.nn.utils.spectral_norm`` does.

    State dict: ``bias`` (optional, parameter), ``weight_orig`` (parameter), ``weight_u``,
    ``weight_v`` (buffers) - in that order, no ``weight``. The effective weight is
    ``weight_orig / sigma`` with ``sigma = u . (W_mat @ v)``, ``W_mat = weight_orig.view(out, -1)``,
    using the STORED ``u`` and ``v``: no power iteration ever runs (not even in train mode), so
    ``u``/``v`` are never modified.

    Caching: when autograd is off (``no_grad``/``inference_mode``) the normalised weight is
    computed once and reused until ``weight_orig``, ``weight_u`` or ``weight_v`` change
    (in-place writes such as ``load_state_dict`` bump the version counter; ``.to()``/``.half()``
    replace the storage); with autograd on it is recomputed every call (differentiable).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.padding = kernel_size, padding
        # registration order = official state-dict order: bias, weight_orig, weight_u, weight_v
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_channels))
        else:
            self.register_parameter("bias", None)
        self.weight_orig = nn.Parameter(
            torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        nn.init.kaiming_uniform_(self.weight_orig, a=5 ** 0.5)
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0, eps=1e-12))
        self.register_buffer("weight_v", F.normalize(torch.randn(in_channels * kernel_size ** 2),
                                                     dim=0, eps=1e-12))
        self._cache_key = None
        self._cache = None

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, bias={self.bias is not None}, spectral_norm=eval")

    def compute_weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def _key(self):
        key = []
        for t in (self.weight_orig, self.weight_u, self.weight_v):
            try:
                version = t._version
            except RuntimeError:  # inference tensors have no version counter
                return None
            key.append((id(t), t.data_ptr(), version, t.dtype, t.device))
        return tuple(key)

    def weight(self) -> torch.Tensor:
        """The spectrally normalised weight (cached when autograd is off)."""
        if torch.is_grad_enabled():
            return self.compute_weight()
        key = self._key()
        if key is None or key != self._cache_key:
            self._cache = self.compute_weight()
            self._cache_key = key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)

    def _apply(self, fn, *args, **kwargs):
        self._cache_key = self._cache = None
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self._cache_key = self._cache = None
        return super()._load_from_state_dict(*args, **kwargs)


class SPADE(nn.Module):
    """``InstanceNorm2d(affine=False)(x) * (1 + gamma(seg)) + beta(seg)``, seg resized (nearest)."""

    def __init__(self, norm_nc: int, label_nc: int, hidden: int = SPADE_HIDDEN):
        super().__init__()
        self.param_free_norm = nn.InstanceNorm2d(norm_nc, affine=False)
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, hidden, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(hidden, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(hidden, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        normalized = self.param_free_norm(x)
        if seg.shape[-2:] != x.shape[-2:]:
            seg = F.interpolate(seg, size=x.shape[-2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return normalized * (1 + self.mlp_gamma(actv)) + self.mlp_beta(actv)


class SPADEResBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int):
        super().__init__()
        self.learned_shortcut = fin != fout
        fmiddle = min(fin, fout)
        self.conv_0 = SNConv2d(fin, fmiddle, 3, padding=1)
        self.conv_1 = SNConv2d(fmiddle, fout, 3, padding=1)
        if self.learned_shortcut:
            self.conv_s = SNConv2d(fin, fout, 1, bias=False)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmiddle, label_nc)
        if self.learned_shortcut:
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        x_s = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(F.leaky_relu(self.norm_0(x, seg), LRELU_SLOPE))
        dx = self.conv_1(F.leaky_relu(self.norm_1(dx, seg), LRELU_SLOPE))
        return x_s + dx


class SPADEDecoder(nn.Module):
    """LivePortrait's generator G. ``forward(feature (B,C,H,W)) -> (B,3,4*upscale/2*H...)``.

    Output size: ``H * 4 * upscale / ... `` = ``H * 2 * 2 * upscale`` (two nearest x2 plus the
    final PixelShuffle): official 64x64 -> 512x512, tiny 16x16 -> 128x128 (upscale 2).
    """

    def __init__(self, upscale: int = 1, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 2):
        super().__init__()
        self.upscale = upscale
        ic = min(max_features, block_expansion * 2 ** num_down_blocks)
        self.in_channels = ic
        self.fc = nn.Conv2d(ic, 2 * ic, 3, padding=1)
        for i in range(N_MIDDLE):
            self.add_module(f"G_middle_{i}", SPADEResBlock(2 * ic, 2 * ic, ic))
        self.up_0 = SPADEResBlock(2 * ic, ic, ic)
        self.up_1 = SPADEResBlock(ic, OUT_CHANNELS, ic)
        self.up = nn.Upsample(scale_factor=2)
        self.conv_img = nn.Sequential(nn.Conv2d(OUT_CHANNELS, 3 * upscale ** 2, 3, padding=1),
                                      nn.PixelShuffle(upscale))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(N_MIDDLE):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(self.up(x), seg)
        x = self.up_1(self.up(x), seg)
        x = self.conv_img(F.leaky_relu(x, LRELU_SLOPE))
        return torch.sigmoid(x)
