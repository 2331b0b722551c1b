"""JoyVASA's audio-to-motion generator (``DitTalkingHead``) in plain torch + a stock HuBERT.

Module tree and parameter names follow the official ``src/modules/dit_talking_head.py`` so the
released ``model`` state dict loads strictly (after the HuBERT weight-norm key mapping in
:mod:`.load`)::

    start_audio_feat (1, Lp, d)   start_motion_feat (1, Lp, m)   null_audio_feat (1, 1, d)
    audio_encoder      transformers.HubertModel (chinese-hubert-base; eager attention)
    audio_feature_map  Linear(hubert hidden, d)
    denoising_net      TE.pe, diff_step_map.{0,2}, PE.pe, feature_proj, transformer.layers.*,
                       alignment_mask, motion_dec.{0,2}
    diffusion_sched    betas, alphas, alpha_bars, sigmas_flex, sigmas_inflex   (buffers, 1 + steps)

Released sizes: m = 73 motion dims, L = 100 frames per window, Lp = 10 context frames,
d = 256, 8 decoder layers / 8 heads / FF 1024, a 501-row step table, 50 cosine diffusion steps.

Per window of ``16000 * L / fps`` samples (4 s): reflect-pad 20 + 20 samples (``pad_audio``),
HuBERT ``last_hidden_state`` (2L frames at 50 fps), linear resampling to L frames (the mean of
each pair), ``audio_feature_map``. The denoiser embeds ``[prev motion (Lp); x_t (L)]`` with
``feature_proj``, adds the positional table and the step embedding, runs post-norm
``nn.TransformerDecoderLayer``\\ s whose cross-attention lets token i see memory token i only
(memory = ``[prev audio (Lp); audio (L)]``), and decodes every token with a GELU MLP.

Positional encoding (``pe_mode``): ``"constant_row"`` adds the single row ``pe[Lp + L]`` to every
token (the code the released weights were trained with, before the 2025-12-09 fix);
``"sinusoidal"`` adds ``pe[0 : Lp + L]`` (the current official code).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...configs import load_preset

PE_MODES = ("constant_row", "sinusoidal")
SCHEDULES = ("cosine", "linear", "quadratic", "sigmoid")

#: the released generator's effective architecture (what the official loader builds)
RELEASED: Dict[str, Any] = {
    "motion_feat_dim": 73,
    "n_motions": 100,
    "n_prev_motions": 10,
    "feature_dim": 256,
    "n_diff_steps": 50,
    "diff_schedule": "cosine",
    "n_layers": 8,
    "n_heads": 8,
    "ff_dim": 1024,
    "te_max_len": 501,
    "pe_max_len": 600,
    "align_mask_width": 1,
    "use_indicator": False,
    "fps": 25,
    "pad_mode": "zero",
}


def hubert_base_config() -> Dict[str, Any]:
    """chinese-hubert-base's architecture as ``transformers.HubertConfig`` arguments."""
    data = load_preset(__file__, "chinese_hubert_base")
    return {k: v for k, v in data.items() if not k.startswith("_")}


def make_config(overrides: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """A full model config: the released values updated with ``overrides``.

    ``overrides`` may be our flat form, or the reference fixture's ``config.json`` (a ``"model"``
    section with ``mlp_ratio`` and a partial ``"hubert"`` section); ``hubert`` entries update the
    chinese-hubert-base arguments.
    """
    src = dict(overrides or {})
    if isinstance(src.get("model"), Mapping):
        src = dict(src["model"])
    cfg = copy.deepcopy(RELEASED)
    cfg["hubert"] = hubert_base_config()
    hub = src.pop("hubert", None)
    if isinstance(hub, Mapping):
        cfg["hubert"].update(hub)
    for key in RELEASED:
        if key in src and src[key] is not None:
            cfg[key] = src[key]
    if "ff_dim" not in src and src.get("mlp_ratio"):
        cfg["ff_dim"] = int(src["mlp_ratio"]) * int(cfg["feature_dim"])
    elif "ff_dim" not in src and "feature_dim" in src:
        cfg["ff_dim"] = 4 * int(cfg["feature_dim"])
    for key in ("motion_feat_dim", "n_motions", "n_prev_motions", "feature_dim", "n_diff_steps", "n_layers",
                "n_heads", "ff_dim", "te_max_len", "pe_max_len", "align_mask_width", "fps"):
        cfg[key] = int(cfg[key])
    cfg["use_indicator"] = bool(cfg["use_indicator"])
    sched = str(cfg["diff_schedule"]).strip().split(" ")[0].split("(")[0]  # "cosine (s=0.008, ...)" -> cosine
    if sched not in SCHEDULES:
        raise ValueError(f"unknown diffusion schedule {cfg['diff_schedule']!r} (known: {', '.join(SCHEDULES)})")
    cfg["diff_schedule"] = sched
    return cfg


# --------------------------------------------------------------------------- building blocks
class PositionalEncoding(nn.Module):
    """Interleaved sinusoid table ``pe`` (1, max_len, d): ``pe[:, 0::2] = sin(pos * div)``,
    ``pe[:, 1::2] = cos(pos * div)``, ``div = exp(-ln(1e4) * 2k / d)``."""

    def __init__(self, d_model: int, max_len: int = 600):
        super().__init__()
        self.register_buffer("pe", sinusoid_table(max_len, d_model))


def sinusoid_table(max_len: int, d_model: int) -> torch.Tensor:
    pe = torch.zeros(max_len, d_model)
    position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model))
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


def alignment_mask(length: int, width: int = 1) -> torch.Tensor:
    """(length, length) bool, True = masked: token i sees memory tokens ``i - (width-1) .. i + (width-1)``."""
    e = width - 1
    mask = torch.ones(length, length, dtype=torch.bool)
    for i in range(length):
        mask[i, max(0, i - e):i + e + 1] = False
    return mask


class DiffusionSchedule(nn.Module):
    """Official ``DiffusionSchedule`` buffers (index 0 = the prepended ``beta_0 = 0``)."""

    def __init__(self, num_steps: int, mode: str = "cosine", beta_1: float = 1e-4, beta_T: float = 0.02,
                 s: float = 0.008):
        super().__init__()
        if mode == "linear":
            betas = torch.linspace(beta_1, beta_T, num_steps)
        elif mode == "quadratic":
            betas = torch.linspace(beta_1 ** 0.5, beta_T ** 0.5, num_steps) ** 2
        elif mode == "sigmoid":
            betas = torch.sigmoid(torch.linspace(-5, 5, num_steps)) * (beta_T - beta_1) + beta_1
        elif mode == "cosine":
            x = torch.linspace(0, num_steps, num_steps + 1)
            ab = torch.cos(((x / num_steps) + s) / (1 + s) * torch.pi * 0.5) ** 2
            ab = ab / ab[0]
            betas = torch.clip(1 - (ab[1:] / ab[:-1]), 0.0001, 0.999)
        else:
            raise ValueError(f"unknown diffusion schedule {mode!r}")
        betas = torch.cat([torch.zeros(1), betas], dim=0)
        alphas = 1 - betas
        log_alphas = torch.log(alphas)
        for i in range(1, log_alphas.shape[0]):  # float32 running sum, as the official loop
            log_alphas[i] += log_alphas[i - 1]
        alpha_bars = log_alphas.exp()
        sigmas_flex = torch.sqrt(betas)
        sigmas_inflex = torch.zeros_like(sigmas_flex)
        for i in range(1, sigmas_flex.shape[0]):
            sigmas_inflex[i] = ((1 - alpha_bars[i - 1]) / (1 - alpha_bars[i])) * betas[i]
        sigmas_inflex = torch.sqrt(sigmas_inflex)
        self.num_steps = int(num_steps)
        self.register_buffer("betas", betas)
        self.register_buffer("alphas", alphas)
        self.register_buffer("alpha_bars", alpha_bars)
        self.register_buffer("sigmas_flex", sigmas_flex)
        self.register_buffer("sigmas_inflex", sigmas_inflex)

    def get_sigmas(self, t: int, flexibility: float = 0.0) -> torch.Tensor:
        return self.sigmas_flex[t] * flexibility + self.sigmas_inflex[t] * (1 - flexibility)


class DenoisingNetwork(nn.Module):
    """x0 predictor over ``[prev motion; x_t]`` tokens conditioned on ``[prev audio; audio]``."""

    def __init__(self, motion_feat_dim: int = 73, feature_dim: int = 256, n_heads: int = 8, n_layers: int = 8,
                 ff_dim: int = 1024, n_prev_motions: int = 10, n_motions: int = 100, te_max_len: int = 501,
                 pe_max_len: int = 600, align_mask_width: int = 1, use_indicator: bool = False,
                 pe_mode: str = "constant_row"):
        super().__init__()
        self.motion_feat_dim = motion_feat_dim
        self.feature_dim = feature_dim
        self.n_prev_motions = n_prev_motions
        self.n_motions = n_motions
        self.use_indicator = bool(use_indicator)
        self.pe_mode = pe_mode
        self.TE = PositionalEncoding(feature_dim, max_len=te_max_len)
        self.diff_step_map = nn.Sequential(nn.Linear(feature_dim, feature_dim), nn.GELU(),
                                           nn.Linear(feature_dim, feature_dim))
        self.PE = PositionalEncoding(feature_dim, max_len=pe_max_len)
        self.feature_proj = nn.Linear(motion_feat_dim + (1 if self.use_indicator else 0), feature_dim)
        layer = nn.TransformerDecoderLayer(d_model=feature_dim, nhead=n_heads, dim_feedforward=ff_dim,
                                           activation="gelu", batch_first=True)
        self.transformer = nn.TransformerDecoder(layer, num_layers=n_layers)
        self.align_mask_width = int(align_mask_width)
        if self.align_mask_width > 0:
            self.register_buffer("alignment_mask", alignment_mask(n_prev_motions + n_motions, self.align_mask_width))
        else:
            self.alignment_mask = None
        self.motion_dec = nn.Sequential(nn.Linear(feature_dim, feature_dim // 2), nn.GELU(),
                                        nn.Linear(feature_dim // 2, motion_feat_dim))

    @property
    def pe_mode(self) -> str:
        return self._pe_mode

    @pe_mode.setter
    def pe_mode(self, mode: str) -> None:
        if mode not in PE_MODES:
            raise ValueError(f"pe_mode must be one of {PE_MODES}, got {mode!r}")
        self._pe_mode = mode

    def step_embedding(self, step: torch.Tensor) -> torch.Tensor:
        """(N,) integer steps -> (N, 1, d)."""
        return self.diff_step_map(self.TE.pe[0, step]).unsqueeze(1)

    def tokens(self, motion_feat: torch.Tensor, prev_motion_feat: torch.Tensor, step: torch.Tensor,
               indicator: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Transformer input (N, Lp + L, d): ``feature_proj(tokens) + PE + step embedding``."""
        feats = torch.cat([prev_motion_feat, motion_feat], dim=1)
        if self.use_indicator:
            if indicator is None:
                indicator = torch.ones(motion_feat.shape[:2], dtype=feats.dtype, device=feats.device)
            ind = torch.cat([torch.zeros(indicator.shape[0], prev_motion_feat.shape[1], dtype=feats.dtype,
                                         device=feats.device), indicator.to(feats.dtype)], dim=1)
            feats = torch.cat([feats, ind.unsqueeze(-1)], dim=-1)
        x = self.feature_proj(feats)
        n = x.shape[1]
        if self._pe_mode == "constant_row":
            x = x + self.PE.pe[:, n, :]
        else:
            x = x + self.PE.pe[:, :n, :]
        return x + self.step_embedding(step)

    def forward(self, motion_feat: torch.Tensor, audio_feat: torch.Tensor, prev_motion_feat: torch.Tensor,
                prev_audio_feat: torch.Tensor, step: torch.Tensor,
                indicator: Optional[torch.Tensor] = None,
                cross: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """(N, L, m) noisy motion, (N, L, d) audio, (N, Lp, m), (N, Lp, d), (N,) steps -> (N, Lp + L, m).

        ``cross``: :meth:`cross_attention` of this memory (the same for every diffusion step of a
        window); the decoder layers then skip their cross-attention. None runs the stock
        ``nn.TransformerDecoder`` with the alignment mask (the official computation)."""
        x = self.tokens(motion_feat, prev_motion_feat, step, indicator)
        memory = torch.cat([prev_audio_feat, audio_feat], dim=1)
        mask = self.alignment_mask
        if mask is not None and (mask.shape[0] != x.shape[1] or mask.shape[1] != memory.shape[1]):
            raise ValueError(f"the denoiser expects {mask.shape[0]} tokens, got {x.shape[1]}")
        if cross is not None:
            return self.motion_dec(self._decode_with_cross(x, cross))
        return self.motion_dec(self.transformer(x, memory, memory_mask=mask))

    def _own_token_only(self) -> bool:
        """True when the alignment mask lets token i see memory token i alone (width 1), every layer is
        post-norm, and the cross-attention adds no extra keys and has packed q/k/v weights: then it does
        not depend on the tokens and :meth:`_decode_with_cross` computes what the stock decoder does."""
        mask = self.alignment_mask
        if self.training or mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
            return False
        if self.transformer.norm is not None:
            return False
        for layer in self.transformer.layers:
            mha = layer.multihead_attn
            if layer.norm_first or mha.bias_k is not None or mha.add_zero_attn or mha.in_proj_weight is None:
                return False
        eye = torch.eye(mask.shape[0], dtype=torch.bool, device=mask.device)
        return bool(torch.equal(mask.to(torch.bool), ~eye))

    def cross_attention(self, memory: torch.Tensor) -> Optional[List[torch.Tensor]]:
        """Every decoder layer's cross-attention output for ``memory`` (N, Lp + L, d), or None where it
        depends on the tokens (see :meth:`_own_token_only`).

        With the released width-1 alignment mask, row i of the attention's softmax has a single finite
        entry, so its weight is exactly 1 and the others exactly 0: the output at token i is
        ``out_proj(W_v memory_i + b_v)`` whatever the query. The memory is fixed for a window, so the
        50 diffusion steps share one computation instead of 50 (a quarter of the decoder's products,
        and its masked softmax)."""
        if not self._own_token_only():
            return None
        out = []
        for layer in self.transformer.layers:
            mha = layer.multihead_attn
            d = mha.embed_dim
            bias = mha.in_proj_bias[2 * d:] if mha.in_proj_bias is not None else None
            out.append(mha.out_proj(F.linear(memory, mha.in_proj_weight[2 * d:], bias)))
        return out

    def _decode_with_cross(self, x: torch.Tensor, cross: List[torch.Tensor]) -> torch.Tensor:
        """``nn.TransformerDecoder`` (post-norm, eval) with each layer's cross-attention output given."""
        layers = self.transformer.layers
        if len(cross) != len(layers):
            raise ValueError(f"{len(layers)} decoder layers, {len(cross)} cross-attention outputs")
        for layer, ca in zip(layers, cross):
            x = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
            x = layer.norm2(x + ca)
            x = layer.norm3(x + layer.linear2(layer.activation(layer.linear1(x))))
        return x


# --------------------------------------------------------------------------- HuBERT
def build_hubert(hubert_cfg: Mapping[str, Any], init: bool = False) -> nn.Module:
    """A stock ``transformers.HubertModel`` (eval, eager attention); its parameters stay uninitialised
    (the checkpoint overwrites them) unless ``init``."""
    from transformers import HubertConfig, HubertModel

    kw = {k: v for k, v in hubert_cfg.items() if k != "model_type"}
    config = HubertConfig(**kw)
    config._attn_implementation = "eager"
    import contextlib

    with (contextlib.nullcontext() if init else _no_init_weights()):
        model = HubertModel(config)
    try:
        model.config._attn_implementation = "eager"
    except Exception:  # pragma: no cover - read-only in some versions
        pass
    return model.eval()


def _no_init_weights():
    """transformers' ``no_init_weights`` (skips the random init the checkpoint overwrites anyway)."""
    import contextlib

    for modname in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            mod = __import__(modname, fromlist=["no_init_weights"])
            fn = getattr(mod, "no_init_weights", None)
            if fn is not None:
                return fn()
        except Exception:  # pragma: no cover
            continue
    return contextlib.nullcontext()  # pragma: no cover


def pad_audio(audio: torch.Tensor, audio_unit: int = 320, pad_threshold: int = 80) -> torch.Tensor:
    """Official ``pad_audio``: (N, S) -> reflect-pad ``side // 2`` twice (+ 1 replicate when odd),
    ``side = ceil((unit * (S // unit) + 80 - S) / 2)``; a 64000-sample window becomes 64080."""
    _, length = audio.shape
    n_units = length // audio_unit
    side = math.ceil((audio_unit * n_units + pad_threshold - length) / 2)
    if side >= 0:
        reflect, replicate = side // 2, side % 2
        if reflect > 0:
            audio = F.pad(audio, (reflect, reflect), mode="reflect")
            audio = F.pad(audio, (reflect, reflect), mode="reflect")
        if replicate > 0:
            audio = F.pad(audio[:, None], (1, 1), mode="replicate")[:, 0]
    return audio


# --------------------------------------------------------------------------- the generator
class JoyVASA(nn.Module):
    """``DitTalkingHead`` (decoder architecture, audio CFG, x0 target). ``.config`` holds the sizes.

    Built for loading (:func:`.load.load_joyvasa`): HuBERT's parameters are left uninitialised
    unless ``init=True``."""

    def __init__(self, config: Optional[Mapping[str, Any]] = None, pe_mode: str = "constant_row", init: bool = False):
        super().__init__()
        cfg = make_config(config)
        self.config = cfg
        d, m, lp = cfg["feature_dim"], cfg["motion_feat_dim"], cfg["n_prev_motions"]
        self.audio_encoder = build_hubert(cfg["hubert"], init=init)
        self.audio_feature_map = nn.Linear(int(cfg["hubert"]["hidden_size"]), d)
        self.start_audio_feat = nn.Parameter(torch.zeros(1, lp, d))
        self.start_motion_feat = nn.Parameter(torch.zeros(1, lp, m))
        self.null_audio_feat = nn.Parameter(torch.zeros(1, 1, d))
        self.denoising_net = DenoisingNetwork(
            motion_feat_dim=m, feature_dim=d, n_heads=cfg["n_heads"], n_layers=cfg["n_layers"], ff_dim=cfg["ff_dim"],
            n_prev_motions=lp, n_motions=cfg["n_motions"], te_max_len=cfg["te_max_len"],
            pe_max_len=cfg["pe_max_len"], align_mask_width=cfg["align_mask_width"],
            use_indicator=cfg["use_indicator"], pe_mode=pe_mode)
        self.diffusion_sched = DiffusionSchedule(cfg["n_diff_steps"], cfg["diff_schedule"])
        self.eval()

    # sizes ---------------------------------------------------------------
    @property
    def n_motions(self) -> int:
        return self.config["n_motions"]

    @property
    def n_prev_motions(self) -> int:
        return self.config["n_prev_motions"]

    @property
    def fps(self) -> int:
        return self.config["fps"]

    @property
    def window_samples(self) -> int:
        """Audio samples per window (``round(16000 / fps * n_motions)``: 64000)."""
        return int(round(16000.0 / self.fps * self.n_motions))

    @property
    def pe_mode(self) -> str:
        return self.denoising_net.pe_mode

    @pe_mode.setter
    def pe_mode(self, mode: str) -> None:
        self.denoising_net.pe_mode = mode

    # audio ---------------------------------------------------------------
    def hubert_hidden(self, padded: torch.Tensor, frame_num: int) -> torch.Tensor:
        """HuBERT ``last_hidden_state`` (N, frame_num, hidden) of padded audio (N, S), as JoyVASA's
        ``HubertModel.forward(..., frame_num)``: CNN frames cut to ``frame_num`` and linearly resampled to
        ``frame_num`` (identity for a 4 s window), then the stock projection + encoder."""
        enc = self.audio_encoder
        n_cnn = int(enc._get_feat_extract_output_lengths(torch.tensor(padded.shape[1])))
        if n_cnn == frame_num:
            return enc(padded).last_hidden_state
        feats = enc.feature_extractor(padded)[:, :, :frame_num]
        feats = F.interpolate(feats, size=frame_num, align_corners=False, mode="linear").transpose(1, 2)
        hidden = enc.feature_projection(feats)
        if isinstance(hidden, tuple):  # pragma: no cover - wav2vec2-style projection
            hidden = hidden[0]
        return enc.encoder(hidden)[0]

    def encode_audio(self, audio: torch.Tensor, frame_num: Optional[int] = None, return_all: bool = False):
        """Audio windows (N, 16000 * L / fps) -> audio features (N, L, d) (``extract_audio_feature``).

        ``return_all``: a dict of the steps instead (``padded``, ``last_hidden_state`` (N, 2L, h),
        ``interp_25fps`` (N, L, h), ``audio_feat``)."""
        frame_num = frame_num or self.n_motions
        dtype = self.audio_feature_map.weight.dtype
        audio = audio.to(device=self.audio_feature_map.weight.device, dtype=dtype)
        padded = pad_audio(audio)
        hidden = self.hubert_hidden(padded, frame_num * 2)
        interp = F.interpolate(hidden.transpose(1, 2), size=frame_num, align_corners=False,
                               mode="linear").transpose(1, 2)
        feat = self.audio_feature_map(interp)
        if return_all:
            return {"padded": padded, "last_hidden_state": hidden, "interp_25fps": interp, "audio_feat": feat}
        return feat


__all__ = ["DenoisingNetwork", "DiffusionSchedule", "JoyVASA", "PE_MODES", "PositionalEncoding", "RELEASED",
           "alignment_mask", "build_hubert", "hubert_base_config", "make_config", "pad_audio", "sinusoid_table"]
