"""Audio-to-motion speed and memory (Ditto: HuBERT-large + LMDM; JoyVASA) with full-size random weights.

    python bench/bench_motion.py [--device cpu|cuda] [--precision fp32|fp16|bf16] [--repeats 2]
                                 [--clip 10] [--online-seconds 2] [--json out.json]

Measures, with the released sizes and random weights (speed does not depend on their values;
nothing is downloaded):

1. audio features: seconds of compute per second of audio for Ditto's offline HuBERT-large
   chunking (6480-sample chunks, one every 5 video frames) with 1 and 16 chunks per encoder call,
   and for JoyVASA's audio encoder (HuBERT-base + map) on one 4 s window;
2. one window's sampling: Ditto 80 frames at 10 and 50 DDIM steps (CFG = 2 batch-1 forwards per
   step, and with ``batch_cfg`` = one batch of 2), JoyVASA one 100-frame window (50 DDPM steps,
   CFG batch of 2); also JoyVASA features + sampling of one window (the official ``sample()``);
3. end to end on a ``--clip`` second clip (10 s): compute seconds / audio seconds for Ditto offline
   (``compute_embeddings`` + ``generate``, 50 and 10 steps) and JoyVASA (``audio_features`` +
   ``generate_normalized``); plus Ditto online (``DittoOnlineFeatures`` + ``OnlineGenerator``,
   10 steps, audio pushed in 0.2 s pieces) on ``--online-seconds`` of audio;
4. peak RSS (after each stage and at the end; peak CUDA memory on a GPU).

Timings are the best of ``--repeats`` clean runs (wall; the process CPU time of that run is reported
as well: about ``threads`` x wall when the machine is quiet), after a warm-up, with a device
synchronisation before and after each run. End-to-end runs are done ``--e2e-repeats`` times without
a separate warm-up (the models were exercised by the earlier stages). A run is *clean* when other
processes used at most ``--max-foreign`` (5 %) of the machine's CPU during it (Linux ``/proc/stat``;
the reference discarded runs the same way); up to ``--extra-tries`` more runs are made to get clean
ones, and every timing records ``foreign_cpu_fraction`` / ``clean``. On 2 cores with 2 torch threads
any foreign load slows the OpenMP pool far more than its share, hence ``--wait-idle`` (default: wait
up to 120 s for 3 quiet seconds before starting).

``vs_official_same_run`` holds ratios to the official computation timed in the same run: JoyVASA's window
through the stock ``nn.TransformerDecoder`` with the alignment mask in every step (the official decoder; the
sampler here computes the width-1 cross-attention once per window, ``DenoisingNetwork.cross_attention``).

``vs_official`` holds ``official_s / ours_s`` (> 1 = we are faster) for the quantities that the
reference measurements (``shared/reference/{ditto,joyvasa}/bench.json``, medians, torch 2.13 CPU,
2 threads, fp32) contain; ``vs_official_derived`` compares with end-to-end figures *derived* from
those component medians (the official code was not timed end to end).

Precision: ``fp32`` (default); ``fp16``/``bf16`` cast HuBERT-large and LMDM to that dtype (as the
pipeline's model cache and ``load_lmdm(dtype=...)`` do; LMDM's schedule stays float32) and run
JoyVASA under autocast.
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch

from common import ROOT, peak_rss_mb, report  # noqa: E402  (also puts the repo root on sys.path)
from core.audio_features import HubertEncoder, compute_embeddings, ditto_offline_features  # noqa: E402
from core.audio_features.ditto import DittoOnlineFeatures, offline_chunk_starts  # noqa: E402
from core.device import autocast, resolve_dtype  # noqa: E402
from core.motion import ditto, joyvasa  # noqa: E402
from core.motion.ditto.model import RELEASED as LMDM_RELEASED  # noqa: E402
from core.motion.ditto.sampler import guided_denoiser as ditto_denoiser, make_schedule  # noqa: E402
from core.motion.ditto.sampler import sample as ditto_sample  # noqa: E402
from core.audio_features.joyvasa import window as audio_window, plan_windows  # noqa: E402
from core.motion.joyvasa.sampler import cpu_noise, guided_denoiser as joyvasa_denoiser  # noqa: E402
from core.motion.joyvasa.sampler import make_schedule as joyvasa_schedule, sample as joyvasa_sample  # noqa: E402

SR = 16000

#: facebook/hubert-large-ls960-ft's architecture (its config.json) as HubertConfig arguments
HUBERT_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                    hidden_act="gelu", layer_norm_eps=1e-5, conv_dim=[512] * 7, conv_stride=[5, 2, 2, 2, 2, 2, 2],
                    conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_bias=True, num_feat_extract_layers=7,
                    num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, do_stable_layer_norm=True,
                    feat_extract_norm="layer", feat_extract_activation="gelu", vocab_size=32)

#: the reference medians (wall s) used when shared/reference is not at hand (same values as its bench.json)
OFFICIAL_FALLBACK = {
    "ditto": {"lmdm_window80_steps10_s": 1.3430043530001967, "lmdm_window80_steps50_s": 6.922172086000046,
              "hubert_large_chunk6480_s": 0.28641741000001275,
              "hubert_large_streaming_per_audio_second_s": 1.4320870500000638, "hubert_large_params": 315438720},
    "joyvasa": {"audio_encoder_window4s_s": 0.42743178399996395, "denoise_window100_steps50_cfg_s": 2.272032262999801,
                "sample_window100_total_s": 2.661133823, "audio_features_per_audio_second_s": 0.10685794599999099},
}


# --------------------------------------------------------------------------- timing
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def busy_cpu_s():
    """Seconds of CPU time used by all processes on the machine so far (Linux /proc/stat), or None."""
    try:
        with open("/proc/stat") as fh:
            v = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    busy = v[0] + v[1] + v[2] + sum(v[5:8])  # user nice system | irq softirq steal (idle, iowait excluded)
    return busy / os.sysconf("SC_CLK_TCK")


#: timing policy (set from the command line): a run during which other processes used more than
#: MAX_FOREIGN of the machine's CPU is not clean; up to EXTRA_TRIES more runs are made to get clean ones
POLICY = {"max_foreign": 0.05, "extra_tries": 2}
FOREIGN = []  # (clean, foreign_cpu_fraction) of every kept timing


def timed(fn, device, repeats, warmup=None):
    """Best wall time of ``repeats`` clean runs of ``fn`` (after ``warmup()``, default ``fn()``, unless
    False) -> ``{"s": wall, "cpu_s": process CPU of that run, "foreign_cpu_fraction": CPU used by other
    processes during it / (wall x cores) (Linux), "runs", "clean_runs", "clean", "ret": what fn returned}``.

    Runs with a foreign fraction above ``POLICY["max_foreign"]`` are not clean; up to
    ``POLICY["extra_tries"]`` extra runs are made to collect ``repeats`` clean ones. The best clean
    run is kept (the best run when none is clean, then ``clean`` is False)."""
    if warmup is not False:
        (warmup or fn)()
    repeats = max(int(repeats), 1)
    runs = []
    for _ in range(repeats + max(int(POLICY["extra_tries"]), 0)):
        sync(device)
        t, c, b = time.perf_counter(), time.process_time(), busy_cpu_s()
        ret = fn()
        sync(device)
        w, cpu, b1 = time.perf_counter() - t, time.process_time() - c, busy_cpu_s()
        r = {"s": w, "cpu_s": cpu, "ret": ret}
        if b is not None and b1 is not None:
            r["foreign_cpu_fraction"] = max(0.0, (b1 - b - cpu) / (w * (os.cpu_count() or 1)))
        r["clean"] = r.get("foreign_cpu_fraction", 0.0) <= POLICY["max_foreign"]
        runs.append(r)
        if sum(x["clean"] for x in runs) >= repeats:
            break
    clean = [x for x in runs if x["clean"]]
    best = dict(min(clean or runs, key=lambda x: x["s"]))
    FOREIGN.append((best["clean"], best.get("foreign_cpu_fraction")))
    out = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in best.items()}
    out.update(runs=len(runs), clean_runs=len(clean))
    return out


def wait_idle(limit_s, quiet_s=3.0, max_foreign=0.05):
    """Wait (at most ``limit_s``) until other processes used <= ``max_foreign`` of the CPU for
    ``quiet_s`` seconds in a row -> (seconds waited, whether it got quiet)."""
    t0 = time.perf_counter()
    quiet = 0.0
    while time.perf_counter() - t0 < limit_s:
        b, c, t = busy_cpu_s(), time.process_time(), time.perf_counter()
        if b is None:
            return 0.0, None
        time.sleep(1.0)
        dt = time.perf_counter() - t
        foreign = (busy_cpu_s() - b - (time.process_time() - c)) / (dt * (os.cpu_count() or 1))
        quiet = quiet + dt if foreign <= max_foreign else 0.0
        if quiet >= quiet_s:
            return round(time.perf_counter() - t0, 1), True
    return round(time.perf_counter() - t0, 1), False


def public(r):
    """A timing without the function's return value."""
    return {k: v for k, v in r.items() if k != "ret"}


def official_figures(path=None):
    """{"ditto": {...}, "joyvasa": {...}} medians from the reference bench.json files (or the fallback)."""
    roots = [Path(path)] if path else [ROOT / "shared" / "reference", ROOT.parent / "shared" / "reference"]
    out, source = {}, {}
    for fam in ("ditto", "joyvasa"):
        out[fam], source[fam] = dict(OFFICIAL_FALLBACK[fam]), "built-in copy"
        for root in roots:
            f = root / fam / "bench.json"
            if f.is_file():
                data = json.loads(f.read_text())
                for k, v in data.items():
                    out[fam][k] = v["median"] if isinstance(v, dict) and "median" in v else v
                source[fam] = str(f)
                break
    return out, source


# --------------------------------------------------------------------------- models (random, full size)
def n_params(module):
    return sum(p.numel() for p in module.parameters())


def random_hubert_large(device, dtype):
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    model = HubertModel(HubertConfig(**HUBERT_LARGE)).eval().requires_grad_(False)
    return model.to(device=device, dtype=dtype)


def random_lmdm(device, dtype):
    torch.manual_seed(0)
    model = ditto.LMDM(**LMDM_RELEASED)
    model = model.to(device=device, dtype=dtype)
    model.alphas_cumprod = model.alphas_cumprod.float()   # as load_lmdm: the schedule stays float32
    model.rotary.freqs = model.rotary.freqs.float()
    return model.requires_grad_(False).eval()


def random_joyvasa(device):
    torch.manual_seed(0)
    model = joyvasa.JoyVASA(init=True)  # released sizes (chinese-hubert-base + 8-layer d=256 denoiser)
    return model.requires_grad_(False).eval().to(device)


def ditto_conditions():
    g = torch.Generator().manual_seed(1)
    cond = ditto.Conditions(emo=ditto.NEUTRAL, eye_open=[0.8, 0.8], eye_ball=[0.0] * 6,
                            sc=0.1 * torch.randn(63, generator=g))
    return cond, 0.1 * torch.randn(LMDM_RELEASED["motion_dim"], generator=g)


def speech_like(seconds, seed=0):
    """Deterministic non-silent 16 kHz audio (values do not affect speed)."""
    g = torch.Generator().manual_seed(seed)
    return 0.1 * torch.randn(int(round(seconds * SR)), generator=g)


# --------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", help="fp32, fp16 or bf16")
    ap.add_argument("--repeats", type=int, default=2, help="clean runs per component timing (best is kept)")
    ap.add_argument("--e2e-repeats", type=int, default=1, help="clean runs per end-to-end timing (best is kept)")
    ap.add_argument("--max-foreign", type=float, default=0.05,
                    help="a run is clean when other processes used at most this fraction of the CPU")
    ap.add_argument("--extra-tries", type=int, default=2, help="extra runs allowed per timing to get clean ones")
    ap.add_argument("--wait-idle", type=float, default=120.0,
                    help="before measuring, wait up to this many seconds for 3 s without foreign CPU load")
    ap.add_argument("--clip", type=float, default=10.0, help="seconds of audio for the end-to-end runs")
    ap.add_argument("--online-seconds", type=float, default=2.0,
                    help="seconds of audio for the Ditto online (streaming) run; 0 skips it")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--reference", default=None, help="folder holding ditto/bench.json and joyvasa/bench.json")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    POLICY.update(max_foreign=a.max_foreign, extra_tries=a.extra_tries)
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    dtype = resolve_dtype(a.precision, device)
    t_start = time.perf_counter()
    import transformers

    res = {"torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
           "cpu_count": os.cpu_count(), "device": a.device, "precision": a.precision, "repeats": a.repeats,
           "e2e_repeats": a.e2e_repeats, "max_foreign": a.max_foreign, "extra_tries": a.extra_tries}
    if a.wait_idle > 0:
        res["waited_for_idle_s"], res["idle_at_start"] = wait_idle(a.wait_idle, max_foreign=a.max_foreign)
    if hasattr(os, "getloadavg"):
        res["load_avg_1min"] = round(os.getloadavg()[0], 2)
        res["load_avg_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss = {}

    # ---------------------------------------------------------------- models
    t = time.perf_counter()
    hubert = random_hubert_large(device, dtype)
    enc = HubertEncoder(hubert)
    lmdm = random_lmdm(device, dtype)
    jv = random_joyvasa(device)
    res["build_models_s"] = round(time.perf_counter() - t, 1)
    res["params"] = {"hubert_large": n_params(hubert), "lmdm": n_params(lmdm),
                     "joyvasa_total": n_params(jv), "joyvasa_audio_encoder": n_params(jv.audio_encoder)}
    res["hubert_attn_implementation"] = getattr(hubert.config, "_attn_implementation", None)
    rss["models_built"] = round(peak_rss_mb(), 1)
    jv_ctx = lambda: autocast(device, dtype)  # noqa: E731  (JoyVASA runs in fp32 weights + autocast)

    # ---------------------------------------------------------------- 1. audio features
    feats = res["audio_features"] = {}
    n_chunks = 16
    audio = speech_like(n_chunks * 0.2)                     # 3.2 s -> 80 video frames -> 16 chunks
    assert len(offline_chunk_starts(audio.numel())) == n_chunks
    warm_chunk = torch.zeros(1, 6480)
    sec = audio.numel() / SR
    for b in (1, 16):
        r = public(timed(lambda: ditto_offline_features(audio, enc, batch_size=b), device, a.repeats,
                         warmup=lambda: enc(warm_chunk.expand(b, -1))))
        feats[f"ditto_hubert_large_offline_batch{b}"] = {
            "audio_s": sec, "chunks": n_chunks, **r, "s_per_chunk": round(r["s"] / n_chunks, 4),
            "s_per_audio_s": round(r["s"] / sec, 4)}
    win = audio_window(speech_like(4.0), plan_windows(64000), 0)  # one (1, 64000) window
    with torch.inference_mode(), jv_ctx():
        r = public(timed(lambda: jv.encode_audio(win), device, a.repeats))
    feats["joyvasa_audio_encoder_window4s"] = {**r, "s_per_audio_s": round(r["s"] / 4.0, 4)}
    rss["audio_features"] = round(peak_rss_mb(), 1)

    # ---------------------------------------------------------------- 2. one window
    wins = res["window"] = {}
    g = torch.Generator().manual_seed(0)
    L, D = LMDM_RELEASED["seq_frames"], LMDM_RELEASED["motion_dim"]
    cond, src_vec = ditto_conditions()
    cond_win = cond(torch.randn(L, 1024, generator=g), 0)[None]
    x_T = torch.randn(1, L, D, generator=g)
    step_noise = torch.randn(49, 1, L, D, generator=g)

    x_T_dev = x_T.to(device)

    def ditto_window(steps):
        sched = make_schedule(lmdm.alphas_cumprod, steps)
        return lambda: ditto_sample(ditto_denoiser(lmdm, src_vec[None], cond_win, guidance=2.0), x_T_dev, sched,
                                    step_noise)

    for batch_cfg in (False, True):
        lmdm.batch_cfg = batch_cfg
        tag = "_batch_cfg" if batch_cfg else ""
        warm = ditto_window(2)
        for steps in (10, 50):
            r = public(timed(ditto_window(steps), device, a.repeats, warmup=warm))
            wins[f"ditto_80f_{steps}_steps{tag}"] = {**r, "forwards": 2 * steps,
                                                     "s_per_step": round(r["s"] / steps, 4)}
            warm = False
    lmdm.batch_cfg = False

    Lj, m, d = jv.n_motions, jv.config["motion_feat_dim"], jv.config["feature_dim"]
    jfeat = torch.randn(1, Lj, d, generator=g).to(device)
    jx_T = torch.randn(1, Lj, m, generator=g)
    jnoise = cpu_noise(torch.Generator().manual_seed(0), (1, Lj, m))
    jsched = joyvasa_schedule(jv.diffusion_sched)
    jx_T = jx_T.to(device)

    def joyvasa_window(feat_fn):  # the window's z drawn on the CPU inside the timing, as the stream does
        def run():
            feat = feat_fn()
            z = torch.stack([jnoise(t) for t in jsched.timesteps[:-1]])
            return joyvasa_sample(joyvasa_denoiser(jv, feat, cfg_scale=2.8), jx_T.to(feat.dtype), jsched, z)
        return run

    with torch.inference_mode(), jv_ctx():
        r = public(timed(joyvasa_window(lambda: jfeat), device, a.repeats))
        wins["joyvasa_100f_50_steps_cfg_batch2"] = {**r, "forwards": jv.diffusion_sched.num_steps}
        # the same window through the stock nn.TransformerDecoder with the alignment mask in every step (the
        # official computation; the sampler normally computes the cross-attention once per window)
        jv.denoising_net.cross_attention = lambda memory: None
        try:
            r = public(timed(joyvasa_window(lambda: jfeat), device, a.repeats))
        finally:
            del jv.denoising_net.cross_attention
        wins["joyvasa_100f_50_steps_cfg_batch2_stock_decoder"] = {**r, "forwards": jv.diffusion_sched.num_steps}
        r = public(timed(joyvasa_window(lambda: jv.encode_audio(win)), device, a.repeats, warmup=False))
        wins["joyvasa_window_features_plus_sampling"] = r
    rss["window"] = round(peak_rss_mb(), 1)

    # ---------------------------------------------------------------- 3. end to end
    e2e = res[f"end_to_end_{a.clip:g}s"] = {}
    clip = speech_like(a.clip, seed=1)
    sec = clip.numel() / SR

    def e2e_entry(r, audio_s):
        info = r["ret"]
        return {"audio_s": audio_s, **{k: info[k] for k in ("frames", "windows")},
                "features_s": round(info["features_s"], 3),
                **({"generate_s": round(info["generate_s"], 3)} if "generate_s" in info else {}),
                "total_s": r["s"], "rtf": round(r["s"] / audio_s, 3),
                **{k: r[k] for k in ("cpu_s", "foreign_cpu_fraction", "clean", "runs", "clean_runs") if k in r}}

    def ditto_e2e(steps):
        def run():
            sync(device)
            t0 = time.perf_counter()
            emb = compute_embeddings(clip, encoder=enc, chunking="ditto-offline")
            sync(device)
            t1 = time.perf_counter()
            seq = ditto.generate(lmdm, emb.aligned(), cond, src_vec, steps=steps, guidance=2.0, seed=0)
            sync(device)
            return dict(features_s=t1 - t0, generate_s=time.perf_counter() - t1, frames=int(seq.shape[0]),
                        windows=ditto.num_windows(emb.num_frames))
        return run

    for steps in (50, 10):
        e2e[f"ditto_offline_{steps}_steps"] = e2e_entry(timed(ditto_e2e(steps), device, a.e2e_repeats,
                                                              warmup=False), sec)

    def joyvasa_e2e():
        with torch.inference_mode(), jv_ctx():
            sync(device)
            t0 = time.perf_counter()
            fe, n_pad = joyvasa.audio_features(jv, clip)
            sync(device)
            t1 = time.perf_counter()
            out = joyvasa.generate_normalized(jv, (fe, n_pad), cfg_scale=2.8,
                                              generator=torch.Generator().manual_seed(0))
            sync(device)
            return dict(features_s=t1 - t0, generate_s=time.perf_counter() - t1,
                        frames=int(out["motion"].shape[0]), windows=int(fe.shape[0]) // Lj)

    e2e["joyvasa"] = e2e_entry(timed(joyvasa_e2e, device, a.e2e_repeats, warmup=False), sec)
    rss["end_to_end"] = round(peak_rss_mb(), 1)

    if a.online_seconds > 0:
        stream_audio = speech_like(a.online_seconds, seed=2)
        piece = 3200

        def online():
            feats_s = 0.0
            of = DittoOnlineFeatures(enc)
            gen = ditto.OnlineGenerator(lmdm, cond, src_vec, steps=10, seed=0,
                                        init_features=torch.zeros(70, 1024))  # zeros: same cost as HuBERT silence
            blocks = []
            pieces = [stream_audio[i:i + piece] for i in range(0, stream_audio.numel(), piece)]
            for x in pieces + [None]:                   # None = end of the stream
                t0 = time.perf_counter()
                rows = of.flush() if x is None else of.push(x)
                sync(device)
                feats_s += time.perf_counter() - t0
                if rows.numel():
                    blocks += gen.push(rows)
            blocks += gen.flush(trim=True)
            return dict(features_s=feats_s, frames=sum(int(b.shape[0]) for b in blocks), windows=gen._win.clip_idx)

        entry = e2e_entry(timed(online, device, a.e2e_repeats, warmup=False), stream_audio.numel() / SR)
        entry["note"] = ("DittoOnlineFeatures + OnlineGenerator (10 steps, overlap 70), audio pushed in 0.2 s "
                         "pieces; silence buffer = zeros (computed once per stream, not timed); includes the "
                         "anchor window and the flush")
        res["ditto_online_10_steps"] = entry
        rss["ditto_online"] = round(peak_rss_mb(), 1)

    # ---------------------------------------------------------------- 4. memory, comparisons
    res["peak_rss_mb"] = round(peak_rss_mb(), 1)
    res["peak_rss_mb_after"] = rss
    if device.type == "cuda":
        res["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)

    off, source = official_figures(a.reference)
    od, oj = off["ditto"], off["joyvasa"]
    fr = res["audio_features"]
    hub_per_s = od.get("hubert_large_streaming_per_audio_second_s", od["hubert_large_chunk6480_s"] * 5)
    vs = {
        "ditto_hubert_offline_batch1_per_audio_s_vs_official":
            hub_per_s / fr["ditto_hubert_large_offline_batch1"]["s_per_audio_s"],
        "ditto_hubert_offline_batch16_per_audio_s_vs_official_batch1":
            hub_per_s / fr["ditto_hubert_large_offline_batch16"]["s_per_audio_s"],
        "joyvasa_audio_encoder_window4s_vs_official":
            oj["audio_encoder_window4s_s"] / fr["joyvasa_audio_encoder_window4s"]["s"],
        "ditto_window_10_steps_vs_official": od["lmdm_window80_steps10_s"] / wins["ditto_80f_10_steps"]["s"],
        "ditto_window_50_steps_vs_official": od["lmdm_window80_steps50_s"] / wins["ditto_80f_50_steps"]["s"],
        "ditto_window_10_steps_batch_cfg_vs_official":
            od["lmdm_window80_steps10_s"] / wins["ditto_80f_10_steps_batch_cfg"]["s"],
        "ditto_window_50_steps_batch_cfg_vs_official":
            od["lmdm_window80_steps50_s"] / wins["ditto_80f_50_steps_batch_cfg"]["s"],
        "joyvasa_window_50_steps_vs_official":
            oj["denoise_window100_steps50_cfg_s"] / wins["joyvasa_100f_50_steps_cfg_batch2"]["s"],
        "joyvasa_window_features_plus_sampling_vs_official":
            oj["sample_window100_total_s"] / wins["joyvasa_window_features_plus_sampling"]["s"],
    }
    res["vs_official"] = {k: round(v, 3) for k, v in vs.items()}
    # measured in this run: the official decoder computation (stock nn.TransformerDecoder, masked
    # cross-attention in every step) over ours
    res["vs_official_same_run"] = {"joyvasa_window_50_steps_vs_stock_decoder": round(
        wins["joyvasa_100f_50_steps_cfg_batch2_stock_decoder"]["s"] / wins["joyvasa_100f_50_steps_cfg_batch2"]["s"], 3)}

    # end-to-end figures derived from the official component medians (same clip, same window counts)
    derived = {}
    n_chunks_clip = len(offline_chunk_starts(clip.numel()))
    for steps in (50, 10):
        e = e2e[f"ditto_offline_{steps}_steps"]
        est = n_chunks_clip * od["hubert_large_chunk6480_s"] + e["windows"] * od[f"lmdm_window80_steps{steps}_s"]
        derived[f"ditto_offline_{steps}_steps"] = {"official_est_total_s": round(est, 3),
                                                   "official_est_rtf": round(est / sec, 3),
                                                   "ratio": round(est / e["total_s"], 3)}
    e = e2e["joyvasa"]
    est = e["windows"] * oj["sample_window100_total_s"]
    derived["joyvasa"] = {"official_est_total_s": round(est, 3), "official_est_rtf": round(est / sec, 3),
                          "ratio": round(est / e["total_s"], 3)}
    if "ditto_online_10_steps" in res:
        o = res["ditto_online_10_steps"]
        est = o["audio_s"] * hub_per_s + o["windows"] * od["lmdm_window80_steps10_s"]
        derived["ditto_online_10_steps"] = {"official_est_total_s": round(est, 3),
                                            "official_est_rtf": round(est / o["audio_s"], 3),
                                            "ratio": round(est / o["total_s"], 3)}
    res["vs_official_derived"] = derived
    res["official"] = {
        "source": source,
        "ditto_hubert_large_per_audio_s": hub_per_s,
        "ditto_hubert_large_chunk6480_s": od["hubert_large_chunk6480_s"],
        "ditto_window_10_steps_s": od["lmdm_window80_steps10_s"],
        "ditto_window_50_steps_s": od["lmdm_window80_steps50_s"],
        "joyvasa_audio_encoder_window4s_s": oj["audio_encoder_window4s_s"],
        "joyvasa_window_50_steps_s": oj["denoise_window100_steps50_cfg_s"],
        "joyvasa_window_features_plus_sampling_s": oj["sample_window100_total_s"],
        "hubert_large_params": od.get("hubert_large_params"),
    }
    res["notes"] = [
        "ratios = official_s / ours_s (> 1: ours faster); official = median wall of the reference code "
        "(torch 2.13 CPU, 2 threads, fp32, random full-size weights, runs with >= 5 % foreign CPU discarded); "
        "ours = best clean run",
        "Ditto official HuBERT figure: one 6480-sample chunk per call (Ditto's ONNX runs chunks one at a time), "
        "5 chunks per audio second",
        "vs_official_derived: official end-to-end estimated as chunks x chunk time + windows x window time "
        "(Ditto) or windows x sample() time (JoyVASA); the official code was not timed end to end",
        "rtf = compute seconds / audio seconds (< 1 = faster than real time)",
        "foreign_cpu_fraction: CPU used by other processes during the kept run / (wall x cores); on 2 cores with "
        "2 torch threads, any foreign load slows the OpenMP thread pool far more than its share",
    ]
    res["all_clean"] = all(c for c, _ in FOREIGN)
    fractions = [f for _, f in FOREIGN if f is not None]
    if fractions:
        res["max_foreign_cpu_fraction"] = round(max(fractions), 3)
    if hasattr(os, "getloadavg"):
        res["load_avg_end"] = [round(v, 2) for v in os.getloadavg()]
    res["bench_wall_s"] = round(time.perf_counter() - t_start, 1)
    report(res, a.json)

if __name__ == "__main__":
    main()
