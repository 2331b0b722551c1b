"""Peak memory of AudioToEmbedding and MotionDiT on one speech file, in a process of its own (Linux).

    python tests/memory_child.py ditto|joyvasa SPEECH.wav MODELS_DIR [--stages embed,motion] [--embeddings FILE]

The pack is loaded as ``run.py`` loads it and the nodes are called as a workflow calls them, on the models in
MODELS_DIR (the tiny test weights: ``test_motion_nodes.tiny_ditto_models`` / ``tiny_joyvasa_models``). Each
stage first runs once on a 1 s cut (models loaded, one-time allocations made), then the C allocator hands its
free pages back, the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``) and the stage runs on the whole
file: ``growth_mb`` = the peak during the run minus the resident memory just before it, i.e. what the node
itself needed on top of its inputs. ``--embeddings`` saves the embeddings after ``embed`` / loads them for a
``motion`` run without ``embed``. Prints one JSON object.

Ditto: AudioToEmbedding "HuBERT-large (Ditto)" (chunking ditto-offline) then MotionDiT with 2 steps; JoyVASA:
AudioToEmbedding "JoyVASA (its own HuBERT)" then MotionDiT (its fixed 50 steps).
"""
import argparse
import ctypes
import ctypes.util
import gc
import importlib
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1 << 20
DITTO = "ditto/lmdm_v0.4_hubert.safetensors"
JOYVASA = "joyvasa/motion_generator_hubert_chinese.safetensors"
ENCODERS = {"ditto": "HuBERT-large (Ditto)", "joyvasa": "JoyVASA (its own HuBERT)"}


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {key}")


def can_measure() -> bool:
    """Linux with a resettable peak-RSS mark (``clear_refs`` 5, Linux 4.0+); asked without resetting it."""
    try:
        return os.access("/proc/self/clear_refs", os.W_OK) and _status_mb("VmHWM") > 0
    except (OSError, RuntimeError):
        return False


def _start() -> float:
    """Free pages handed back, peak mark reset; the resident MB now."""
    gc.collect()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "malloc_trim"):  # glibc
        libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def measure(fn):
    """``(result, {"before_mb", "peak_mb", "growth_mb", "seconds"})`` of ``fn()``."""
    before = _start()
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    peak = _status_mb("VmHWM")
    return out, {"before_mb": round(before, 2), "peak_mb": round(peak, 2), "growth_mb": round(peak - before, 2),
                 "seconds": round(seconds, 3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("family", choices=sorted(ENCODERS))
    ap.add_argument("speech")
    ap.add_argument("models")
    ap.add_argument("--stages", default="embed,motion")
    ap.add_argument("--embeddings", help="save the embeddings here after 'embed', or load them for 'motion'")
    ap.add_argument("--steps", type=int, default=2, help="Ditto's DDIM steps (JoyVASA always uses its 50)")
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    os.environ["TALKINGHEAD_MODELS_DIR"] = str(Path(args.models).resolve())
    os.environ["TALKINGHEAD_OFFLINE"] = "1"
    sys.path.insert(0, str(ROOT))
    import numpy as np
    import torch
    from PIL import Image

    torch.set_num_threads(1)
    import run

    pack = run.load_pack()
    nodes = pack.NODE_CLASS_MAPPINGS
    A = importlib.import_module(f"{pack.__name__}.core.audio")
    AF = importlib.import_module(f"{pack.__name__}.core.audio_features")
    result = {"family": args.family, "speech": str(args.speech)}
    audio = A.to_comfy(A.load_audio(args.speech))
    result["audio_seconds"] = audio["waveform"].shape[-1] / audio["sample_rate"]
    emb = None
    if "embed" in stages:
        node = nodes["TalkingHead_AudioToEmbedding"]()
        options = {"joyvasa_checkpoint": JOYVASA} if args.family == "joyvasa" else {}
        node.run({"waveform": audio["waveform"][..., :audio["sample_rate"]], "sample_rate": audio["sample_rate"]},
                 ENCODERS[args.family], **options)
        (emb,), result["embed"] = measure(lambda: node.run(audio, ENCODERS[args.family], **options))
        result["embed"]["features_mb"] = round(emb.features.numel() * 4 / MB, 3)
        if args.embeddings:
            from safetensors.torch import save_file

            state = emb.to_state()
            save_file({k: v.contiguous() for k, v in state.items() if isinstance(v, torch.Tensor)}, args.embeddings,
                      metadata={k: json.dumps(v) for k, v in state.items() if not isinstance(v, torch.Tensor)})
    if "motion" in stages:
        if emb is None:
            from safetensors import safe_open

            with safe_open(args.embeddings, "pt") as f:
                state = {k: json.loads(v) for k, v in f.metadata().items()}
                state.update({k: f.get_tensor(k).clone() for k in f.keys()})
            emb = AF.AudioEmbeddings.from_state(state)
        del audio  # MotionDiT never sees the audio
        (lps,) = nodes["TalkingHead_LoadLivePortrait"]().run("human", "fp32", device="cpu", auto_download=False)
        image = np.asarray(Image.open(ROOT / "example_inputs" / "portrait.png").convert("RGB"), dtype=np.float32)
        portrait = nodes["TalkingHead_LoadPortrait"]().run("", "center", 256, 1.8, -0.1,
                                                           image_in=torch.from_numpy(image / 255.0)[None])["result"][0]
        node = nodes["TalkingHead_MotionDiT"]()
        options = dict(liveportrait=lps, portrait=portrait, checkpoint=DITTO if args.family == "ditto" else JOYVASA,
                       steps=args.steps, guidance_scale=2.0, seed=0, pose_strength=1.0, expression_strength=1.0,
                       lip_strength=1.0, emotion="Neutral", auto_download=False)
        rows = 200  # two JoyVASA windows, three Ditto windows
        short = AF.AudioEmbeddings(features=emb.features[:rows].clone(), spec=emb.spec, fps=emb.fps,
                                   num_frames=min(emb.num_frames, rows - 50))
        node.run(embeddings=short, **options)
        del short
        (motion, _), result["motion"] = measure(lambda: node.run(embeddings=emb, **options))
        result["motion"]["frames"] = len(motion)
        result["motion"]["features_mb"] = round(emb.features.numel() * 4 / MB, 3)
    result["maxrss_mb"] = round(__import__("resource").getrusage(__import__("resource").RUSAGE_SELF).ru_maxrss / 1024,
                                2)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
