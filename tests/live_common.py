"""Tiny live-mode parts shared by the live tests and tests/live_server.py: LivePortrait's tiny test weights,
the Ditto fixture's LMDM and a deterministic stand-in for HuBERT."""
from __future__ import annotations

import importlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"


class StubEncoder:
    """A deterministic stand-in for HuBERT: 20 frames of 320 samples per 6480-sample chunk, projected to 1024."""

    def __init__(self):
        self.proj = torch.randn(400, 1024, generator=torch.Generator().manual_seed(0)) / 20

    def __call__(self, chunks):
        frames = chunks.unfold(1, 400, 320)[:, :20]          # [N, 20, 400]
        return torch.tanh(frames @ self.proj * 50)


def tiny_lmdm(folder: Path, core: str = "core"):
    """The Ditto fixture's LMDM, saved as the loader reads it (``core``: the model library's module name:
    ``core`` in the unit tests, ``<pack>.core`` where the pack is imported as a package)."""
    ditto = importlib.import_module(f"{core}.motion.ditto")
    state = load_file(str(FIXTURES / "ditto" / "weights.safetensors"))
    path = Path(folder) / "lmdm.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith(("stitch.", "schedule."))}, str(path),
              metadata={"num_heads": "4"})
    return ditto.load_lmdm(path)


def tiny_lp(core: str = "core"):
    L = importlib.import_module(f"{core}.liveportrait.load")
    lp = FIXTURES / "liveportrait" / "weights"
    return L.load_liveportrait({k: lp / f"{k}.safetensors" for k in L.KINDS}, L.preset("tiny"))


def tiny_parts(folder: Path, precision: str = "auto", core: str = "core"):
    live = importlib.import_module(f"{core}.live")
    return live.LiveParts(tiny_lp(core), tiny_lmdm(folder, core), StubEncoder(), device=torch.device("cpu"),
                          precision=precision)


def speech(seconds, seed=0, rate=16000):
    """A voiced-like test signal: noise with a 3 Hz envelope."""
    g = torch.Generator().manual_seed(seed)
    n = int(seconds * rate)
    return 0.3 * torch.randn(n, generator=g) * (1 + torch.sin(torch.arange(n) / rate * 2 * torch.pi * 3))
