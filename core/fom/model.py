"""First Order Motion Model networks: keypoint detector, dense motion, occlusion-aware generator.

Module and parameter names follow the official checkpoint's state-dict keys exactly
(``predictor.encoder.down_blocks.0.conv.weight``, ``dense_motion_network.hourglass...``), so
``vox-cpk.pth.tar`` loads with a strict key check. Layouts are NCHW; keypoints are ``(x, y)``
in [-1, 1] with -1/+1 on the centres of the first/last pixel.

``grid_sample`` / bilinear ``interpolate`` use ``align_corners=False``, which is what the
official code gets from today's torch (it calls them without the argument) and therefore what
its published outputs are (the model was trained under torch 1.0's ``True`` behaviour).
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..device import full_precision

#: the official code relies on torch's default; fixed here so behaviour never drifts
ALIGN_CORNERS = False

KP = Dict[str, torch.Tensor]  # {"value": [B,K,2], "jacobian": [B,K,2,2] (optional)}


def coordinate_grid(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """``[h, w, 2]`` grid of (x, y) in [-1, 1], -1/+1 on the first/last pixel centres."""
    x = torch.arange(w, device=device, dtype=dtype)
    y = torch.arange(h, device=device, dtype=dtype)
    x = 2 * (x / (w - 1)) - 1
    y = 2 * (y / (h - 1)) - 1
    return torch.stack([x.view(1, w).expand(h, w), y.view(h, 1).expand(h, w)], dim=-1)


def kp_to_gaussian(value: torch.Tensor, h: int, w: int, variance: float) -> torch.Tensor:
    """Gaussian bumps ``[B, K, h, w]`` centred on the keypoints ``value`` ``[B, K, 2]``."""
    grid = coordinate_grid(h, w, value.device, value.dtype)
    diff = grid.view(1, 1, h, w, 2) - value.view(*value.shape[:2], 1, 1, 2)
    return torch.exp(-0.5 * (diff ** 2).sum(-1) / variance)


# --------------------------------------------------------------------------- building blocks
class _ConvNormReLU(nn.Module):
    """conv -> BatchNorm -> ReLU, optionally with 2x nearest upsampling before or 2x2 average
    pooling after (the official UpBlock2d / SameBlock2d / DownBlock2d)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, padding: int = 1, mode: str = "same") -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=padding)
        self.norm = nn.BatchNorm2d(cout, affine=True)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "up":
            x = self._upsample_conv(x) if hasattr(self, "phase3") else self.conv(F.interpolate(x, scale_factor=2))
        else:
            x = self.conv(x)
        x = F.relu(self.norm(x))
        if self.mode == "down":
            x = F.avg_pool2d(x, kernel_size=(2, 2))
        return x


    def prepare_subpixel(self) -> None:
        """Precompute the four 2x2 kernels that make :meth:`_upsample_conv` equal to a 3x3 conv
        (padding 1) of the 2x nearest-upsampled input, at 16/36 of its multiply-adds.

        Output row ``2i+a`` only sees input rows ``i-1, i`` (a=0) or ``i, i+1`` (a=1): the taps
        that land on the same input row are summed (same for columns)."""
        w = self.conv.weight
        rows = [torch.stack([w[:, :, 0], w[:, :, 1] + w[:, :, 2]], 2),   # a = 0: rows i-1, i
                torch.stack([w[:, :, 0] + w[:, :, 1], w[:, :, 2]], 2)]   # a = 1: rows i, i+1
        for a in (0, 1):
            r = rows[a]
            cols = [torch.stack([r[..., 0], r[..., 1] + r[..., 2]], -1),   # c = 0: columns j-1, j
                    torch.stack([r[..., 0] + r[..., 1], r[..., 2]], -1)]   # c = 1: columns j, j+1
            for c in (0, 1):  # 4-D buffers, so .to(device / dtype / channels_last) moves them too
                self.register_buffer(f"phase{2 * a + c}", cols[c].detach().clone(), persistent=False)

    def _upsample_conv(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1))
        outs = []
        for a in (0, 1):
            for c in (0, 1):
                window = padded[:, :, a:a + h + 1, c:c + w + 1]
                outs.append(F.conv2d(window, getattr(self, f"phase{2 * a + c}"), self.conv.bias))
        y = torch.stack(outs, dim=2)  # [B, C, 4, h, w], phase = 2a + c
        return F.pixel_shuffle(y.reshape(b, -1, h, w), 2)


class ResBlock(nn.Module):
    """Pre-activation residual block: BN -> ReLU -> conv, twice, plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm1 = nn.BatchNorm2d(channels, affine=True)
        self.norm2 = nn.BatchNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return out + x


def _width(expansion: int, level: int, cap: int) -> int:
    return min(cap, expansion * (2 ** level))


class Encoder(nn.Module):
    def __init__(self, expansion: int, cin: int, num_blocks: int, cap: int) -> None:
        super().__init__()
        self.down_blocks = nn.ModuleList(
            _ConvNormReLU(cin if i == 0 else _width(expansion, i, cap), _width(expansion, i + 1, cap), mode="down")
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    def __init__(self, expansion: int, cin: int, num_blocks: int, cap: int) -> None:
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2  # inputs after the first are concatenated skips
            blocks.append(_ConvNormReLU(mult * _width(expansion, i + 1, cap), _width(expansion, i, cap), mode="up"))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_channels = expansion + cin

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        feats = list(feats)
        out = feats.pop()
        for block in self.up_blocks:
            out = torch.cat([block(out), feats.pop()], dim=1)
        return out


class Hourglass(nn.Module):
    def __init__(self, expansion: int, cin: int, num_blocks: int, cap: int) -> None:
        super().__init__()
        self.encoder = Encoder(expansion, cin, num_blocks, cap)
        self.decoder = Decoder(expansion, cin, num_blocks, cap)
        self.out_channels = self.decoder.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


def antialias_kernel_size(scale: float) -> int:
    sigma = (1 / scale - 1) / 2
    return 2 * round(sigma * 4) + 1


class AntiAliasDownsample(nn.Module):
    """Depthwise Gaussian blur (sigma = (1/scale - 1)/2) then keep every (1/scale)-th pixel.

    The kernel is a buffer named ``weight`` as in the checkpoint (``down.weight``)."""

    def __init__(self, channels: int, scale: float) -> None:
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = antialias_kernel_size(scale)
        coords = torch.arange(size, dtype=torch.float32)
        g = torch.exp(-((coords - (size - 1) / 2) ** 2) / (2 * sigma ** 2))
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.view(1, 1, size, size).repeat(channels, 1, 1, 1))
        self.channels = channels
        self.step = int(1 / scale)
        self.pad_before = size // 2
        self.pad_after = size // 2 - 1 if size % 2 == 0 else size // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pad_before, self.pad_after
        x = F.conv2d(F.pad(x, (a, b, a, b)), self.weight, groups=self.channels)
        return x[:, :, ::self.step, ::self.step]


# --------------------------------------------------------------------------- keypoint detector
class KPDetector(nn.Module):
    """Unsupervised keypoints (soft-argmax of heatmaps) and their local 2x2 jacobians."""

    def __init__(self, block_expansion: int, num_kp: int, num_channels: int, max_features: int,
                 num_blocks: int, temperature: float, estimate_jacobian: bool = False,
                 scale_factor: float = 1, single_jacobian_map: bool = False, pad: int = 0) -> None:
        super().__init__()
        self.predictor = Hourglass(block_expansion, num_channels, num_blocks, max_features)
        self.kp = nn.Conv2d(self.predictor.out_channels, num_kp, 7, padding=pad)
        self.num_jacobian_maps = (1 if single_jacobian_map else num_kp) if estimate_jacobian else 0
        if estimate_jacobian:
            self.jacobian = nn.Conv2d(self.predictor.out_channels, 4 * self.num_jacobian_maps, 7, padding=pad)
        else:
            self.jacobian = None
        self.temperature = temperature
        self.scale_factor = scale_factor
        self.down = AntiAliasDownsample(num_channels, scale_factor) if scale_factor != 1 else None

    def forward(self, x: torch.Tensor) -> KP:
        if self.down is not None:
            x = self.down(x)
        features = self.predictor(x)
        # the heads, soft-argmax and jacobian sums in float32 even under half-precision autocast: they are
        # the geometry every warp of the frame follows (a bf16 keypoint is off by up to 2^-9 of the frame)
        features = features.float()
        logits = _float32(self.kp, features)
        b, k, h, w = logits.shape
        heat = F.softmax(logits.view(b, k, -1) / self.temperature, dim=2).view(b, k, h, w)
        grid = coordinate_grid(h, w, heat.device, heat.dtype)
        out = {"value": (heat.unsqueeze(-1) * grid.view(1, 1, h, w, 2)).sum(dim=(2, 3))}
        if self.jacobian is not None:
            maps = _float32(self.jacobian, features).view(b, self.num_jacobian_maps, 4, h, w)
            jac = (heat.unsqueeze(2) * maps).view(b, k, 4, -1).sum(dim=-1)
            out["jacobian"] = jac.view(b, k, 2, 2)
        return out


def _float32(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` in float32 with autocast off (the module's weights are float32: get_fom keeps them so)."""
    with full_precision(x.device):
        return conv(x.to(conv.weight.dtype))


# --------------------------------------------------------------------------- dense motion
class DenseMotionNetwork(nn.Module):
    """Combines the K sparse (keypoint + jacobian) motions into one dense flow and predicts the
    occlusion map, working at ``scale_factor`` of the input resolution."""

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int,
                 num_channels: int, estimate_occlusion_map: bool = False, scale_factor: float = 1,
                 kp_variance: float = 0.01) -> None:
        super().__init__()
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (num_channels + 1), num_blocks, max_features)
        self.mask = nn.Conv2d(self.hourglass.out_channels, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(self.hourglass.out_channels, 1, 7, padding=3) if estimate_occlusion_map else None
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        self.down = AntiAliasDownsample(num_channels, scale_factor) if scale_factor != 1 else None

    def downsample(self, source: torch.Tensor) -> torch.Tensor:
        """The source at this network's working resolution (frame independent: cacheable)."""
        return self.down(source) if self.down is not None else source

    def sparse_motions(self, h: int, w: int, kp_driving: KP, kp_source: KP) -> torch.Tensor:
        """``[B, K+1, h, w, 2]``: identity, then for each keypoint the affine map (value +
        jacobian) taking driving-frame coordinates to source-frame coordinates. ``kp_source``
        may have batch 1 (one source for every frame)."""
        b = kp_driving["value"].shape[0]
        with full_precision(kp_driving["value"].device):
            value = kp_driving["value"].float()
            identity = coordinate_grid(h, w, value.device).view(1, 1, h, w, 2)
            rel = identity - value.view(b, self.num_kp, 1, 1, 2)
            if "jacobian" in kp_driving:
                jac = torch.matmul(kp_source["jacobian"].float(), torch.inverse(kp_driving["jacobian"].float()))
                rel = torch.einsum("bkij,bkhwj->bkhwi", jac, rel)
            to_source = rel + kp_source["value"].float().view(-1, self.num_kp, 1, 1, 2)  # source batch 1 or b
            return torch.cat([identity.expand(b, 1, h, w, 2), to_source], dim=1)

    def forward(self, source_small: torch.Tensor, kp_driving: KP, kp_source: KP) -> Dict[str, torch.Tensor]:
        """``source_small``: the source already at working resolution (see :meth:`downsample`),
        with batch 1 or the driving batch."""
        b = kp_driving["value"].shape[0]
        source_small = source_small.expand(b, -1, -1, -1)
        _, c, h, w = source_small.shape
        k1 = self.num_kp + 1
        heat = kp_to_gaussian(kp_driving["value"], h, w, self.kp_variance) - \
            kp_to_gaussian(kp_source["value"], h, w, self.kp_variance)
        heat = torch.cat([heat.new_zeros(b, 1, h, w), heat], dim=1).unsqueeze(2)  # [B,K+1,1,h,w]
        motions = self.sparse_motions(h, w, kp_driving, kp_source)
        repeated = source_small.unsqueeze(1).expand(b, k1, c, h, w).reshape(b * k1, c, h, w)
        deformed = F.grid_sample(repeated, motions.reshape(b * k1, h, w, 2), align_corners=ALIGN_CORNERS)
        deformed = deformed.view(b, k1, c, h, w)
        features = self.hourglass(torch.cat([heat, deformed], dim=2).view(b, -1, h, w)).float()
        # the mixing weights of the K+1 motions in float32 (small 7x7 heads): in bf16 their rounding
        # moves the dense flow by up to half a pixel of the 256 frame
        mask = F.softmax(_float32(self.mask, features), dim=1)
        deformation = (motions * mask.unsqueeze(-1)).sum(dim=1)  # [B,h,w,2]
        out = {"sparse_deformed": deformed, "mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(_float32(self.occlusion, features))
        return out


# --------------------------------------------------------------------------- generator
def warp(x: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Sample ``x`` ``[B,C,H,W]`` along ``deformation`` ``[B,h,w,2]`` (resized to H x W first)."""
    h, w = x.shape[2:]
    if deformation.shape[1:3] != (h, w):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                    align_corners=ALIGN_CORNERS).permute(0, 2, 3, 1)
    return F.grid_sample(x, deformation, align_corners=ALIGN_CORNERS)


class OcclusionAwareGenerator(nn.Module):
    """Encodes the source, warps its features by the dense motion, masks occluded parts and
    decodes the driven frame. Split into :meth:`encode` (frame independent) and :meth:`decode`
    so inference encodes the source once."""

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[dict] = None, estimate_jacobian: bool = False) -> None:
        super().__init__()
        self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                                                       estimate_occlusion_map=estimate_occlusion_map,
                                                       **(dense_motion_params or {}))
        self.first = _ConvNormReLU(num_channels, block_expansion, kernel=7, padding=3)
        self.down_blocks = nn.ModuleList(
            _ConvNormReLU(_width(block_expansion, i, max_features), _width(block_expansion, i + 1, max_features),
                          mode="down") for i in range(num_down_blocks))
        self.up_blocks = nn.ModuleList(
            _ConvNormReLU(_width(block_expansion, num_down_blocks - i, max_features),
                          _width(block_expansion, num_down_blocks - i - 1, max_features), mode="up")
            for i in range(num_down_blocks))
        width = _width(block_expansion, num_down_blocks, max_features)
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock(width))
        self.final = nn.Conv2d(block_expansion, num_channels, 7, padding=3)

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        out = self.first(source)
        for block in self.down_blocks:
            out = block(out)
        return out

    def decode(self, encoded: torch.Tensor, motion: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Warp the encoded source by ``motion`` (from the dense motion network), mask the
        occlusions and decode to an image in (0, 1)."""
        b = motion["deformation"].shape[0]
        out = warp(encoded.expand(b, -1, -1, -1), motion["deformation"])
        occlusion = motion.get("occlusion_map")
        if occlusion is not None:
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=ALIGN_CORNERS)
            out = out * occlusion
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        return torch.sigmoid(self.final(out))

    def forward(self, source: torch.Tensor, kp_driving: KP, kp_source: KP) -> Dict[str, torch.Tensor]:
        """The official one-call interface (re-encodes the source; inference uses encode/decode)."""
        motion = self.dense_motion_network(self.dense_motion_network.downsample(source), kp_driving, kp_source)
        out = dict(motion)
        out["prediction"] = self.decode(self.encode(source), motion)
        out["deformed"] = warp(source.expand(motion["deformation"].shape[0], -1, -1, -1), motion["deformation"])
        return out


def build(config: dict):
    """(kp_detector, generator) from a config with ``model_params`` like the official YAML."""
    p = config["model_params"]
    common = p["common_params"]
    kp_detector = KPDetector(**p["kp_detector_params"], **common)
    generator = OcclusionAwareGenerator(**p["generator_params"], **common)
    return kp_detector, generator


def parameter_count(module: nn.Module) -> int:
    return sum(t.numel() for t in module.parameters())


__all__ = ["ALIGN_CORNERS", "KPDetector", "DenseMotionNetwork", "OcclusionAwareGenerator", "build",
           "coordinate_grid", "kp_to_gaussian", "warp", "antialias_kernel_size", "parameter_count"]


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> None:
    """conv followed by eval-mode BatchNorm -> one conv (weights rescaled, bias shifted)."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
    with torch.no_grad():
        conv.weight.mul_(scale.view(-1, 1, 1, 1))
        conv.bias = nn.Parameter((bias - norm.running_mean) * scale + norm.bias)


def fuse_for_inference(module: nn.Module) -> nn.Module:
    """Make the networks cheaper for inference, in place; outputs change by float rounding only.

    * Every BatchNorm that directly follows a conv is folded into it (the running statistics are
      frozen): conv -> BN -> ReLU blocks lose their BN; in the pre-activation residual blocks
      ``norm2`` (which follows ``conv1``) is folded and ``norm1`` (on the block input) stays.
    * Upsampling blocks compute "2x nearest upsample, then 3x3 conv" as four 2x2 convs on the
      small input (:meth:`_ConvNormReLU.prepare_subpixel`): 2.25x fewer multiply-adds.
    """
    for m in module.modules():
        if isinstance(m, _ConvNormReLU) and isinstance(m.norm, nn.BatchNorm2d):
            _fold(m.conv, m.norm)
            m.norm = nn.Identity()
            if m.mode == "up" and m.conv.kernel_size == (3, 3) and m.conv.padding == (1, 1):
                m.prepare_subpixel()
        elif isinstance(m, ResBlock) and isinstance(m.norm2, nn.BatchNorm2d):
            _fold(m.conv1, m.norm2)
            m.norm2 = nn.Identity()
    return module
