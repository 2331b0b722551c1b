import gc
import weakref

import pytest
import torch

from core import device as D
from core.cache import ModelCache, file_key
from core.host import HOST


def test_resolve_device_and_dtype(monkeypatch):
    assert D.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            D.resolve_device("cuda")
        assert D.resolve_device("auto").type in ("cpu", "mps")
    cpu = torch.device("cpu")
    assert D.resolve_dtype("auto", cpu) == torch.float32
    assert D.resolve_dtype("fp16", cpu) == torch.float16
    assert D.resolve_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        D.resolve_dtype("fp8", cpu)
    # the host (ComfyUI) decides "auto"
    monkeypatch.setattr(HOST, "default_device", lambda: "cpu")
    monkeypatch.setattr(HOST, "should_use_fp16", lambda dev: True)
    assert D.resolve_device("auto") == cpu
    assert D.resolve_dtype("auto", cpu) == torch.float16
    with D.autocast(cpu, torch.float32):
        assert not torch.is_autocast_enabled("cpu")
    assert D.autocast_dtype(cpu) is None
    with D.autocast(cpu, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert D.autocast_dtype(cpu) == torch.bfloat16
        x = torch.randn(4, 4)
        assert (x @ x).dtype == torch.bfloat16
        with D.full_precision(cpu):
            assert (x @ x).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_on_cpu_follows_native_bf16(monkeypatch, native):
    """auto -> bf16 on a CPU with native bf16, for the families that allow it (cpu_bf16=True), even when
    the host (ComfyUI) would say fp32 for the CPU; fp32 elsewhere; explicit choices are kept."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(D, "cpu_bf16_native", lambda: native)
    monkeypatch.setattr(HOST, "should_use_fp16", lambda dev: False)
    assert D.resolve_dtype("auto", cpu, cpu_bf16=True) == (torch.bfloat16 if native else torch.float32)
    assert D.resolve_dtype("auto", cpu) == torch.float32
    assert D.resolve_dtype("fp32", cpu, cpu_bf16=True) == torch.float32
    assert D.resolve_dtype("fp16", cpu, cpu_bf16=True) == torch.float16


def test_native_bf16_probe_reads_torch(monkeypatch):
    monkeypatch.setattr(D, "mkldnn_native", lambda precision: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert D.cpu_bf16_native()
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert not D.cpu_bf16_native()

    def broken():
        raise RuntimeError("no cpuinfo")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    assert not D.cpu_bf16_native()
    # the hardware has it but oneDNN may not use it (ONEDNN_MAX_CPU_ISA): not native
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True, raising=False)
    assert D.cpu_bf16_native()
    monkeypatch.setattr(D, "mkldnn_native", lambda precision: False)
    assert not D.cpu_bf16_native()


def test_mkldnn_probe_follows_the_allowed_isa():
    """torch's oneDNN probe honours ONEDNN_MAX_CPU_ISA (read when oneDNN starts: a fresh process)."""
    import subprocess
    import sys

    code = "from core.device import mkldnn_native as m; print(m('bf16'), m('fp16'))"
    env = dict(__import__("os").environ, ONEDNN_MAX_CPU_ISA="AVX2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parent.parent))
    assert out.stdout.split() == ["False", "False"]


def test_cache_loads_once_and_unload_frees(monkeypatch):
    cache = ModelCache()
    loads = []

    def loader():
        loads.append(1)
        return torch.nn.Linear(4, 4)

    cpu = torch.device("cpu")
    a = cache.get("fom", "k1", loader, cpu)
    b = cache.get("fom", "k1", loader, cpu)
    assert a is b and len(loads) == 1 and not a.training and not any(p.requires_grad for p in a.parameters())
    c = cache.get("fom", "k1", loader, cpu, torch.float16)  # another dtype is another entry
    assert c is not a and c.weight.dtype == torch.float16 and len(loads) == 2
    d = cache.get("sda", "k2", loader, cpu)
    assert cache.families() == ["fom", "sda"]
    refs = [weakref.ref(m) for m in (a, c, d)]
    del a, b, c, d
    assert cache.unload("fom") == 2
    gc.collect()
    assert refs[0]() is None and refs[1]() is None  # really freed
    assert refs[2]() is not None and [e.family for e in cache.entries()] == ["sda"]
    assert cache.unload() == 1
    gc.collect()
    assert refs[2]() is None and cache.entries() == []


def test_cache_uses_host_manager(monkeypatch):
    events = []

    class Manager:
        def register(self, module, device):
            events.append(("register", next(module.parameters()).dtype))
            return {"module": module}

        def load(self, handles):
            events.append(("load", len(handles)))

        def release(self, handle):
            events.append(("release",))

    monkeypatch.setattr(HOST, "model_manager", Manager())
    cache = ModelCache()
    cache.get("x", "k", lambda: {"a": torch.nn.Linear(2, 2), "b": torch.nn.Linear(2, 2)}, torch.device("cpu"), torch.bfloat16)
    cache.get("x", "k", lambda: None, torch.device("cpu"), torch.bfloat16)
    assert events == [("register", torch.bfloat16)] * 2 + [("load", 2)] * 2  # both parts in one request
    cache.unload("x")
    assert events[-2:] == [("release",), ("release",)]


def test_file_key_changes_with_the_file(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"1")
    k1 = file_key(f)
    f.write_bytes(b"22")
    assert file_key(f) != k1
