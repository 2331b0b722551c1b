"""Speech-Driven Animation (Vougioukas et al., GRID model): the three networks, plain torch.

The architecture is derived from the scalars stored in the checkpoint (:class:`SDAConfig`) with
the same arithmetic as the official code (``sda/encoder_audio.py``, ``encoder_image.py``,
``img_generator.py``, ``rnn_audio.py`` at commit d85adfe), so every state-dict key and shape of
the official ``grid.dat`` (and ``timit.dat`` / ``crema.dat``) loads unchanged:

* ``encoder`` - audio: a per-window 1-D CNN (first conv kernel ``int(0.005 * rate)``, stride
  ``int(0.001 * rate)``, then the prime factors of the remaining length as strides with kernels
  ``2 * stride``; 16, 32, 64... channels; BatchNorm + ReLU; a last conv over the whole remaining
  length + tanh) giving one ``aud_enc_dim`` code per video frame, then a 2-layer GRU
  (``rnn_gen_dim``).
* ``encoder_id`` - identity: stride-2 4x4 convs (64, 128, ... channels, BatchNorm + ReLU) down to
  a 4 x (4*W/H) map, then a conv over that map + tanh -> ``id_enc_dim``. The intermediate maps are
  the U-Net skips.
* ``generator`` - a GRU over the noise (``sequential_noise``) squashed by tanh; the latent
  ``cat([z, tanh(gru(noise)), z_id])`` goes through a transposed conv to the 4 x 3 map, U-Net
  blocks (3x3 transposed conv over ``cat([x, skip])``, then a stride-2 4x4 transposed conv),
  and a last stride-2 transposed conv to RGB + tanh.

Module and attribute names follow the official classes so ``state_dict()`` keys are the official
ones (``encoder.encoder.cl.0.weight``, ``encoder_id.cl.0.1.running_mean``,
``generator.dcl.1.dcl2.weight``...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError

#: the model_dict scalars VideoAnimator reads (in its order)
SCALAR_KEYS = ("img_size", "audio_rate", "video_rate", "audio_feat_len", "audio_feat_samples", "id_enc_dim",
               "rnn_gen_dim", "aud_enc_dim", "aux_latent", "sequential_noise")
#: VideoAnimator's constants
INIT_KERNEL = 0.005      # seconds: the first audio conv's kernel
INIT_STRIDE = 0.001      # seconds: its stride
AUDIO_CHANNELS = 16      # first audio conv's channels (doubled per layer)
ID_CHANNELS = 64         # first identity conv's channels (doubled per layer)
KERNEL = 4               # identity encoder / generator kernel
RNN_LAYERS = 2           # audio GRU layers


# --------------------------------------------------------------------------- official arithmetic
def prime_factors(number) -> List[int]:
    """``sda.utils.prime_factors`` (ascending)."""
    factor, factors = 2, []
    while factor * factor <= number:
        if number % factor:
            factor += 1
        else:
            number //= factor
            factors.append(int(factor))
    if number > 1:
        factors.append(int(number))
    return factors


def same_padding(kernel_size, stride=1, in_size=0) -> int:
    """``sda.utils.calculate_padding`` (total padding for 'same'-style output size)."""
    out_size = math.ceil(float(in_size) / float(stride))
    return int((out_size - 1) * stride + kernel_size - in_size)


def conv_output_size(in_size, kernel_size, stride, padding) -> int:
    """``sda.utils.calculate_output_size``."""
    return int((in_size + padding - kernel_size) / stride) + 1


def _is_power2(num: int) -> bool:
    return num != 0 and (num & (num - 1)) == 0


@dataclass(frozen=True)
class AudioConv:
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    padding: int


@dataclass(frozen=True)
class SDAConfig:
    """The scalars of the official ``model_dict`` (everything the architecture is built from)."""

    img_size: Tuple[int, int]
    audio_rate: int
    video_rate: int
    audio_feat_len: float
    audio_feat_samples: int
    id_enc_dim: int
    rnn_gen_dim: int
    aud_enc_dim: int
    aux_latent: int
    sequential_noise: bool
    extra: Dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: Mapping[str, Any], what: str = "SDA checkpoint") -> "SDAConfig":
        """Validate the scalars of a ``model_dict`` (other keys are ignored, as VideoAnimator does)."""
        missing = [k for k in SCALAR_KEYS if k not in d]
        if missing:
            raise CheckpointError(f"{what} lacks the model settings {missing}; it is not a speech-driven-animation "
                                  f"model file (grid.dat / timit.dat / crema.dat) or its safetensors twin")

        def num(key, kind, minimum=1):
            v = d[key]
            if isinstance(v, torch.Tensor) and v.numel() == 1:
                v = v.item()
            if isinstance(v, np.generic):
                v = v.item()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and float(v) != int(v)):
                raise CheckpointError(f"{what}: setting '{key}' must be a number, got {v!r}")
            v = kind(v)
            if v < minimum:
                raise CheckpointError(f"{what}: setting '{key}' must be at least {minimum}, got {v!r}")
            return v

        size = d["img_size"]
        if isinstance(size, torch.Tensor):
            size = size.tolist()
        try:
            h, w = (int(x) for x in size)
        except (TypeError, ValueError):
            raise CheckpointError(f"{what}: img_size must be (height, width), got {size!r}") from None
        if min(h, w) < 8:
            raise CheckpointError(f"{what}: img_size {size!r} is too small (at least 8 x 8)")
        seq = d["sequential_noise"]
        if isinstance(seq, torch.Tensor):
            seq = seq.item()
        if not isinstance(seq, (bool, np.bool_, int)):
            raise CheckpointError(f"{what}: sequential_noise must be a bool, got {seq!r}")
        cfg = cls(img_size=(h, w), audio_rate=num("audio_rate", int), video_rate=num("video_rate", int),
                  audio_feat_len=num("audio_feat_len", float, 0.0), audio_feat_samples=num("audio_feat_samples", int),
                  id_enc_dim=num("id_enc_dim", int), rnn_gen_dim=num("rnn_gen_dim", int),
                  aud_enc_dim=num("aud_enc_dim", int), aux_latent=num("aux_latent", int, 0),
                  sequential_noise=bool(seq), extra={k: v for k, v in d.items() if k not in SCALAR_KEYS})
        if int(cfg.audio_rate * cfg.audio_feat_len) != cfg.audio_feat_samples:
            raise CheckpointError(f"{what}: audio_feat_samples {cfg.audio_feat_samples} != audio_rate x "
                                  f"audio_feat_len = {cfg.audio_rate} x {cfg.audio_feat_len}")
        if cfg.cutting_stride < 1 or cfg.audio_seq_padding < 0:
            raise CheckpointError(f"{what}: the audio window ({cfg.audio_feat_samples} samples) is shorter than one "
                                  f"video frame ({cfg.audio_rate}/{cfg.video_rate} samples)")
        try:
            cfg.audio_convs()
        except (ValueError, ZeroDivisionError, OverflowError) as exc:
            raise CheckpointError(f"{what}: unsupported audio settings: {exc}") from exc
        return cfg

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able scalars (``img_size`` as a list)."""
        return {"img_size": list(self.img_size), "audio_rate": self.audio_rate, "video_rate": self.video_rate,
                "audio_feat_len": self.audio_feat_len, "audio_feat_samples": self.audio_feat_samples,
                "id_enc_dim": self.id_enc_dim, "rnn_gen_dim": self.rnn_gen_dim, "aud_enc_dim": self.aud_enc_dim,
                "aux_latent": self.aux_latent, "sequential_noise": self.sequential_noise}

    # ------------------------------------------------------------------ audio framing
    @property
    def cutting_stride(self) -> int:
        """Audio samples per video frame (the window hop)."""
        return int(self.audio_rate / float(self.video_rate))

    @property
    def audio_seq_padding(self) -> int:
        """Zeros added around the speech: ``pad // 2`` before, the rest after."""
        return self.audio_feat_samples - self.cutting_stride

    # ------------------------------------------------------------------ derived architecture
    def audio_kernels_strides(self) -> Tuple[List[int], List[int]]:
        """``encoder_audio.Encoder.kernels`` / ``.strides`` (float arithmetic as the original)."""
        rate, features = self.audio_rate, self.audio_feat_len * self.audio_rate
        strides = [int(INIT_STRIDE * rate)]
        kernels = [int(INIT_KERNEL * rate)]
        padding = same_padding(INIT_KERNEL * rate, stride=INIT_STRIDE * rate, in_size=features)
        init_features = conv_output_size(features, INIT_KERNEL * rate, stride=INIT_STRIDE * rate, padding=padding)
        rest = prime_factors(init_features)
        return kernels + [2 * s for s in rest], strides + rest

    def audio_convs(self) -> Tuple[List[AudioConv], int]:
        """The audio CNN's conv layers before the last one, and the last one's kernel."""
        kernels, strides = self.audio_kernels_strides()
        if min(strides) < 1 or len(strides) < 2:
            raise ValueError(f"audio rate {self.audio_rate} / window {self.audio_feat_len} s give strides {strides}")
        features = self.audio_feat_len * self.audio_rate
        maps, convs = AUDIO_CHANNELS, []
        for i in range(len(strides) - 1):
            padding = same_padding(kernels[i], stride=strides[i], in_size=features)
            features = conv_output_size(features, kernels[i], stride=strides[i], padding=padding)
            pad = int(math.ceil(padding / 2.0))
            if i == 0:
                convs.append(AudioConv(1, maps, kernels[i], strides[i], pad))
            else:
                convs.append(AudioConv(maps, 2 * maps, kernels[i], strides[i], pad))
                maps *= 2
        # the real length reaching the last conv (its kernel must cover it exactly: one code per window)
        length = self.audio_feat_samples
        for c in convs:
            length = (length + 2 * c.padding - c.kernel) // c.stride + 1
        if int(features) != length or length < 1:
            raise ValueError(f"the audio CNN leaves {length} samples for a last kernel of {features}")
        return convs, int(features)

    @property
    def id_final_size(self) -> Tuple[int, int]:
        stable = max(self.img_size) if _is_power2(max(self.img_size)) else min(self.img_size)
        return tuple(int(4 * x // stable) for x in self.img_size)

    @property
    def id_channels(self) -> List[int]:
        layers = int(np.log2(max(self.img_size))) - 2
        channels = [ID_CHANNELS]
        for _ in range(layers - 1):
            channels.append(2 * channels[-1])
        return channels

    @property
    def gen_init_size(self) -> Tuple[int, int]:
        return tuple(int(4 * x / max(self.img_size)) for x in self.img_size)

    @property
    def gen_num_layers(self) -> int:
        return int(np.log2(max(self.img_size))) - 1

    @property
    def total_latent_size(self) -> int:
        return self.rnn_gen_dim + self.id_enc_dim + self.aux_latent

    def derived(self) -> Dict[str, Any]:
        """The derived numbers, named as in the reference fixture's ``config.json``."""
        kernels, strides = self.audio_kernels_strides()
        return {"encoder_id_channels": self.id_channels, "encoder_id_final_size": list(self.id_final_size),
                "generator_init_size": list(self.gen_init_size), "generator_num_layers": self.gen_num_layers,
                "generator_total_latent_size": self.total_latent_size, "audio_encoder_kernels": kernels,
                "audio_encoder_strides": strides, "cutting_stride": self.cutting_stride,
                "audio_seq_padding": self.audio_seq_padding}


# --------------------------------------------------------------------------- audio
class AudioFrameEncoder(nn.Module):
    """``encoder_audio.Encoder``: one audio window ``[N, 1, samples]`` -> code ``[N, aud_enc_dim]``."""

    def __init__(self, cfg: SDAConfig) -> None:
        super().__init__()
        convs, last_kernel = cfg.audio_convs()
        self.code_size = cfg.aud_enc_dim
        self.cl = nn.ModuleList()
        self.activations = nn.ModuleList()
        for c in convs:
            self.cl.append(nn.Conv1d(c.in_channels, c.out_channels, c.kernel, stride=c.stride, padding=c.padding))
            self.activations.append(nn.Sequential(nn.BatchNorm1d(c.out_channels), nn.ReLU(True)))
        self.cl.append(nn.Conv1d(convs[-1].out_channels, cfg.aud_enc_dim, last_kernel))
        self.activations.append(nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, act in zip(self.cl, self.activations):
            x = act(conv(x))
        return x.reshape(x.shape[0], self.code_size)


class AudioRNN(nn.Module):
    """``rnn_audio.RNN``: per-window codes, then the 2-layer GRU (the content code ``z``)."""

    def __init__(self, cfg: SDAConfig) -> None:
        super().__init__()
        self.audio_feat_samples = cfg.audio_feat_samples
        self.encoder = AudioFrameEncoder(cfg)
        self.rnn = nn.GRU(cfg.aud_enc_dim, cfg.rnn_gen_dim, RNN_LAYERS, batch_first=True)

    def encode_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """``[N, samples]`` audio windows -> ``[N, aud_enc_dim]``."""
        return self.encoder(windows.reshape(-1, 1, self.audio_feat_samples))

    def forward(self, windows: torch.Tensor, h: Optional[torch.Tensor] = None):
        """``[1, T, samples]`` windows (a clip or a chunk of one) -> (``z [1, T, rnn_gen_dim]``, GRU state).

        Passing the returned state into the next chunk continues the sequence exactly."""
        codes = self.encode_windows(windows).reshape(1, -1, self.encoder.code_size)
        return self.rnn(codes, h)


# --------------------------------------------------------------------------- identity
class IdentityEncoder(nn.Module):
    """``encoder_image.Encoder``: frame ``[B, 3, H, W]`` -> (``z_id [B, id_enc_dim]``, skips)."""

    def __init__(self, cfg: SDAConfig) -> None:
        super().__init__()
        self.code_size = cfg.id_enc_dim
        self.channels = cfg.id_channels
        pad = same_padding(KERNEL, 2) // 2
        self.cl = nn.ModuleList()
        cin = 3
        for ch in self.channels:
            self.cl.append(nn.Sequential(nn.Conv2d(cin, ch, KERNEL, stride=2, padding=pad, bias=False),
                                         nn.BatchNorm2d(ch), nn.ReLU(inplace=True)))
            cin = ch
        self.cl.append(nn.Sequential(nn.Conv2d(cin, cfg.id_enc_dim, cfg.id_final_size, stride=1, padding=0,
                                               bias=False), nn.Tanh()))

    def forward(self, x: torch.Tensor):
        """Returns the code and the intermediate maps, first layer first (``retain_intermediate``)."""
        skips = []
        for layer in self.cl[:-1]:
            x = layer(x)
            skips.append(x)
        return self.cl[-1](x).reshape(-1, self.code_size), skips


# --------------------------------------------------------------------------- generator
class UnetBlock(nn.Module):
    """``img_generator.UnetBlock``: ``cat([x, skip])`` -> 3x3 deconv -> stride-2 deconv (x2 size)."""

    def __init__(self, in_channels: int, out_channels: int, skip_channels: int, in_size: Tuple[int, int]) -> None:
        super().__init__()
        pad = same_padding(KERNEL, 2) // 2
        self.dcl1 = nn.ConvTranspose2d(in_channels + skip_channels, in_channels, 3, padding=1, bias=False)
        self.dcl2 = nn.ConvTranspose2d(in_channels, out_channels, KERNEL, stride=2, padding=pad, bias=False)
        self.activation1 = nn.Sequential(nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True))
        self.activation2 = nn.Sequential(nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.out_size = tuple(2 * x for x in in_size)

    def skip_term(self, skip: torch.Tensor) -> torch.Tensor:
        """The skip's share of ``dcl1(cat([x, skip]))`` (the deconvolution is linear in its input
        channels): the same for every frame of a clip, so it is computed once."""
        c = self.dcl1.weight.shape[0] - skip.shape[1]
        return F.conv_transpose2d(skip, self.dcl1.weight[c:], padding=1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, skip_term: Optional[torch.Tensor] = None) -> torch.Tensor:
        if skip_term is None:
            x = torch.cat([x, skip.expand(x.shape[0], -1, -1, -1)], 1)
            x = self.dcl1(x)
        else:  # = dcl1(cat([x, skip])), the skip's part precomputed (float summation order aside)
            x = F.conv_transpose2d(x, self.dcl1.weight[:x.shape[1]], padding=1).add_(skip_term)
        x = self.activation1(x)
        return self.activation2(self.dcl2(x, output_size=list(self.out_size)))


class Generator(nn.Module):
    """``img_generator.Generator`` as VideoAnimator builds it (U-Net skips, condition = ``z_id``)."""

    def __init__(self, cfg: SDAConfig) -> None:
        super().__init__()
        self.img_size = tuple(cfg.img_size)
        self.aux_size = cfg.aux_latent
        self.total_latent_size = cfg.total_latent_size
        self.num_layers = cfg.gen_num_layers
        self.rnn_noise = None
        if self.aux_size > 0 and cfg.sequential_noise:
            self.rnn_noise = nn.GRU(self.aux_size, self.aux_size, batch_first=True)
            self.rnn_noise_squashing = nn.Tanh()
        channels = cfg.id_channels[-1]
        skip_channels = list(reversed(cfg.id_channels))
        self.dcl = nn.ModuleList()
        self.dcl.append(nn.Sequential(nn.ConvTranspose2d(self.total_latent_size, channels, cfg.gen_init_size,
                                                         bias=False),
                                      nn.BatchNorm2d(channels), nn.ReLU(inplace=True)))
        in_size = cfg.gen_init_size
        for i in range(self.num_layers - 2):
            self.dcl.append(UnetBlock(channels, channels // 2, skip_channels[i], in_size))
            channels //= 2
            in_size = tuple(2 * x for x in in_size)
        pad = same_padding(KERNEL, 2) // 2
        self.dcl.append(nn.ConvTranspose2d(channels, 3, KERNEL, stride=2, padding=pad, bias=False))
        self.final_activation = nn.Tanh()

    def noise_codes(self, noise: torch.Tensor, h: Optional[torch.Tensor] = None):
        """``[1, T, aux]`` noise -> (what enters the latent, GRU state to carry to the next chunk)."""
        if self.rnn_noise is None:
            return noise, None
        out, h = self.rnn_noise(noise, h)
        return self.rnn_noise_squashing(out), h

    def skip_terms(self, skips: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """Per U-Net block, the identity skip's constant share of its first deconvolution."""
        return [self.dcl[i].skip_term(skips[i - 1]).contiguous(memory_format=torch.channels_last)
                for i in range(1, self.num_layers - 1)]

    def decode(self, latent: torch.Tensor, skips: Sequence[torch.Tensor],
               skip_terms: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """``[N, total_latent]`` latents + identity skips (reversed, deepest first; ``[1, C, h, w]``)
        -> frames ``[N, 3, H, W]`` in -1..1. ``skip_terms`` (:meth:`skip_terms` of the same skips)
        saves recomputing the skips' share for every chunk; activations run channels-last (about
        twice as fast for oneDNN's transposed convolutions on a CPU)."""
        x = self.dcl[0](latent.reshape(-1, self.total_latent_size, 1, 1))
        x = x.contiguous(memory_format=torch.channels_last)
        for i in range(1, self.num_layers - 1):
            x = self.dcl[i](x, skips[i - 1], None if skip_terms is None else skip_terms[i - 1])
        x = self.dcl[-1](x, output_size=list(self.img_size))
        return self.final_activation(x).contiguous()


class SDAModel(nn.Module):
    """The three official networks plus the alignment template and settings of one model file.

    ``state_dict()`` keys are ``encoder.*``, ``encoder_id.*``, ``generator.*`` - the official
    model_dict's sub-dicts with their name as prefix (the flat safetensors twin's layout).
    """

    def __init__(self, cfg: SDAConfig, mean_face: Optional[np.ndarray] = None) -> None:
        super().__init__()
        self.config = cfg
        self.mean_face = None if mean_face is None else np.asarray(mean_face)
        self.encoder = AudioRNN(cfg)
        self.encoder_id = IdentityEncoder(cfg)
        self.generator = Generator(cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def fps(self) -> int:
        return self.config.video_rate

    def extra_repr(self) -> str:
        c = self.config
        return (f"img_size={c.img_size}, audio_rate={c.audio_rate}, video_rate={c.video_rate}, "
                f"aux_latent={c.aux_latent}, sequential_noise={c.sequential_noise}")


__all__ = ["SCALAR_KEYS", "AudioFrameEncoder", "AudioRNN", "Generator", "IdentityEncoder", "SDAConfig", "SDAModel",
           "UnetBlock", "conv_output_size", "prime_factors", "same_padding"]
