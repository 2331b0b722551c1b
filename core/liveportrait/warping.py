"""LivePortrait warping module W (dense motion network + feature warping).

Given the source feature volume ``f_s`` (from :mod:`core.liveportrait.appearance`) and the
source / driving implicit keypoints, W predicts a dense 3-D deformation field and an occlusion
map, warps ``f_s`` and produces the 2-D feature map that the SPADE decoder renders:

    feature_3d (B|1, C, D, H, W), kp_driving (B, K, 3), kp_source (B, K, 3)
      -> {"deformation": (B, D, H, W, 3), "occlusion_map": (B, 1, H, W),
          "mask": (B, K+1, D, H, W), "out": (B, C', H, W)}
    official: C=32, D=16, H=W=64, K=21, C'=256

Keypoints are (x, y, z) in the normalised [-1, 1] cube of the feature volume (x along W,
y along H, z along D). Parameter names match the official ``warping_module.pth`` exactly.

Dense motion network (``dense_motion_network``):

1. ``compress`` (1x1x1 conv C -> compress) -> ``norm`` (BatchNorm3d) -> ReLU.
2. Identity grid ``g`` of the (D, H, W) volume with coordinates ``2*i/(n-1) - 1`` per axis.
3. K+1 zero-order sparse motions: background = ``g``; keypoint k = ``g - kp_d[k] + kp_s[k]``.
4. The compressed volume is warped by each of them. Each motion is a translated identity grid, so
   its x depends on W only, y on H only, z on D only, and the trilinear warp factors into one
   2-tap interpolation per axis: three small matrix products for all K+1 warps
   (:func:`core.sampling.separable_grid_sample_3d`, equal to ``grid_sample`` up to float32 rounding,
   2-3x faster on the CPU, and no 3-D sampling kernel needed). Heatmaps
   ``exp(-|g-kp_d|^2/(2*0.01)) - exp(-|g-kp_s|^2/(2*0.01))`` (zeros for the background) are
   prepended per motion: input (B, (K+1)*(compress+1), D, H, W).
5. 3-D hourglass (``hourglass``): encoder of ``num_blocks`` DownBlock3d (3x3x3 conv, BN3d,
   ReLU, avg-pool (1,2,2): H, W halved, D kept), decoder of UpBlock3d (nearest upsample
   (1,2,2), 3x3x3 conv, BN3d, ReLU) with skip concatenation ``cat([up, skip])``, then a final
   3x3x3 conv + BN3d + ReLU on the ``block_expansion + in_features`` channels.
6. ``mask``: 7x7x7 conv (pad 3) -> softmax over the K+1 motions; deformation =
   sum_k mask_k * motion_k.
7. ``occlusion``: the hourglass output reshaped to (B, channels*D, H, W) -> 7x7 conv2d
   (pad 3) -> sigmoid.

Warping network: ``f_s`` is warped with the deformation, reshaped to (B, C*D, H, W) ->
``third`` (3x3 conv, BatchNorm2d, LeakyReLU(0.01)) -> ``fourth`` (1x1 conv) -> x occlusion.

All 5-D warps use ``F.grid_sample(mode="bilinear", padding_mode="zeros",
align_corners=False)`` - the official behaviour (the identity grid above is built with
align-corners style coordinates but sampled with ``align_corners=False``; this slight
mismatch is part of the trained model and must be kept).

Broadcasting: ``feature_3d`` may have batch 1 while the keypoints have batch B (the renderer
encodes the source once); the volume is then shared by all B rows without being copied.
The module must be used in ``eval()`` mode (BatchNorm running statistics).
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Dict, Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..device import autocast_dtype
from ..sampling import grid_sample_3d, resolve_sampler, separable_grid_sample_3d
from .appearance import SameBlock2d

__all__ = ["WarpingNetwork", "DenseMotionNetwork", "HourglassEncoder3d", "HourglassDecoder3d",
           "Hourglass3d", "DownBlock3d", "UpBlock3d", "coordinate_grid_3d", "KP_VARIANCE"]

#: variance of the keypoint gaussians of the dense motion network
KP_VARIANCE = 0.01


def _grid_sample(volume: torch.Tensor, grid: torch.Tensor, sampler: str = "auto") -> torch.Tensor:
    """5-D bilinear warp with the official settings (zeros padding, align_corners=False), by the
    chosen kernel (:func:`core.sampling.grid_sample_3d`: torch's, or gathers on MPS)."""
    return grid_sample_3d(volume, grid, sampler)


def _conv3d_by_depth_taps(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a stride-1 Conv3d as ONE conv2d: the depth slices become the batch and the
    kernel's depth taps become output channels (``kd * O``), whose shifted slices are then summed in
    float32. Same maths as the 3-D convolution (each depth tap's 2-D partial sum rounded once to the
    input's dtype); returned in float32.

    Why: oneDNN's bf16 kernels for a 7x7x7 kernel over 142 channels run at a tenth of its 2-D speed
    (measured on a 2-core AMX CPU: 630 ms against 100 ms for the dense-motion mask conv), while the
    3x3x3 convs are as fast in 3-D. So it is used for bf16/fp16 on the CPU with kernel depth >= 5."""
    w, bias = conv.weight, conv.bias
    b, c, d, h, wd = x.shape
    o, _, kd, kh, kw = w.shape
    pd, ph, pw = conv.padding
    xp = F.pad(x, (0, 0, 0, 0, pd, pd)) if pd else x
    dp = d + 2 * pd
    x2 = _depth_slices(xp).contiguous(memory_format=torch.channels_last)  # a view when xp is channels-last
    w2 = w.permute(2, 0, 1, 3, 4).reshape(kd * o, c, kh, kw).to(x.dtype)
    y = F.conv2d(x2, w2, None, padding=(ph, pw))              # (B*Dp, kd*O, H', W')
    y = y.view(b, dp, kd, o, y.shape[-2], y.shape[-1])
    do = dp - kd + 1
    out = y[:, 0:do, 0].float()
    for k in range(1, kd):
        out += y[:, k:k + do, k]
    if bias is not None:
        out += bias.float().view(1, 1, o, 1, 1)
    return out.transpose(1, 2).contiguous()


def _conv3d(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    if (x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16) and conv.kernel_size[0] >= 5
            and conv.stride == (1, 1, 1) and conv.dilation == (1, 1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and not isinstance(conv.padding, str)):
        return _conv3d_by_depth_taps(conv, x)
    return conv(x)


#: per Conv3d (weakly held): the key of the weights it was packed from and the packed (weight, bias)
_PACKED: "weakref.WeakKeyDictionary[nn.Conv3d, tuple]" = weakref.WeakKeyDictionary()
_PACKING = {"mkldnn": True}  # False once oneDNN's packed convolution failed here: dense folded weights then


def _version(t: torch.Tensor):
    try:
        return t._version
    except RuntimeError:  # inference tensor: no version counter
        return None


def _packed_conv_bn(conv: nn.Conv3d, norm: nn.BatchNorm3d, dtype: torch.dtype, pack: bool) -> tuple:
    """``conv`` with ``norm`` (eval) folded in, in ``dtype``, laid out once for oneDNN (``pack``) or dense."""
    pack = pack and _PACKING["mkldnn"]
    params = (conv.weight, conv.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var)
    key = (dtype, pack, norm.eps) + tuple(
        None if t is None else (t.data_ptr(), _version(t), t.dtype) for t in params)
    hit = _PACKED.get(conv)
    if hit is not None and hit[0] == key:
        return hit[1]
    with torch.no_grad(), torch.autocast(device_type="cpu", enabled=False):
        # running_var >= 0 and eps > 0: the root is of a positive number
        scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)
        weight = conv.weight.float() * scale.view(-1, 1, 1, 1, 1)
        bias = conv.bias.float() if conv.bias is not None else torch.zeros_like(scale)
        bias = (bias - norm.running_mean.float()) * scale + norm.bias.float()
        packed = None
        if pack:
            try:
                packed = ("mkldnn", torch._C._nn.mkldnn_reorder_conv3d_weight(
                    weight.to(dtype).to_mkldnn(), list(conv.padding), list(conv.stride), list(conv.dilation),
                    conv.groups), bias.to_mkldnn())
            except (AttributeError, RuntimeError):  # no oneDNN packing in this torch build
                _PACKING["mkldnn"] = False
                key = (dtype, False) + key[2:]
        if packed is None:
            packed = ("dense", weight.to(dtype), bias.to(dtype))
    _PACKED[conv] = (key, packed)
    return packed


def _conv_bn(conv: nn.Conv3d, norm: nn.BatchNorm3d, x: torch.Tensor) -> torch.Tensor:
    """``norm(conv(x))``. On the CPU in half precision (``x`` in it, or autocast on; inference, eval-mode
    norm) one convolution with the batch norm folded into its weights, rounded once to that dtype and laid
    out once for oneDNN; the result is in that dtype.

    Why: with fp32 weights autocast casts every weight on every call, and oneDNN re-lays each one out per
    call; for the hourglass's small volumes (16 x 4 x 4 with 1024 channels) that took more than the
    arithmetic: 24 ms against 10 ms packed (2-core AMX CPU, bf16)."""
    dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else autocast_dtype(x.device)
    if (x.device.type != "cpu" or dtype not in (torch.bfloat16, torch.float16) or norm.training
            or torch.is_grad_enabled() or not norm.track_running_stats or norm.running_var is None
            or conv.padding_mode != "zeros" or isinstance(conv.padding, str)):
        return norm(conv(x))
    # the result stays in half precision (autocast's batch norm would return float32, and the next
    # convolution would round it again)
    x = x.to(dtype)
    # packed weights pay where the weight outweighs the activations (the small volumes); elsewhere the
    # copies into and out of oneDNN's layout cost more than the weight's per-call layout
    pack = conv.weight.numel() >= x.numel()
    kind, weight, bias = _packed_conv_bn(conv, norm, dtype, pack)
    layout = torch.channels_last_3d if _is_channels_last_3d(x) else torch.contiguous_format
    if kind == "mkldnn":
        try:
            y = torch.mkldnn_convolution(x.contiguous().to_mkldnn(), weight, bias, list(conv.padding),
                                         list(conv.stride), list(conv.dilation), conv.groups).to_dense()
            return y.contiguous(memory_format=layout)  # small: the weight outweighs it
        except RuntimeError:  # this oneDNN refuses it: dense folded weights from now on
            _PACKING["mkldnn"] = False
            kind, weight, bias = _packed_conv_bn(conv, norm, dtype, False)
    y = F.conv3d(x, weight.contiguous(memory_format=layout), bias, conv.stride, conv.padding, conv.dilation,
                 conv.groups)
    return y.contiguous(memory_format=layout)  # oneDNN without native half kernels may answer in NCDHW


def _cpu_half_layout(x: torch.Tensor, dtype: torch.dtype) -> torch.memory_format:
    """The hourglass's layout: channels-last 3-D for half precision on the CPU, where oneDNN's bf16/fp16
    3-D convolutions want it (the 142-channel 3x3x3 conv over 16 x 64 x 64: 28 ms channels-last against
    60 ms from NCDHW, which it copies into its layout on every call), else NCDHW."""
    if x.device.type == "cpu" and dtype in (torch.bfloat16, torch.float16):
        return torch.channels_last_3d
    return torch.contiguous_format


def _is_channels_last_3d(x: torch.Tensor) -> bool:
    return x.dim() == 5 and x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


def _depth_slices(x: torch.Tensor) -> torch.Tensor:
    """A (B, C, D, H, W) volume as its B*D depth slices (B*D, C, H, W): a channels-last view of a channels-last
    volume (a copy otherwise)."""
    b, c, d, h, w = x.shape
    return x.transpose(1, 2).reshape(b * d, c, h, w)


def _conv2d_over_depth(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x.reshape(B, C*D, H, W))`` (input channel ``c*D + d``) for a channels-last volume ``x``, without
    that reshape's transposing copy: each depth slice is convolved with its own kernel slice (the slices become
    the batch, the D kernels the output channels), then slice d's output d is summed over d in float32.
    Returned in float32. Used for the occlusion conv of a half-precision CPU hourglass."""
    b, c, d, h, w = x.shape
    o, cd, kh, kw = conv.weight.shape
    if cd != c * d:
        raise ValueError(f"{conv} expects {cd} input channels, got {c} x {d}")
    w2 = conv.weight.view(o, c, d, kh, kw).permute(2, 0, 1, 3, 4).reshape(d * o, c, kh, kw).to(x.dtype)
    y = F.conv2d(_depth_slices(x), w2, None, conv.stride, conv.padding, conv.dilation)  # (B*D, D*O, H', W')
    y = y.view(b, d, d, o, y.shape[-2], y.shape[-1])
    out = y[:, 0, 0].float()
    for i in range(1, d):
        out += y[:, i, i]
    if conv.bias is not None:
        out += conv.bias.float().view(1, o, 1, 1)
    return out


def _as_is(x: torch.Tensor):
    """Autocast off for a half-precision ``x`` on the CPU, whose autocast runs pooling and upsampling in
    float32: a 2x2 mean and a nearest copy lose nothing the next convolution would keep (it rounds its input
    to half precision anyway), and the float32 round trip costs two casts of the activations per block."""
    if x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type="cpu", enabled=False)
    return contextlib.nullcontext()


def coordinate_grid_3d(d: int, h: int, w: int, dtype: torch.dtype = torch.float32,
                       device=None) -> torch.Tensor:
    """(d, h, w, 3) grid of (x, y, z) coordinates, ``2*i/(n-1) - 1`` along each axis."""
    def axis(n):
        t = torch.arange(n, dtype=dtype, device=device)
        return 2 * (t / (n - 1)) - 1

    z = axis(d).view(d, 1, 1).expand(d, h, w)
    y = axis(h).view(1, h, 1).expand(d, h, w)
    x = axis(w).view(1, 1, w).expand(d, h, w)
    return torch.stack([x, y, z], dim=-1)


class DownBlock3d(nn.Module):
    """3x3x3 conv -> BatchNorm3d -> ReLU -> average pooling (1, 2, 2) (depth kept)."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(_conv_bn(self.conv, self.norm, x))
        if x.dtype in (torch.bfloat16, torch.float16) and x.device.type == "cpu":
            # avg_pool3d has no half-precision CPU kernel (autocast would pool in float32 and the next
            # convolution round it back): a (1, 2, 2) pool is a 2-D pool of the depth slices
            b, c, d, h, w = x.shape
            with _as_is(x):
                if _is_channels_last_3d(x):
                    return F.avg_pool2d(_depth_slices(x), kernel_size=2).view(b, d, c, h // 2, w // 2).transpose(1, 2)
                return F.avg_pool2d(x.reshape(b, c * d, h, w), kernel_size=2).view(b, c, d, h // 2, w // 2)
        return F.avg_pool3d(x, kernel_size=(1, 2, 2))


class UpBlock3d(nn.Module):
    """nearest upsampling (1, 2, 2) -> 3x3x3 conv -> BatchNorm3d -> ReLU."""

    def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, kernel_size=kernel_size, padding=padding)
        self.norm = nn.BatchNorm3d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with _as_is(x):
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return F.relu(_conv_bn(self.conv, self.norm, x))


class HourglassEncoder3d(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            cin = in_features if i == 0 else min(max_features, block_expansion * (2 ** i))
            cout = min(max_features, block_expansion * (2 ** (i + 1)))
            blocks.append(DownBlock3d(cin, cout))
        self.down_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor):
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class HourglassDecoder3d(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            cin = (1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * (2 ** (i + 1)))
            cout = min(max_features, block_expansion * (2 ** i))
            blocks.append(UpBlock3d(cin, cout))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features
        self.conv = nn.Conv3d(self.out_filters, self.out_filters, kernel_size=3, padding=1)
        self.norm = nn.BatchNorm3d(self.out_filters, affine=True)

    def forward(self, skips) -> torch.Tensor:
        skips = list(skips)
        out = skips.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(_conv_bn(self.conv, self.norm, out))


class Hourglass3d(nn.Module):
    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3,
                 max_features: int = 256):
        super().__init__()
        self.encoder = HourglassEncoder3d(block_expansion, in_features, num_blocks, max_features)
        self.decoder = HourglassDecoder3d(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def _check_batches(feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> int:
    if kp_driving.dim() != 3 or kp_driving.shape[-1] != 3 or kp_source.shape != kp_driving.shape:
        raise ValueError(f"keypoints must both be (B, K, 3), got {tuple(kp_driving.shape)} and "
                         f"{tuple(kp_source.shape)}")
    b, bf = kp_driving.shape[0], feature.shape[0]
    if bf != b and bf != 1:
        raise ValueError(f"feature batch {bf} must be 1 or equal the keypoint batch {b}")
    return b


class DenseMotionNetwork(nn.Module):
    """Predicts the (K+1)-way motion mask, the dense deformation and the occlusion map."""

    #: 3-D sampling kernel (:data:`core.sampling.SAMPLERS`; set through ``WarpingNetwork.sampler``)
    sampler = "auto"

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int,
                 feature_channel: int, reshape_depth: int, compress: int,
                 estimate_occlusion_map: bool = True):
        super().__init__()
        self.num_kp = num_kp
        self.compress_channels = compress
        self.reshape_depth = reshape_depth
        # registration order = official state-dict order
        self.hourglass = Hourglass3d(block_expansion, (num_kp + 1) * (compress + 1), num_blocks,
                                     max_features)
        self.mask = nn.Conv3d(self.hourglass.out_filters, num_kp + 1, kernel_size=7, padding=3)
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        if estimate_occlusion_map:
            self.occlusion = nn.Conv2d(self.hourglass.out_filters * reshape_depth, 1,
                                       kernel_size=7, padding=3)
        else:
            self.occlusion = None

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        b = _check_batches(feature, kp_driving, kp_source)
        k = kp_driving.shape[1]
        if k != self.num_kp:
            raise ValueError(f"expected {self.num_kp} keypoints, got {k}")
        feature = F.relu(self.norm(self.compress(feature)))          # (bf, c, D, H, W)
        bf, c, d, h, w = feature.shape
        # the geometry (grid, keypoints, heatmaps, motions) stays in float32 under half precision:
        # bf16 coordinates (spacing 2**-7 near 1) would move the sampling points by up to an eighth of a voxel
        geo = torch.promote_types(feature.dtype, torch.float32)
        grid = coordinate_grid_3d(d, h, w, geo, feature.device)        # (D, H, W, 3)

        # gaussian heatmaps (driving - source), zeros for the background: (B, K+1, D, H, W).
        # exp(-|g - kp|^2 / (2 var)) is separable: the product of one factor per axis, each computed on
        # that axis's coordinates (the same differences as above), instead of D*H*W*3 squares and exps
        def gaussian(kp):
            f = [torch.exp(-0.5 * (grid_axis - kp[..., i].view(b, k, 1)).pow(2) / KP_VARIANCE)
                 for i, grid_axis in enumerate(axes)]                 # x (W), y (H), z (D): (B, K, n)
            return f[2].view(b, k, d, 1, 1) * f[1].view(b, k, 1, h, 1) * f[0].view(b, k, 1, 1, w)

        axes = (grid[0, 0, :, 0], grid[0, :, 0, 1], grid[:, 0, 0, 2])
        kp_d3, kp_s3 = kp_driving.to(geo).view(b, k, 3), kp_source.to(geo).view(b, k, 3)
        heatmap = torch.cat([grid.new_zeros(b, 1, d, h, w), gaussian(kp_d3) - gaussian(kp_s3)], dim=1)

        # zero-order sparse motions, identity then g - kp_d[k] + kp_s[k], one axis at a time: component i
        # of motion k depends on that axis's coordinate only. (B, K+1, n) for x (W), y (H), z (D)
        motion_axes = [torch.cat([ax.expand(b, 1, -1), (ax - kp_d3[..., i:i + 1]) + kp_s3[..., i:i + 1]], dim=1)
                       for i, ax in enumerate(axes)]

        # warp the compressed volume by all K+1 motions: three per-axis interpolations
        if bf == b:
            warped = separable_grid_sample_3d(feature, *motion_axes)      # (B, K+1, c, D, H, W)
        else:  # one shared volume for all rows
            warped = separable_grid_sample_3d(feature, *(m.reshape(1, b * (k + 1), -1) for m in motion_axes))
            warped = warped[0].unflatten(0, (b, k + 1))
        warped = warped.to(geo)
        hg_in = torch.cat([heatmap.unsqueeze(2).to(warped.dtype), warped], dim=2)  # (B, K+1, c+1, D, H, W)
        hg_in = hg_in.view(b, (k + 1) * (c + 1), d, h, w)
        low = autocast_dtype(hg_in.device)
        if low is not None:
            # rounded once here, as the first convolution would round it; the hourglass's last skip
            # concatenation then stays in half precision too (no float32 copies of 142 x D x H x W).
            # On the CPU the hourglass runs channels-last (see _cpu_half_layout)
            hg_in = hg_in.to(dtype=low, memory_format=_cpu_half_layout(hg_in, low))

        prediction = self.hourglass(hg_in)                            # (B, P, D, H, W)
        mask = torch.softmax(_conv3d(self.mask, prediction), dim=1)   # (B, K+1, D, H, W)
        # deformation = sum_k mask_k * motion_k, per component (B, D, H, W, 3)
        views = ((b, k + 1, 1, 1, w), (b, k + 1, 1, h, 1), (b, k + 1, d, 1, 1))
        deformation = torch.stack([(mask * m.view(v)).sum(dim=1) for m, v in zip(motion_axes, views)], dim=-1)

        occlusion_map = None
        if self.occlusion is not None:
            p = prediction.shape[1]
            if _is_channels_last_3d(prediction):
                occlusion_map = torch.sigmoid(_conv2d_over_depth(self.occlusion, prediction))
            else:
                occlusion_map = torch.sigmoid(self.occlusion(prediction.reshape(b, p * d, h, w)))
        return {"mask": mask, "deformation": deformation, "occlusion_map": occlusion_map}


class WarpingNetwork(nn.Module):
    """LivePortrait W: warps the source feature volume to the driving keypoints."""

    def __init__(self, num_kp: int = 21, block_expansion: int = 64, max_features: int = 512,
                 num_down_blocks: int = 2, reshape_channel: int = 32,
                 estimate_occlusion_map: bool = True, dense_motion_params: Optional[dict] = None):
        super().__init__()
        if dense_motion_params is None:
            raise ValueError("dense_motion_params is required")
        self.num_kp = num_kp
        self.estimate_occlusion_map = estimate_occlusion_map
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp, feature_channel=reshape_channel,
            estimate_occlusion_map=estimate_occlusion_map, **dense_motion_params)
        out_features = block_expansion * (2 ** num_down_blocks)
        # input = the warped volume flattened to (C*D) channels (= max_features officially)
        self.third = SameBlock2d(max_features, out_features, kernel_size=3, padding=1, lrelu=True)
        self.fourth = nn.Conv2d(out_features, out_features, kernel_size=1)

    @property
    def sampler(self) -> str:
        """The 3-D sampling kernel of both warps (:data:`core.sampling.SAMPLERS`): ``"auto"`` (gathers
        on MPS, which has no 3-D grid_sample kernel; torch's elsewhere), ``"torch"`` or ``"gather"``."""
        return self.dense_motion_network.sampler

    @sampler.setter
    def sampler(self, name: str) -> None:
        resolve_sampler(name, torch.device("cpu"))  # validates the name
        self.dense_motion_network.sampler = name

    def warp_volume(self, feature_3d: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """grid_sample ``feature_3d`` (B|1, C, D, H, W) with ``deformation`` (B, D', H', W', 3).

        Batch-1 volumes are shared by all rows of ``deformation`` (no copy of the volume).
        """
        b, bf = deformation.shape[0], feature_3d.shape[0]
        if bf == b:
            return _grid_sample(feature_3d, deformation, self.sampler)
        if bf != 1:
            raise ValueError(f"feature batch {bf} must be 1 or equal the deformation batch {b}")
        _, d, h, w, _ = deformation.shape
        out = _grid_sample(feature_3d, deformation.reshape(1, b * d, h, w, 3), self.sampler)  # (1, C, B*D, H, W)
        return out.view(feature_3d.shape[1], b, d, h, w).transpose(0, 1)

    def forward(self, feature_3d: torch.Tensor, kp_driving: torch.Tensor,
                kp_source: torch.Tensor) -> Dict[str, Optional[torch.Tensor]]:
        dense = self.dense_motion_network(feature_3d, kp_driving, kp_source)
        deformation = dense["deformation"]
        out = self.warp_volume(feature_3d, deformation)              # (B, C, D, H, W)
        b, c, d, h, w = out.shape
        out = out.reshape(b, c * d, h, w)
        out = self.fourth(self.third(out))
        occlusion_map = dense["occlusion_map"]
        if occlusion_map is not None:
            if occlusion_map.shape[2:] != out.shape[2:]:
                occlusion_map = F.interpolate(occlusion_map, size=out.shape[2:], mode="bilinear",
                                              align_corners=False)
            out = out * occlusion_map
        return {"occlusion_map": occlusion_map, "deformation": deformation, "out": out,
                "mask": dense["mask"]}
