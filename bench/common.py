"""Helpers shared by the benchmark scripts (run as ``python bench/<name>.py``)."""
import json
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so the scripts can `from core import ...`


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), for the results of a bench."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """The process's peak resident memory so far, in MB."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if sys.platform != "darwin" else r / 2 ** 20


def report(results: dict, json_path=None) -> None:
    """Print the results as JSON and, if asked, write them to ``json_path``."""
    text = json.dumps(results, indent=1)
    print(text)
    if json_path:
        Path(json_path).write_text(text + "\n")


def count_flops(fn) -> float:
    """FLOPs of the convolutions and matrix products ``fn`` runs (torch.utils.flop_counter)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def sync(device) -> None:
    """Wait for the device's queued work (a GPU's), so a timing covers it."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """The best wall time of ``repeats`` calls of ``fn``, the device synchronised around each."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def peak_gflops(device, dtype) -> float:
    """The best throughput seen here in ``dtype``: a 2048^3 matrix product, and the SPADE decoder's widest
    convolution (512 -> 512 channels, 3x3, 64x64, channels-last), best of 5 runs each after a warm-up."""
    import torch

    def best(fn, flops):
        fn()
        return flops / timed(fn, device, 5) / 1e9

    a = torch.randn(2048, 2048, device=device, dtype=dtype)
    x = torch.randn(1, 512, 64, 64, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(512, 512, 3, 3, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        gemm = best(lambda: a @ a, 2 * 2048 ** 3)
        conv = best(lambda: torch.nn.functional.conv2d(x, w, padding=1), 2 * 512 * 512 * 9 * 64 * 64)
    return max(gemm, conv)
