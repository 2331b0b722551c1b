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



# ----------------------------------------------------------------------------------------------
# fast inference path helpers
# ----------------------------------------------------------------------------------------------

def _phase_types(f: int):
    """1-D phase analysis of a 3-tap (padding 1) conv applied to a signal nearest-upsampled x f.

    High-res position ``f*i + p`` reads taps ``k = 0, 1, 2`` from low-res rows
    ``i + floor((p + k - 1) / f)``. Returns ``(types, phase_to_type)`` where each type is
    ``(start, M)``: the 2-row low-res window ``i+start, i+start+1`` and the 2x3 0/1 matrix folding
    the 3 taps onto it. Phases with the same mapping share a type (f = 4: phases 1 and 2).
    """
    if f < 2:
        raise ValueError("phase folding needs an upsampling factor >= 2")
    types, index, phase_to_type = [], {}, []
    for p in range(f):
        rel = tuple((p + k - 1) // f for k in range(3))
        if rel not in index:
            start = -1 if min(rel) < 0 else 0
            m = torch.zeros(2, 3, dtype=torch.float64)
            for k, r in enumerate(rel):
                m[r - start, k] = 1.0
            index[rel] = len(types)
            types.append((start, m))
        phase_to_type.append(index[rel])
    return types, phase_to_type


def _fold_kernel(weight: torch.Tensor, f: int):
    """3x3 kernel acting on a x f nearest-upsampled map -> 2x2 kernels acting on the low-res map.

    Returns ``(kernels [n_combos*out, in, 2, 2], combos)``; ``combos[(p, q)] = (index, oy, ox)``:
    the high-res phase ``(p, q)`` is output block ``index`` of the 2x2 conv over the input padded
    by 1, cropped at ``[oy:oy+H, ox:ox+W]``. Folding sums weights in float64 (exact up to the
    final rounding); the result equals the direct conv up to float32 summation order.
    """
    types, phase_to_type = _phase_types(f)
    w64 = weight.detach().to(torch.float64)
    kernels, combo_index = [], {}
    for ty, (_, my) in enumerate(types):
        for tx, (_, mx) in enumerate(types):
            combo_index[(ty, tx)] = len(kernels)
            kernels.append(torch.einsum("ak,bl,ockl->ocab", my, mx, w64))
    combos = {}
    for p in range(f):
        for q in range(f):
            ty, tx = phase_to_type[p], phase_to_type[q]
            combos[(p, q)] = (combo_index[(ty, tx)], types[ty][0] + 1, types[tx][0] + 1)
    return torch.cat(kernels).to(weight.dtype), combos


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _instance_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """InstanceNorm2d(affine=False) as a fresh tensor (biased variance, like torch)."""
    # two-pass (mean, then mean of squared deviations): as accurate as Welford (var_mean) and
    # 4-8x faster on CPU, channels_last included
    d = x - x.mean(dim=(2, 3), keepdim=True)
    var = d.square().mean(dim=(2, 3), keepdim=True)
    return d.mul_(torch.rsqrt(var + eps))


class SPADEDecoder(nn.Module):
    """LivePortrait's generator G: ``forward(feature (B,C,H,W)) -> image (B,3,4uH,4uW)`` in (0,1).

    ``C = min(max_features, block_expansion * 2**num_down_blocks)`` (official 256 at 64x64 ->
    512x512; tiny fixture 8 at 16x16 -> 128x128), ``u = upscale``. Constructor kwargs are exactly
    ``model_params.spade_generator_params`` of LivePortrait's models.yaml.

    Two numerically equivalent forward paths:

    * autograd on (training / ``torch.enable_grad``): the plain module graph (reference path);
    * autograd off (``torch.no_grad`` / ``torch.inference_mode``) and ``self.fast_path`` (default
      True): :meth:`_fast_forward`, an exact re-arrangement of the same computation (differs by
      float32 summation order only, ~1e-6) that is faster on CPU - see its docstring.

    Prepared weights of the fast path (spectral-normalised convs, folded SPADE kernels, gamma
    bias + 1) are cached and rebuilt whenever any parameter/buffer changes (``load_state_dict``,
    in-place edits, ``.to()``/``.half()``).
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
        #: use the fast path when autograd is off (set False to force the reference path)
        self.fast_path = True
        #: channels_last activations in the fast path (faster oneDNN convs on CPU)
        self.channels_last = True
        self._prepared = None
        self._prepared_key = None

    # -- reference path ------------------------------------------------------------------------
    def _reference_forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(N_MIDDLE):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(self.up(x), seg)
        x = self.up_1(self.up(x), seg)
        x = self.conv_img(F.leaky_relu(x, LRELU_SLOPE))
        return torch.sigmoid(x)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        if self.fast_path and not torch.is_grad_enabled():
            return self._fast_forward(feature)
        return self._reference_forward(feature)

    # -- fast path -----------------------------------------------------------------------------
    def _state_key(self):
        key = []
        for t in self.state_dict(keep_vars=True).values():
            try:
                version = t._version
            except RuntimeError:  # inference tensor: no version counter -> never cache
                return None
            key.append((id(t), t.data_ptr(), version, t.dtype, t.device))
        return tuple(key)

    def clear_cache(self) -> None:
        """Drop the fast path's prepared weights (rebuilt on the next no-grad forward)."""
        self._prepared = self._prepared_key = None

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _prepare(self):
        key = self._state_key()
        if key is not None:
            key = (self.channels_last,) + key
        if key is not None and key == self._prepared_key:
            return self._prepared
        with torch.no_grad():
            prepared = {"fc": (self.fc.weight.detach(), self.fc.bias.detach())}

            def sn(conv):
                return (conv.compute_weight().detach(),
                        None if conv.bias is None else conv.bias.detach())

            def norm(spade):
                return {"gamma": (spade.mlp_gamma.weight.detach(), spade.mlp_gamma.bias.detach() + 1),
                        "beta": (spade.mlp_beta.weight.detach(), spade.mlp_beta.bias.detach()),
                        "eps": spade.param_free_norm.eps}

            for name, f in [(f"G_middle_{i}", 1) for i in range(N_MIDDLE)] + [("up_0", 2), ("up_1", 4)]:
                blk = getattr(self, name)
                names = ["norm_0", "norm_1"] + (["norm_s"] if blk.learned_shortcut else [])
                pb = {"learned": blk.learned_shortcut, "conv_0": sn(blk.conv_0),
                      "conv_1": sn(blk.conv_1), "norms": names, "factor": f}
                if blk.learned_shortcut:
                    pb["conv_s"] = sn(blk.conv_s)
                for n in names:
                    pb[n] = norm(getattr(blk, n))
                if f == 1:
                    for n in names:
                        conv = getattr(blk, n).mlp_shared[0]
                        pb[n]["shared"] = (conv.weight.detach(), conv.bias.detach())
                else:
                    # all SPADE input convs of the block folded into ONE 2x2 conv on the low-res map
                    ws, bs = [], []
                    for n in names:
                        conv = getattr(blk, n).mlp_shared[0]
                        w, combos = _fold_kernel(conv.weight, f)
                        ws.append(w)
                        bs.append(conv.bias.detach().repeat(w.shape[0] // conv.out_channels))
                    pb["folded"] = (torch.cat(ws), torch.cat(bs), combos,
                                    getattr(blk, names[0]).mlp_shared[0].out_channels,
                                    w.shape[0] // conv.out_channels)
                prepared[name] = pb
            prepared["conv_img"] = (self.conv_img[0].weight.detach(), self.conv_img[0].bias.detach())
            if self.channels_last:  # oneDNN would otherwise re-layout the weights every call
                prepared = _map_tensors(
                    prepared, lambda t: t.contiguous(memory_format=torch.channels_last)
                    if t.dim() == 4 else t)
        self._prepared, self._prepared_key = prepared, key
        return prepared

    @staticmethod
    def _modulate(xn, actv, pn):
        """``xn * (1 + gamma(actv)) + beta(actv)`` (1 folded into the gamma bias)."""
        gamma1 = F.conv2d(actv, *pn["gamma"], padding=1)
        beta = F.conv2d(actv, *pn["beta"], padding=1)
        return beta.addcmul_(xn, gamma1)

    def _folded_actvs(self, seg, pb, mf):
        """SPADE hidden maps ReLU(conv3x3(nearest_up_f(seg))) of every norm of an up block,
        computed on the low-res seg with folded 2x2 kernels, then interleaved to full res."""
        f = pb["factor"]
        w, b, combos, hidden, n_combos = pb["folded"]
        B, _, H, W = seg.shape
        P = F.conv2d(F.pad(seg, (1, 1, 1, 1)), w, b).relu_()
        out = {}
        for k, n in enumerate(pb["norms"]):
            a = torch.empty((B, hidden, f * H, f * W), dtype=P.dtype, device=P.device,
                            memory_format=mf)
            for (p, q), (ci, oy, ox) in combos.items():
                c0 = (k * n_combos + ci) * hidden
                a[:, :, p::f, q::f] = P[:, c0:c0 + hidden, oy:oy + H, ox:ox + W]
            out[n] = a
        return out

    def _fast_block(self, pb, x, actvs, upsample):
        eps = pb["norm_0"]["eps"]
        xn = _instance_normalize(x, eps)  # stats of x == stats of nearest_up(x)
        if upsample:
            xn = F.interpolate(xn, scale_factor=2.0, mode="nearest")
        if pb["learned"]:
            xs = F.conv2d(self._modulate(xn, actvs["norm_s"], pb["norm_s"]), *pb["conv_s"])
        else:
            xs = F.interpolate(x, scale_factor=2.0, mode="nearest") if upsample else x
        h = F.leaky_relu_(self._modulate(xn, actvs["norm_0"], pb["norm_0"]), LRELU_SLOPE)
        del xn
        dx = F.conv2d(h, *pb["conv_0"], padding=1)
        h = _instance_normalize(dx, pb["norm_1"]["eps"])
        h = F.leaky_relu_(self._modulate(h, actvs["norm_1"], pb["norm_1"]), LRELU_SLOPE)
        dx = F.conv2d(h, *pb["conv_1"], padding=1)
        return dx.add_(xs)

    def _fast_forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Inference-only forward: same maths as :meth:`_reference_forward`, re-arranged.

        * spectral-normalised weights computed once (cached with the other prepared weights);
        * SPADE gamma/beta depend only on the input feature: the hidden maps of the up blocks
          (``ReLU(conv3x3(nearest_up(seg)))`` at 2x and 4x) are computed on the 64x64 seg with
          the 3x3 taps folded per output phase into 2x2 kernels (2.2x / 3.9x fewer MACs, no
          nearest resize of seg at all), all norms of a block in one conv;
        * instance-norm statistics of an upsampled map are taken before upsampling, and the
          normalised map is shared by ``norm_0`` and ``norm_s``;
        * ``1 + gamma`` folded into the gamma bias; modulation, LeakyReLU, residual in place;
        * channels_last activations (faster oneDNN convolutions), NCHW-contiguous output.
        """
        prep = self._prepare()
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        seg = feature.contiguous(memory_format=mf)
        x = F.conv2d(seg, *prep["fc"], padding=1)
        for i in range(N_MIDDLE):
            pb = prep[f"G_middle_{i}"]
            actvs = {n: F.conv2d(seg, *pb[n]["shared"], padding=1).relu_() for n in pb["norms"]}
            x = self._fast_block(pb, x, actvs, upsample=False)
        for name in ("up_0", "up_1"):
            pb = prep[name]
            x = self._fast_block(pb, x, self._folded_actvs(seg, pb, mf), upsample=True)
        x = F.conv2d(F.leaky_relu_(x, LRELU_SLOPE), *prep["conv_img"], padding=1)
        return torch.sigmoid_(F.pixel_shuffle(x, self.upscale)).contiguous()
