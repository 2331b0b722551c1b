#!/usr/bin/env bash
# The prepared GPU check (issues 15, 16): numerics on the GPU against the CPU, then the render, FOM, SDA,
# motion and live-mode benchmarks on the GPU at batch 1/4/8 in fp32/fp16/bf16, merged into ONE JSON named after the card.
# Meant to finish well under 5 minutes on an H100/H200; run it from the repository root:
#
#     bash bench/gpu_check.sh [OUT_DIR]        (default bench/gpu_out; the merged file: OUT_DIR/gpu_check.json)
#
# Each step runs under its own time limit and a failed step is recorded in the JSON, not fatal, so one
# short session on a lent GPU always brings back what did run. Needs no weights (random or seeded ones).
set -u
PY=${PYTHON:-python}
OUT=${1:-bench/gpu_out}
mkdir -p "$OUT"
STEP_LIMIT=${STEP_LIMIT:-90}
status="$OUT/steps.txt"
: > "$status"

step() {  # step NAME COMMAND...
    local name=$1; shift
    local t0=$SECONDS
    if timeout "$STEP_LIMIT" "$@" > "$OUT/$name.log" 2>&1; then
        echo "$name ok $((SECONDS - t0))" >> "$status"
    else
        echo "$name failed($?) $((SECONDS - t0))" >> "$status"
    fi
}

$PY -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())" \
    > "$OUT/device.txt" 2>&1
step numerics $PY bench/gpu_numerics.py --device cuda --json "$OUT/numerics.json"
for p in fp32 fp16 bf16; do
    step "liveportrait_$p" $PY bench/bench_liveportrait.py --device cuda --precision "$p" --batches 1,4,8 \
        --repeats 5 --json "$OUT/liveportrait_$p.json"
done
for p in fp32 fp16; do
    step "fom_$p" $PY bench/bench_fom.py --device cuda --precision "$p" --frames 32 --json "$OUT/fom_$p.json"
done
step sda $PY bench/bench_sda.py --device cuda --durations 2,10,60 --json "$OUT/sda.json"
step motion $PY bench/bench_motion.py --device cuda --precision fp16 --wait-idle 0 --json "$OUT/motion.json"
# live mode (issue 16): first frame, speech-to-frame latency, frame rate and sync at 512 px with paste-back
step live $PY bench/live_latency.py --weights full --device cuda --seconds 6 --idle 2 --json "$OUT/live.json"

$PY - "$OUT" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
merged = {"device": (out / "device.txt").read_text().strip(), "steps": {}}
for line in (out / "steps.txt").read_text().splitlines():
    name, state, secs = line.split()
    merged["steps"][name] = {"status": state, "seconds": int(secs)}
    f = out / f"{name}.json"
    if f.exists():
        merged[name] = json.loads(f.read_text())
    elif state != "ok":
        merged[name] = {"log_tail": (out / f"{name}.log").read_text()[-2000:]}
(out / "gpu_check.json").write_text(json.dumps(merged, indent=1) + "\n")
print(json.dumps(merged["steps"], indent=1))
EOF
