"""Device and dtype choice shared by every model family."""
from __future__ import annotations

import contextlib
import gc
import logging
from typing import Optional, Union

import torch

from .host import HOST

log = logging.getLogger(__name__)
_SAID = set()

DEVICE_CHOICES = ["auto", "cuda", "mps", "cpu"]
PRECISION_CHOICES = ["auto", "fp32", "fp16", "bf16"]
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: Union[str, torch.device, None] = "auto") -> torch.device:
    """``"auto"`` -> the host's device, else cuda, else mps, else cpu. Explicit names are checked."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    if name == "auto":
        if HOST.default_device is not None:
            return torch.device(HOST.default_device())
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU; use 'auto' or 'cpu'")
    if dev.type == "mps" and not _mps_available():
        raise ValueError("device 'mps' was asked for but it is not available; use 'auto' or 'cpu'")
    return dev


def mkldnn_native(precision: str) -> bool:
    """Whether oneDNN has a native CPU path for ``"bf16"`` or ``"fp16"`` here (torch's own probe, which
    honours ``ONEDNN_MAX_CPU_ISA``); without one, half-precision convolutions fall back to reference
    kernels that are orders of magnitude slower."""
    probe = getattr(getattr(torch.ops, "mkldnn", None), f"_is_mkldnn_{precision}_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - a torch without the probe: treat as absent
        return False


def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bf16 in hardware (AMX tiles or AVX-512 BF16) and oneDNN may use it
    (``ONEDNN_MAX_CPU_ISA`` can forbid it), where bf16 convolutions run several times faster than fp32
    ones; elsewhere bf16 is emulated and slower than fp32."""
    if not mkldnn_native("bf16"):
        return False
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and probe():
                return True
        except Exception:  # noqa: BLE001 - a private probe of another torch version: treat as absent
            pass
    return False


def resolve_dtype(precision: Union[str, torch.dtype, None] = "auto",
                  device: Optional[torch.device] = None, cpu_bf16: bool = False) -> torch.dtype:
    """``"auto"`` -> fp16 on CUDA/MPS (or what the host recommends), fp32 on CPU, or bf16 on a CPU
    with native bf16 (:func:`cpu_bf16_native`) where the caller's model family allows it
    (``cpu_bf16=True``: its bf16 results are inside its stated quality bound).

    bf16 on a GPU without bf16 support falls back to fp16; half precision on CPU is
    allowed when asked for explicitly (slow without native bf16, but it is the user's call).
    """
    if isinstance(precision, torch.dtype):
        return precision
    precision = (precision or "auto").lower()
    device = resolve_device(device) if not isinstance(device, torch.device) else device
    if precision == "auto":
        if device.type == "cpu" and cpu_bf16 and cpu_bf16_native():
            return torch.bfloat16
        if HOST.should_use_fp16 is not None:
            return torch.float16 if HOST.should_use_fp16(device) else torch.float32
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of {PRECISION_CHOICES}, got {precision!r}")
    dtype = _DTYPES[precision]
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return dtype


def resolve_run_dtype(precision: Union[str, torch.dtype, None], device: torch.device, what: str) -> torch.dtype:
    """:func:`resolve_dtype` for a model family whose bf16 results are inside its stated bound
    (``cpu_bf16=True``), saying once in the log when ``auto`` picks bf16 on this CPU (``what``: who runs)."""
    dtype = resolve_dtype(precision, device, cpu_bf16=True)
    auto = not isinstance(precision, torch.dtype) and str(precision or "auto").lower() == "auto"
    if auto and dtype == torch.bfloat16 and device.type == "cpu" and what not in _SAID:
        _SAID.add(what)
        log.info("%s in bf16 on this CPU (precision auto: it has native bf16, AMX or AVX-512 BF16, and the bf16 "
                 "frames stay within the README's bound of fp32); choose fp32 for full precision", what)
    return dtype


def autocast(device: torch.device, dtype: torch.dtype):
    """Autocast context for half precision (fp16/bf16 on a GPU; bf16 or fp16 on the CPU when
    asked for explicitly, which recent CPUs with AVX-512 BF16 / AMX run much faster); a no-op
    for fp32."""
    if dtype == torch.float32 or device.type not in ("cuda", "mps", "cpu"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The half dtype autocast is running in for ``device``'s type, or None when it is off (or that device
    type has no autocast)."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (RuntimeError, TypeError, AttributeError):  # a device type without autocast
        pass
    return None


def full_precision(device: torch.device):
    """Switch autocast off inside (for small, precision-sensitive maths: inverses, keypoints)."""
    return torch.autocast(device_type=device.type, enabled=False)


def empty_cache() -> None:
    """Run the garbage collector and give cached device memory back to the driver."""
    gc.collect()
    if HOST.empty_cache is not None:
        HOST.empty_cache()
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
    if _mps_available() and hasattr(torch, "mps"):
        torch.mps.empty_cache()
