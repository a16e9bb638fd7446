#!/usr/bin/env bash
# vpipe's CUDA path on this machine's GPU: it has never run anywhere else (issue 18 item 4).
#
#   bash scripts/gpu_check.sh          (or: make gpu-check), from anywhere in the repository
#
# 1. prints the GPU (nvidia-smi -L, and what PyTorch sees);
# 2. runs pytest -q -rs tests/gpu (profile on CUDA; 2 stages on one GPU against one process;
#    tied parameters; NCCL where there are 2 GPUs);
# 3. profiles the bundled GPT on the GPU, plans 2 stages (1f1b), generates them, trains 30
#    steps, and prints vpipe-train --report: predicted vs measured time and memory per stage;
# 4. checks that every stage ran on cuda and logged a peak memory above 0.
#
# Exit status: 0 every step passed; 1 a step failed (named, with its log); 2 PyTorch sees no
# CUDA device (nothing was run). It downloads nothing (the GPU machine has no network): it uses
# the interpreter in $VPIPE_PYTHON, else .venv/bin/python (make dev / make install), else python3.
# Work files go to $VPIPE_GPU_CHECK_DIR, else a new folder under ${TMPDIR:-/tmp}; the path is
# printed first. All steps together get VPIPE_GPU_CHECK_BUDGET_S seconds (default 330); a step
# still running when they are spent is stopped and fails.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
REPO=$(pwd)
BUDGET_S=${VPIPE_GPU_CHECK_BUDGET_S:-330}
START=$(date +%s)

if [ -n "${VPIPE_PYTHON:-}" ]; then
    PY=$VPIPE_PYTHON
elif [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
else
    PY=python3
fi
PY=$(command -v "$PY" || echo "$PY")
if ! "$PY" -c "import torch, vpipe.runtime.cli" 2>/dev/null; then
    echo "gpu_check: $PY cannot import torch and vpipe; run make dev (or make install) first," \
        "or set VPIPE_PYTHON to an interpreter that has them" >&2
    exit 1
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    built=$("$PY" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda)")
    echo "gpu_check: no CUDA device: torch.cuda.is_available() is False (torch $built)." >&2
    echo "gpu_check: the GPU path has not been checked. Run this on a machine with an NVIDIA" \
        "GPU, its driver, and a CUDA build of PyTorch." >&2
    exit 2
fi

WORK=${VPIPE_GPU_CHECK_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/vpipe-gpu-check.XXXXXX")}
mkdir -p "$WORK" || exit 1
WORK=$(cd "$WORK" && pwd)
echo "gpu_check: work files in $WORK"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 # nothing here needs the network

# the console scripts beside the interpreter, else the same commands as modules (arrays, not
# functions: timeout runs programs)
BIN=$(dirname "$PY")
resolve() {
    if [ -x "$BIN/$1" ]; then CMD=("$BIN/$1"); else CMD=("$PY" -m "$2"); fi
}
resolve vpipe-profile vpipe.profiler.cli && PROFILE=("${CMD[@]}")
resolve vpipe-plan vpipe.planner.cli && PLAN=("${CMD[@]}")
resolve vpipe-gen vpipe.codegen.cli && GEN=("${CMD[@]}")
resolve vpipe-train vpipe.runtime.cli && TRAIN=("${CMD[@]}")

FAILED=""
# step NAME COMMAND...: run it within what is left of the budget, its output to the terminal
# and to $WORK/NAME.log; a failure is remembered and stops the steps that depend on it
step() {
    local name=$1 left
    shift
    left=$((BUDGET_S - ($(date +%s) - START)))
    echo
    echo "=== $name ($left s of the budget left): $*"
    if [ "$left" -le 5 ]; then
        echo "gpu_check: step $name: the budget of $BUDGET_S s is spent" >&2
        FAILED="$FAILED $name"
        return 1
    fi
    local began=$(date +%s) status
    timeout -k 10 "$left" "$@" 2>&1 | tee "$WORK/$name.log"
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        [ "$status" -eq 124 ] && echo "gpu_check: step $name ran out of time" >&2
        echo "gpu_check: step $name FAILED (exit $status); its log: $WORK/$name.log" >&2
        FAILED="$FAILED $name"
        return 1
    fi
    echo "=== $name passed in $(($(date +%s) - began)) s"
}

echo "=== the GPU"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi -L
else
    echo "(no nvidia-smi on PATH)"
fi
"$PY" - <<'EOF'
import torch

print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} GPU(s)")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
EOF

step pytest "$PY" -m pytest -q -rs -p no:cacheprovider --basetemp "$WORK/pytest" \
    "$REPO/tests/gpu"

# the pipeline: GPT, 2 stages, 1f1b with M = 4, on the GPU (both stages share it where there
# is one GPU: gloo, messages through host memory; NCCL where there are two)
OUT=$WORK/gpt
mkdir -p "$OUT"
step profile "${PROFILE[@]}" vpipe.models.gpt --device cuda --batch-size 8 \
    -o "$OUT/profile.yaml" &&
    step plan "${PLAN[@]}" "$OUT/profile.yaml" --gpus 2 --stages 2 --schedule 1f1b \
        --microbatches 4 \
        -o "$OUT/plan.yaml" &&
    step gen "${GEN[@]}" "$OUT/plan.yaml" -o "$OUT/out" &&
    step train "${TRAIN[@]}" "$OUT/out/pipeline.yaml" --steps 30 --print-every 10 \
        --timeout-s 120 &&
    step report "${TRAIN[@]}" "$OUT/out/pipeline.yaml" --report &&
    step stages "$PY" - "$OUT/out" <<'EOF'
import sys
from pathlib import Path

from vpipe.codegen.schema import load_pipeline
from vpipe.runtime.stagelog import load_stage_log

out = Path(sys.argv[1])
bad = []
for k in range(len(load_pipeline(out / "pipeline.yaml").stages)):
    log = load_stage_log(out / "run" / f"stage_{k}.yaml")
    peak = log.peak_memory_bytes
    shown = "none" if peak is None else f"{peak / 2**20:.2f} MiB"
    print(f"stage {k}: device {log.device}, peak memory {shown}, {log.seconds:.2f} s")
    if log.device != "cuda" or not peak:
        bad.append(k)
if bad:
    sys.exit(f"stages {bad} did not run on cuda or logged no peak memory")
EOF

echo
echo "gpu_check: work files in $WORK; took $(($(date +%s) - START)) s"
if [ -n "$FAILED" ]; then
    echo "gpu_check: FAILED:$FAILED" >&2
    exit 1
fi
echo "gpu_check: passed: the CUDA path ran (report: $OUT/out/run/report.md)"
