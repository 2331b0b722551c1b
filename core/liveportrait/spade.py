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

Speed: after :meth:`SPADEDecoder.optimize_for_inference` (called once by the inference loader,
:func:`core.liveportrait.get_liveportrait`) the decoder runs an exact re-arrangement of the same
computation (``SPADEDecoder._fast_forward``): official size, batch 1, 2-core AVX-512 CPU, torch 2.13:
5.05 s -> 3.6 s per frame, max |diff| 4e-6 vs the module graph. A decoder without that call (training,
gradients, the reference) always runs the module graph.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..device import autocast_dtype

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

    The module computes the normalised weight on every call (cheap: one matrix-vector product
    and one division, ~3 ms for 512x512x3x3); :class:`SPADEDecoder`'s inference path caches it.
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
        self.register_buffer("weight_u", torch.empty(out_channels))
        self.register_buffer("weight_v", torch.empty(in_channels * kernel_size ** 2))
        self.reset_singular_vectors()

    @torch.no_grad()
    def reset_singular_vectors(self, n_iter: int = 15) -> None:
        """Power iterations on ``weight_orig`` into ``weight_u``/``weight_v`` (for a freshly
        initialised module only - loaded checkpoints carry their own vectors)."""
        w = self.weight_orig.reshape(self.out_channels, -1)
        v = F.normalize(torch.randn(w.shape[1], dtype=w.dtype, device=w.device), dim=0, eps=1e-12)
        for _ in range(n_iter):
            u = F.normalize(torch.mv(w, v), dim=0, eps=1e-12)
            v = F.normalize(torch.mv(w.t(), u), dim=0, eps=1e-12)
        self.weight_u.copy_(u)
        self.weight_v.copy_(v)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, bias={self.bias is not None}, spectral_norm=eval")

    def compute_weight(self) -> torch.Tensor:
        w = self.weight_orig
        sigma = torch.dot(self.weight_u, torch.mv(w.reshape(w.shape[0], -1), self.weight_v))
        return w / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.compute_weight(), self.bias, padding=self.padding)


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
# fast inference path: phase folding of 3x3 convolutions applied to upsampled maps
# ----------------------------------------------------------------------------------------------
#
# 1-D picture (rows; columns are the same). A high-res map of f x the low-res size whose row
# ``f*i + p`` equals row ``n*i + type[p]`` of a "compressed" map (n = number of distinct
# types) - a nearest x f upsample is the case n = 1, type = [0]*f. A 3-tap conv (padding 1) at
# high-res row ``f*i + p`` reads compressed rows ``n*i + rel_k`` with
# ``rel_k = n*floor((p+k-1)/f) + type[(p+k-1) % f]``; taps reading the same row are summed into
# one, so output phase p is a conv of stride n with <= 3 taps on the compressed map.
#
# * SPADE hidden maps ``ReLU(conv3x3(nearest_up_f(seg)))``: n = 1, every phase reads <= 2
#   low-res rows -> 2x2 convs on the 64x64 seg (f = 2: 2 phase types A|C, f = 4: 3 types A|B|C,
#   phases 1 and 2 are identical). MACs / 2.2 (f=2) and / 3.9 (f=4); seg is never resized.
# * gamma/beta ``conv3x3(hidden)`` at f = 4: the hidden map repeats rows (A B B C per 4), i.e.
#   it is the 3-row-per-pixel compressed map; taps per phase 3,2,2,3 instead of 3,3,3,3
#   -> 100/144 of the MACs. (f = 2: A C, nothing repeats -> plain conv.)
# Folded weights are summed in float64 and rounded once; results differ from the direct
# convolution by float32 summation order only.

def _phase_folds(f: int, phase_type):
    """Per output phase p: ``(rel, start, M)``; M is the (L x 3) 0/1 matrix folding the 3 taps on
    the L compressed rows ``start .. start+L-1`` (relative to ``n*i``)."""
    n = max(phase_type) + 1
    folds = []
    for p in range(f):
        rel = tuple(n * ((p + k - 1) // f) + phase_type[(p + k - 1) % f] for k in range(3))
        start = min(rel)
        m = torch.zeros(max(rel) - start + 1, 3, dtype=torch.float64)
        for k, r in enumerate(rel):
            m[r - start, k] = 1.0
        folds.append((rel, start, m))
    return folds


def _fold_2d(weight: torch.Tensor, my: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """``W'[o, c, a, b] = sum_kl My[a, k] Mx[b, l] W[o, c, k, l]`` in float64, rounded once."""
    return torch.einsum("ak,bl,ockl->ocab", my, mx,
                        weight.detach().to(torch.float64)).to(weight.dtype)


def _upsample_types(f: int):
    """Phase types of ``conv3x3(nearest_up_f(.))``: ``(types, phase_type)``, each type being
    ``(start, M (2x3))`` on a 2-row window (a 1-row fold gets a zero second row)."""
    types, index, phase_type = [], {}, []
    for rel, start, m in _phase_folds(f, [0] * f):
        if rel not in index:
            if m.shape[0] == 1:
                m = torch.cat([m, torch.zeros_like(m)])
            if m.shape[0] != 2:
                raise ValueError("phase folding needs an upsampling factor >= 2")
            index[rel] = len(types)
            types.append((start, m))
        phase_type.append(index[rel])
    return types, phase_type


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


@contextlib.contextmanager
def _autocast_off(device_type: str):
    """Prepared weights are built in full precision even when the first call runs in autocast
    (they are cached and reused by later full-precision calls)."""
    with contextlib.ExitStack() as stack:
        for dt in dict.fromkeys(("cpu", device_type)):
            try:
                stack.enter_context(torch.autocast(dt, enabled=False))
            except (RuntimeError, ValueError):  # no autocast for this device type
                pass
        yield


def _instance_normalize(x: torch.Tensor, eps: float) -> torch.Tensor:
    """InstanceNorm2d(affine=False) as a fresh tensor (biased variance, like torch), in the memory
    layout of ``x`` (so the modulation that follows reads every operand in the same order).

    Two-pass (mean, then mean of squared deviations): as accurate as Welford (var_mean) and 4-8x faster
    on CPU, channels_last included. Half precision (autocast): statistics and normalisation in float32,
    rounded once at the end (F.instance_norm would return NCHW, and mixing layouts makes the
    modulation's bf16 kernels 10x slower)."""
    half = x.dtype in (torch.float16, torch.bfloat16)
    xf = x.float() if half else x
    d = xf - xf.mean(dim=(2, 3), keepdim=True)
    var = d.square().mean(dim=(2, 3), keepdim=True)
    d.mul_(torch.rsqrt(var + eps))
    return d.to(x.dtype) if half else d


def _clear_cache_hook(module, _incompatible_keys):
    module.clear_cache()


class SPADEDecoder(nn.Module):
    """LivePortrait's generator G: ``forward(feature (B,C,H,W)) -> image (B,3,4uH,4uW)`` in (0,1).

    ``C = min(max_features, block_expansion * 2**num_down_blocks)`` (official 256 at 64x64 ->
    512x512; tiny fixture 8 at 16x16 -> 128x128), ``u = upscale``. Constructor kwargs are exactly
    ``model_params.spade_generator_params`` of LivePortrait's models.yaml.

    Two numerically equivalent forward paths, chosen explicitly:

    * by default the plain module graph (the reference path; the one training and gradients use);
    * after :meth:`optimize_for_inference` (``self.fast_path`` True): :meth:`_fast_forward`, an exact
      re-arrangement of the same computation (differs by float32 summation order only: 8e-7 on the
      tiny fixture, 4e-6 at full size) that is 1.4x faster on CPU - see its docstring. It computes no
      gradients: the call freezes the parameters, and an input that requires a gradient is refused.

    Prepared weights of the fast path (spectral-normalised convs, folded SPADE kernels; 192 MB
    at the official size, 136 MB with ``fold_gamma_beta = False``) are built on its first call
    (~0.13 s) and cached; they are rebuilt whenever a parameter/buffer changes (``load_state_dict``,
    ``.to()``/``.half()``, in-place edits of normal tensors). In-place edits of *inference* tensors
    other than ``load_state_dict`` are not seen: call :meth:`clear_cache` after those (it also frees
    the memory).
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
        #: run :meth:`_fast_forward` (switched on by :meth:`optimize_for_inference`; False: the module graph)
        self.fast_path = False
        #: channels_last activations in the fast path (faster oneDNN convolutions on CPU)
        self.channels_last = True
        #: fast path: phase-fold the 4x gamma/beta convs too (fewer MACs, more cached weights)
        self.fold_gamma_beta = True
        self._prepared = None
        self._prepared_key = None
        # load_state_dict into inference tensors (ComfyUI builds models under inference_mode)
        # bumps no version counter: drop the cache explicitly
        self.register_load_state_dict_post_hook(_clear_cache_hook)

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
        if not self.fast_path:
            return self._reference_forward(feature)
        if torch.is_grad_enabled() and (feature.requires_grad or any(p.requires_grad for p in self.parameters())):
            raise RuntimeError("this SPADEDecoder was optimised for inference (optimize_for_inference) and computes "
                               "no gradients; run it under torch.no_grad() / torch.inference_mode() with an input "
                               "that needs no gradient, or use a decoder without optimize_for_inference() for "
                               "training and gradients")
        return self._fast_forward(feature)

    def optimize_for_inference(self) -> "SPADEDecoder":
        """Use the inference-only fast path from now on (:meth:`_fast_forward`; outputs equal to float
        rounding). Puts the module in eval mode and freezes its parameters (the fast path computes no
        gradients), so do this only on a decoder used for inference; the prepared weights are built on
        the first forward, on the device the module is then on. Returns ``self``."""
        self.eval().requires_grad_(False)
        self.fast_path = True
        return self

    # -- fast path: prepared weights -----------------------------------------------------------
    def _state_key(self, dtype=None):
        key = [self.channels_last, self.fold_gamma_beta, dtype]
        for t in self.state_dict(keep_vars=True).values():
            try:
                version = t._version
            except RuntimeError:  # inference tensor (made under inference_mode): no counter
                version = None
            key.append((id(t), t.data_ptr(), version, t.dtype, t.device))
        return tuple(key)

    def clear_cache(self) -> None:
        """Drop the fast path's prepared weights (rebuilt on the next fast-path forward)."""
        self._prepared = self._prepared_key = None

    def __getstate__(self):  # pickling / deepcopy: never carry the cache along
        state = dict(super().__getstate__())
        state["_prepared"] = state["_prepared_key"] = None
        return state

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _prepare(self, dtype=None):
        """The prepared weights for convolutions in ``dtype`` (default the weights' own): built in full
        precision, then, for a half-precision ``dtype`` (autocast), rounded once to it and kept so, which
        spares autocast casting ~190 MB of weights on every call. Only the dtype in use is cached."""
        dtype = self.fc.weight.dtype if dtype is None else dtype
        key = self._state_key(dtype)
        if key is not None and key == self._prepared_key:
            return self._prepared
        self.clear_cache()  # free the old copy before building the new one
        with torch.no_grad(), _autocast_off(self.fc.weight.device.type):
            prepared = self._build_prepared()
        own = {t.data_ptr() for t in self.state_dict().values()}
        if dtype != self.fc.weight.dtype:
            prepared = _map_tensors(prepared, lambda t: t.to(dtype) if t.is_floating_point() else t)
            own = set()  # every tensor is a fresh copy now
        if self.channels_last:  # derived weights (fresh tensors anyway) made channels_last, else
            # oneDNN re-lays them out on every call; the module's own weights are used as they are
            prepared = _map_tensors(prepared, lambda t: t.contiguous(
                memory_format=torch.channels_last) if t.dim() == 4 and t.data_ptr() not in own
                else t)
        self._prepared, self._prepared_key = prepared, key
        return prepared

    def _build_prepared(self):
        def plain(conv):
            return conv.weight.detach(), conv.bias.detach()

        def sn(conv):
            return conv.compute_weight().detach(), None if conv.bias is None else conv.bias.detach()

        prepared = {"fc": plain(self.fc), "conv_img": plain(self.conv_img[0])}
        for name, f in [(f"G_middle_{i}", 1) for i in range(N_MIDDLE)] + [("up_0", 2), ("up_1", 4)]:
            blk = getattr(self, name)
            norms = ["norm_0", "norm_1"] + (["norm_s"] if blk.learned_shortcut else [])
            pb = {"factor": f, "norms": norms, "conv_0": sn(blk.conv_0), "conv_1": sn(blk.conv_1),
                  "conv_s": sn(blk.conv_s) if blk.learned_shortcut else None}
            spades = [getattr(blk, n) for n in norms]
            hidden = spades[0].mlp_shared[0].out_channels
            for n, sp in zip(norms, spades):
                pb[n] = {"eps": sp.param_free_norm.eps, "nc": sp.mlp_gamma.out_channels,
                         # "1 +" folded into the gamma bias
                         "gamma": (sp.mlp_gamma.weight.detach(), sp.mlp_gamma.bias.detach() + 1),
                         "beta": plain(sp.mlp_beta)}
                if f == 1:
                    pb[n]["shared"] = plain(sp.mlp_shared[0])
            if f > 1:
                # every norm's hidden conv folded to 2x2 kernels on seg: ONE conv for the block
                types, phase_type = _upsample_types(f)
                ws, bs, combos = [], [], {}
                for k, sp in enumerate(spades):
                    conv = sp.mlp_shared[0]
                    for ty, (sy, my) in enumerate(types):
                        for tx, (sx, mx) in enumerate(types):
                            combos[(k, ty, tx)] = (len(ws) * hidden, sy + 1, sx + 1)
                            ws.append(_fold_2d(conv.weight, my, mx))
                            bs.append(conv.bias.detach())
                pb["hidden"] = (torch.cat(ws), torch.cat(bs), combos, hidden, len(types),
                                phase_type)
                pb["compressed"] = len(types) < f and self.fold_gamma_beta
                if pb["compressed"]:  # the hidden map repeats rows: fold gamma/beta too
                    folds = _phase_folds(f, phase_type)
                    for n in norms:
                        # gamma and beta as one conv per output phase
                        w = torch.cat([pb[n]["gamma"][0], pb[n]["beta"][0]])
                        b = torch.cat([pb[n]["gamma"][1], pb[n]["beta"][1]])
                        pb[n]["gb_phase"] = {
                            (p, q): (_fold_2d(w, folds[p][2], folds[q][2]),
                                     folds[p][1] + 1, folds[q][1] + 1)
                            for p in range(f) for q in range(f)}
                        pb[n]["gb_bias"] = b
                        pb[n]["n_types"] = len(types)
            prepared[name] = pb
        return prepared

    # -- fast path: forward --------------------------------------------------------------------
    def _hidden_maps(self, seg, pb, mf):
        """ReLU(conv3x3(nearest_up_f(seg))) of every norm of an up block from the low-res seg.

        Returns per norm either the full-res map or, when it repeats rows (f = 4), the compressed
        map (one row/column per phase type, zero-padded by 1) the folded gamma/beta convs read.
        """
        f = pb["factor"]
        w, b, combos, hidden, n_types, phase_type = pb["hidden"]
        B, _, H, W = seg.shape
        P = F.conv2d(F.pad(seg, (1, 1, 1, 1)), w, b).relu_()
        compressed = pb["compressed"]
        out = {}
        for k, n in enumerate(pb["norms"]):
            if compressed:
                n_t = n_types
                a = torch.empty((B, hidden, n_t * H + 2, n_t * W + 2), dtype=P.dtype,
                                device=P.device, memory_format=mf).zero_()
                for ty in range(n_t):
                    for tx in range(n_t):
                        c0, oy, ox = combos[(k, ty, tx)]
                        a[:, :, 1 + ty:1 + n_t * H:n_t, 1 + tx:1 + n_t * W:n_t] = \
                            P[:, c0:c0 + hidden, oy:oy + H, ox:ox + W]
            else:
                a = torch.empty((B, hidden, f * H, f * W), dtype=P.dtype, device=P.device,
                                memory_format=mf)
                for p in range(f):
                    for q in range(f):
                        c0, oy, ox = combos[(k, phase_type[p], phase_type[q])]
                        a[:, :, p::f, q::f] = P[:, c0:c0 + hidden, oy:oy + H, ox:ox + W]
            out[n] = a
        return out, compressed

    @staticmethod
    def _modulate(xn, actv, pn, compressed=False, f=1, r=1, shape=None, mf=None):
        """``IN(x) * (1 + gamma(actv)) + beta(actv)`` given the normalised ``xn``.

        Compressed mode: ``actv`` is the compressed hidden map, gamma/beta are computed per
        output phase (p, q) of f and written straight into the output; ``xn`` is at 1/r of the
        output resolution (nearest upsampling by r done by strided reads).
        """
        nc = pn["nc"]
        if not compressed:
            gamma1 = F.conv2d(actv, *pn["gamma"], padding=1)
            return F.conv2d(actv, *pn["beta"], padding=1).addcmul_(xn, gamma1)
        out = torch.empty(shape, dtype=xn.dtype, device=xn.device, memory_format=mf)
        H, W = shape[2] // f, shape[3] // f
        n_t, s = pn["n_types"], f // r
        for (p, q), (w, iy, ix) in pn["gb_phase"].items():
            gb = F.conv2d(actv[:, :, iy:, ix:], w, pn["gb_bias"], stride=n_t)[:, :, :H, :W]
            torch.addcmul(gb[:, nc:], xn[:, :, p // r::s, q // r::s], gb[:, :nc],
                          out=out[:, :, p::f, q::f])
        return out

    def _fast_block(self, pb, x, actvs, compressed, mf):
        f = pb["factor"]
        up = f > 1
        B, _, h, w = x.shape
        shape_of = {n: (B, pb[n]["nc"], 2 * h if up else h, 2 * w if up else w)
                    for n in pb["norms"]}
        xn = _instance_normalize(x, pb["norm_0"]["eps"])  # stats of x == stats of up(x)
        if up and not compressed:
            xn = F.interpolate(xn, scale_factor=2.0, mode="nearest")
        kw = dict(compressed=compressed, f=f, r=2 if compressed else 1, mf=mf)
        if pb["conv_s"] is not None:
            xs = F.conv2d(self._modulate(xn, actvs["norm_s"], pb["norm_s"],
                                         shape=shape_of["norm_s"], **kw), *pb["conv_s"])
        else:
            xs = F.interpolate(x, scale_factor=2.0, mode="nearest") if up else x
        h_ = self._modulate(xn, actvs["norm_0"], pb["norm_0"], shape=shape_of["norm_0"], **kw)
        del xn
        dx = F.conv2d(F.leaky_relu_(h_, LRELU_SLOPE), *pb["conv_0"], padding=1)
        del h_
        kw["r"] = 1
        dxn = _instance_normalize(dx, pb["norm_1"]["eps"])
        shape = (B, pb["norm_1"]["nc"]) + tuple(dx.shape[2:])
        h_ = self._modulate(dxn, actvs["norm_1"], pb["norm_1"], shape=shape, **kw)
        del dxn, dx
        dx = F.conv2d(F.leaky_relu_(h_, LRELU_SLOPE), *pb["conv_1"], padding=1)
        return dx.add_(xs)

    def _fast_forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Inference-only forward: same maths as :meth:`_reference_forward`, re-arranged.

        * spectral-normalised weights computed once (cached with the other prepared weights);
        * SPADE gamma/beta depend only on the input feature: the hidden maps of the up blocks
          (``ReLU(conv3x3(nearest_up(seg)))`` at 2x and 4x) are computed on the low-res seg
          with phase-folded 2x2 kernels (all norms of a block in one conv; seg never resized),
          and at 4x gamma/beta are phase-folded too (see the comment above ``_phase_folds``);
        * ``1 + gamma`` folded into the gamma bias; modulation, LeakyReLU and the residual add
          in place;
        * instance-norm statistics of an upsampled map taken before upsampling (identical),
          the normalised map shared by ``norm_0`` and ``norm_s``; two-pass statistics;
        * channels_last activations and derived weights (faster oneDNN convolutions); NCHW
          output.
        """
        # the convolutions run in autocast's dtype when it is on, else in the weights' own
        prep = self._prepare(autocast_dtype(feature.device))
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        seg = feature.contiguous(memory_format=mf)
        x = F.conv2d(seg, *prep["fc"], padding=1)
        for i in range(N_MIDDLE):
            pb = prep[f"G_middle_{i}"]
            actvs = {n: F.conv2d(seg, *pb[n]["shared"], padding=1).relu_() for n in pb["norms"]}
            x = self._fast_block(pb, x, actvs, False, mf)
        for name in ("up_0", "up_1"):
            pb = prep[name]
            actvs, compressed = self._hidden_maps(seg, pb, mf)
            x = self._fast_block(pb, x, actvs, compressed, mf)
        x = F.conv2d(F.leaky_relu_(x, LRELU_SLOPE), *prep["conv_img"], padding=1)
        return torch.sigmoid_(F.pixel_shuffle(x, self.upscale)).contiguous()
