"""Ditto's audio-to-motion denoiser (LMDM): an EDGE-style transformer decoder in plain torch.

Parameter names follow the official ``MotionDecoder`` (``core/models/modules/lmdm_modules/model.py``
of antgroup/ditto-talkinghead) so ``lmdm_v0.4_hubert.pth`` loads strictly. Released sizes: latent
``d`` = 512, feed-forward 1024, 8 heads, 8 decoder layers, 2 condition-encoder layers, motion 265,
condition 1103, 80 frames. Dropout is never active (inference only), so there is none here.

One forward pass (``x_t`` (B, L, 265), ``cond_frame`` (B, 265), ``cond`` (B, L, 1103), integer step ``t``)::

    x    = input_projection([x_t | cond_frame repeated over L])                 (B, L, d)
    c    = cond_encoder(cond_projection(cond))          2 pre-norm layers: self-attention, GELU FF
    unconditional pass: c := null_cond_embed
    h    = non_attn_cond_projection(mean_L(c))          LayerNorm, Linear, SiLU, Linear
    unconditional pass: h := null_cond_hidden
    th   = Mish(Linear(sinusoid(t)))                     sinusoid: half = d/2, f_k = exp(-k ln 1e4 / (half-1))
    film = to_time_cond(th) + h                          (B, d)
    mem  = norm_cond([c ; to_time_tokens(th).view(2, d)])                   (B, L+2, d)
    x    = decoder layers: x += (1+s_i) * block_i(LN_i x) + b_i for self-attention, cross-attention
           (to mem) and GELU FF, with (s_i, b_i) = chunk(film_i(film), 2), film_i = Linear(Mish(.))
    out  = final_layer(x)                                 the predicted clean motion x0 (B, L, 265)

Rotary position embedding (interleaved pairs, theta 1e4, over the full width ``d``, positions
0..L-1) rotates the *inputs* of query and key before ``nn.MultiheadAttention``'s projections; the
value input is not rotated. In cross-attention the memory tokens get positions 0..L+1.

Classifier-free guidance: ``x0 = u + w (c - u)`` with the unconditional pass ``u``.

The condition encoding (``c``, ``h``) does not depend on the step or on ``x_t``: :meth:`LMDM.encode_cond`
computes it once per window and :meth:`LMDM.decode` reuses it (identical numbers, fewer FLOPs).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

RELEASED = {"motion_dim": 265, "cond_dim": 1103, "seq_frames": 80, "latent_dim": 512, "ff_size": 1024,
            "num_layers": 8, "num_heads": 8, "num_encoder_layers": 2}
ROPE_THETA = 10000.0
LN_EPS = 1e-5


class RotaryEmbedding(nn.Module):
    """Interleaved rotary embedding over the whole feature width (one instance shared by all layers;
    its ``freqs`` buffer therefore appears once per owner in the state dict, like the official one)."""

    def __init__(self, dim: int, theta: float = ROPE_THETA):
        super().__init__()
        freqs = 1.0 / (theta ** (torch.arange(0, dim, 2)[: dim // 2].float() / dim))
        self.register_buffer("freqs", freqs)
        self._cache: Dict[tuple, Tuple[torch.Tensor, torch.Tensor]] = {}

    def _cos_sin(self, n: int, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        key = (n, like.device, like.dtype, self.freqs.data_ptr(), torch.is_inference_mode_enabled())
        hit = self._cache.get(key)
        if hit is None:
            freqs = self.freqs.float()
            pos = torch.arange(n, device=freqs.device).float()
            ang = (pos[:, None] * freqs[None, :]).repeat_interleave(2, dim=-1)   # (n, d): f0 f0 f1 f1 ...
            hit = (ang.cos().to(like), ang.sin().to(like))
            self._cache = {key: hit} if len(self._cache) > 8 else {**self._cache, key: hit}
        return hit

    def rotate(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., n, d) -> x cos + rot(x) sin, rot pairing (x0, x1) -> (-x1, x0)."""
        cos, sin = self._cos_sin(x.shape[-2], x)
        pairs = x.unflatten(-1, (-1, 2))
        rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * cos + rot * sin


class EncoderLayer(nn.Module):
    """Pre-norm transformer encoder layer with rotary q/k inputs and GELU feed-forward."""

    def __init__(self, d: int, heads: int, ff: int, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.rotary = rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary.rotate(h)
        x = x + self.self_attn(qk, qk, h, need_weights=False)[0]
        return x + self.linear2(F.gelu(self.linear1(self.norm2(x))))


class DenseFiLM(nn.Module):
    """``(scale, shift) = chunk(Linear(Mish(c)), 2)``, each (B, 1, d)."""

    def __init__(self, d: int):
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Linear(d, 2 * d))

    def forward(self, c: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        scale, shift = self.block(c)[:, None, :].chunk(2, dim=-1)
        return scale, shift


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer: FiLM-modulated self-attention, cross-attention and GELU FF."""

    def __init__(self, d: int, heads: int, ff: int, rotary: RotaryEmbedding):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.multihead_attn = nn.MultiheadAttention(d, heads, dropout=0.0, batch_first=True)
        self.linear1 = nn.Linear(d, ff)
        self.linear2 = nn.Linear(ff, d)
        self.norm1 = nn.LayerNorm(d, eps=LN_EPS)
        self.norm2 = nn.LayerNorm(d, eps=LN_EPS)
        self.norm3 = nn.LayerNorm(d, eps=LN_EPS)
        self.film1 = DenseFiLM(d)
        self.film2 = DenseFiLM(d)
        self.film3 = DenseFiLM(d)
        self.rotary = rotary

    @staticmethod
    def _affine(y: torch.Tensor, ss: Tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        return (ss[0] + 1) * y + ss[1]

    def forward(self, x: torch.Tensor, memory: torch.Tensor, film: torch.Tensor,
                memory_rot: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.norm1(x)
        qk = self.rotary.rotate(h)
        x = x + self._affine(self.self_attn(qk, qk, h, need_weights=False)[0], self.film1(film))
        h = self.norm2(x)
        k = self.rotary.rotate(memory) if memory_rot is None else memory_rot
        x = x + self._affine(self.multihead_attn(self.rotary.rotate(h), k, memory, need_weights=False)[0],
                             self.film2(film))
        h = self.linear2(F.gelu(self.linear1(self.norm3(x))))
        return x + self._affine(h, self.film3(film))


class DecoderStack(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.stack = nn.ModuleList(layers)


def sinusoid(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Diffusion-step embedding ``[sin(t f), cos(t f)]``, ``f_k = exp(-k ln(1e4) / (dim/2 - 1))``."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device) * -(math.log(10000) / (half - 1)))
    ang = t.reshape(-1)[:, None] * freqs[None, :]
    return torch.cat((ang.sin(), ang.cos()), dim=-1)


class LMDM(nn.Module):
    """The denoiser (official ``MotionDecoder``) plus classifier-free guidance and the diffusion
    schedule (a non-persistent buffer: the official file does not hold it).

    ``config``: ``motion_dim``, ``cond_dim``, ``seq_frames``, ``latent_dim``, ``ff_size``,
    ``num_layers``, ``num_heads``, ``num_encoder_layers``.
    """

    def __init__(self, motion_dim: int = 265, cond_dim: int = 1103, seq_frames: int = 80, latent_dim: int = 512,
                 ff_size: int = 1024, num_layers: int = 8, num_heads: int = 8, num_encoder_layers: int = 2):
        super().__init__()
        if latent_dim % num_heads:
            raise ValueError(f"latent_dim {latent_dim} is not divisible by num_heads {num_heads}")
        self.config = dict(motion_dim=motion_dim, cond_dim=cond_dim, seq_frames=seq_frames, latent_dim=latent_dim,
                           ff_size=ff_size, num_layers=num_layers, num_heads=num_heads,
                           num_encoder_layers=num_encoder_layers)
        d = latent_dim
        self.rotary = RotaryEmbedding(d)
        self.time_mlp = nn.Sequential(nn.Identity(), nn.Linear(d, 4 * d), nn.Mish())  # index 0 = sinusoid
        self.to_time_cond = nn.Sequential(nn.Linear(4 * d, d))
        self.to_time_tokens = nn.Sequential(nn.Linear(4 * d, 2 * d))
        self.null_cond_embed = nn.Parameter(torch.zeros(1, seq_frames, d))
        self.null_cond_hidden = nn.Parameter(torch.zeros(1, d))
        self.norm_cond = nn.LayerNorm(d, eps=LN_EPS)
        self.input_projection = nn.Linear(2 * motion_dim, d)
        self.cond_encoder = nn.Sequential(*[EncoderLayer(d, num_heads, ff_size, self.rotary)
                                            for _ in range(num_encoder_layers)])
        self.cond_projection = nn.Linear(cond_dim, d)
        self.non_attn_cond_projection = nn.Sequential(nn.LayerNorm(d, eps=LN_EPS), nn.Linear(d, d), nn.SiLU(),
                                                      nn.Linear(d, d))
        self.seqTransDecoder = DecoderStack([DecoderLayer(d, num_heads, ff_size, self.rotary)
                                             for _ in range(num_layers)])
        self.final_layer = nn.Linear(d, motion_dim)
        from .sampler import cosine_alphas_cumprod  # schedule lives with the sampler

        self.register_buffer("alphas_cumprod", cosine_alphas_cumprod(), persistent=False)
        #: run the unconditional and conditional passes as one batch (see :meth:`guided`)
        self.batch_cfg = False
        self.eval()

    # ------------------------------------------------------------------ pieces
    def encode_cond(self, cond: Optional[torch.Tensor], batch: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
        """Condition tokens (B, L, d) and pooled hidden (B, d); ``cond=None`` = the unconditional pass."""
        if cond is None:
            tokens = self.null_cond_embed.expand(batch, -1, -1)
            return tokens, self.null_cond_hidden.expand(batch, -1)
        tokens = self.cond_encoder(self.cond_projection(cond))
        return tokens, self.non_attn_cond_projection(tokens.mean(dim=-2))

    def time_hidden(self, t: torch.Tensor) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.final_layer.weight.device).reshape(-1)
        return self.time_mlp(sinusoid(t, self.config["latent_dim"]).to(self.final_layer.weight.dtype))

    def decode(self, x_t: torch.Tensor, cond_frame: torch.Tensor, tokens: torch.Tensor, hidden: torch.Tensor,
               t: torch.Tensor, intermediates: Optional[dict] = None) -> torch.Tensor:
        """Decoder pass given the encoded condition (see :meth:`encode_cond`) -> x0 (B, L, motion)."""
        b, n = x_t.shape[0], x_t.shape[1]
        x = self.input_projection(torch.cat([x_t, cond_frame[:, None, :].expand(b, n, -1)], dim=-1))
        th = self.time_hidden(t)
        if th.shape[0] != b:
            th = th.expand(b, -1)
        film = self.to_time_cond(th) + hidden
        memory = self.norm_cond(torch.cat([tokens, self.to_time_tokens(th).unflatten(-1, (2, -1))], dim=-2))
        memory_rot = self.rotary.rotate(memory)
        for layer in self.seqTransDecoder.stack:
            x = layer(x, memory, film, memory_rot)
        if intermediates is not None:
            intermediates.update(t_hidden=th, film_t=film, memory=memory, decoder_out=x)
        return self.final_layer(x)

    def forward(self, x_t: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                uncond: bool = False, intermediates: Optional[dict] = None) -> torch.Tensor:
        """One pass of the official ``MotionDecoder.forward`` (``cond_drop_prob`` 0, or 1 with ``uncond``)."""
        tokens, hidden = self.encode_cond(None if uncond else cond, x_t.shape[0])
        if intermediates is not None and not uncond:
            intermediates["cond_tokens_encoded"] = tokens
            x = self.input_projection(torch.cat(
                [x_t, cond_frame[:, None, :].expand(x_t.shape[0], x_t.shape[1], -1)], dim=-1))
            intermediates["x_tokens"] = x
        return self.decode(x_t, cond_frame, tokens, hidden, t, intermediates)

    def guided(self, x_t: torch.Tensor, cond_frame: torch.Tensor, enc_c: Tuple[torch.Tensor, torch.Tensor],
               enc_u: Tuple[torch.Tensor, torch.Tensor], t: torch.Tensor, guidance: float = 2.0) -> torch.Tensor:
        """Guided x0 from encoded conditional / unconditional inputs: ``u + (c - u) * w``.

        With ``self.batch_cfg`` both passes run as one batch (faster on a GPU; equal to the two
        batch-1 passes of the reference up to float rounding, ~2e-6 on the tiny fixture)."""
        if guidance == 0:
            return self.decode(x_t, cond_frame, enc_u[0], enc_u[1], t)
        if self.batch_cfg:
            b = x_t.shape[0]
            out = self.decode(torch.cat([x_t, x_t]), torch.cat([cond_frame, cond_frame]),
                              torch.cat([enc_u[0].expand(b, -1, -1), enc_c[0]]),
                              torch.cat([enc_u[1].expand(b, -1), enc_c[1]]), t)
            u, c = out[:b], out[b:]
        else:
            u = self.decode(x_t, cond_frame, enc_u[0], enc_u[1], t)
            c = self.decode(x_t, cond_frame, enc_c[0], enc_c[1], t)
        return u + (c - u) * guidance

    def predict(self, x_t: torch.Tensor, cond_frame: torch.Tensor, cond: torch.Tensor, t: torch.Tensor,
                guidance: float = 2.0) -> Tuple[torch.Tensor, torch.Tensor]:
        """The official ``LMDM.forward``: (pred_noise, x_start) with guidance ``w``."""
        enc_c = self.encode_cond(cond, x_t.shape[0])
        enc_u = self.encode_cond(None, x_t.shape[0])
        x0 = self.guided(x_t, cond_frame, enc_c, enc_u, t, guidance)
        return self.noise_from_x0(x_t, t, x0), x0

    def noise_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """``eps = sqrt(1/(1-a_t)) x_t - x0 / sqrt(1/a_t - 1)``."""
        a = self.alphas_cumprod[torch.as_tensor(t, device=self.alphas_cumprod.device).reshape(-1)]
        ra = torch.sqrt(1.0 / (1.0 - a)).reshape(-1, 1, 1)
        rb = torch.sqrt(1.0 / a - 1).reshape(-1, 1, 1)
        return ra * x_t - x0 / rb


# --------------------------------------------------------------------------- config from a state dict
def infer_config(state: Mapping[str, torch.Tensor], num_heads: Optional[int] = None) -> dict:
    """Sizes from the official key shapes. Heads cannot be read from shapes: ``num_heads`` wins,
    else 8 (the released model)."""
    from ...errors import CheckpointError

    need = ("input_projection.weight", "final_layer.weight", "cond_projection.weight", "null_cond_embed")
    missing = [k for k in need if k not in state]
    if missing:
        raise CheckpointError(f"not a Ditto LMDM state dict: missing {', '.join(missing)} "
                              f"(found keys like {', '.join(list(state)[:5])})")
    d, in2 = state["input_projection.weight"].shape
    motion = state["final_layer.weight"].shape[0]
    if in2 != 2 * motion:
        raise CheckpointError(f"input_projection takes {in2} features, expected 2 x {motion}: the multi-cond-frame "
                              f"variant of LMDM is not supported")
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("seqTransDecoder.stack.")})
    enc = sorted({int(k.split(".")[1]) for k in state if k.startswith("cond_encoder.")})
    ff_key = "seqTransDecoder.stack.0.linear1.weight"
    ff = state[ff_key].shape[0] if ff_key in state else RELEASED["ff_size"]
    heads = int(num_heads) if num_heads else RELEASED["num_heads"]
    if d % heads:
        raise CheckpointError(f"latent width {d} is not divisible by num_heads={heads}; pass the right num_heads")
    return dict(motion_dim=int(motion), cond_dim=int(state["cond_projection.weight"].shape[1]),
                seq_frames=int(state["null_cond_embed"].shape[1]), latent_dim=int(d), ff_size=int(ff),
                num_layers=len(layers) or 1, num_heads=heads, num_encoder_layers=len(enc) or 2)


__all__ = ["LMDM", "RELEASED", "RotaryEmbedding", "infer_config", "sinusoid"]
