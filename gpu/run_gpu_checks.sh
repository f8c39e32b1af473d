#!/usr/bin/env bash
# One call on the lent GPU machine: versions, the gpu-marked tests, and the GPU benchmarks.
#
#   run(command="bash gpu/run_gpu_checks.sh", carry=[".whl"], kind="nvidia-h200", timeout_s=540)
#
# Every step runs under its own `timeout`, capped so that the whole script ends by DEADLINE_S (450 s)
# even if every step hangs; a step that would get under 15 s is skipped. All output goes to
# $OUT/run.log (step by step, with headers); the benchmarks also write JSON to $OUT; $OUT/summary.txt
# (printed at the end) gives each step's status, time and key result lines. Files in $OUT: run.log,
# summary.txt, env.json, mivolo_infer.json, mllm_7b.json, mllm_qwen_7b.json, finetune_7b.json, mllm_34b.json (8 of
# the 8 allowed).
#
# GPU_CHECKS_DRY_RUN=1 runs the same command lines on a CPU with toy overrides appended (argparse keeps the
# last value), so every option is parsed and every code path is exercised before GPU time is spent:
#   GPU_CHECKS_DRY_RUN=1 PY=.venv/bin/python OUT=/tmp/gpu_dry bash gpu/run_gpu_checks.sh
set -u

cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/gpu_checks_out}
mkdir -p "$OUT"
PY=${PY:-python3}
DRY=${GPU_CHECKS_DRY_RUN:-0}
DEADLINE_S=${GPU_CHECKS_DEADLINE_S:-450}
LOG=$OUT/run.log
SUMMARY=$OUT/summary.txt
START=$(date +%s)
: >"$LOG"
: >"$SUMMARY"

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf_home MPLBACKEND=Agg
export TOKENIZERS_PARALLELISM=false PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$PWD/src

say() { echo "[$(($(date +%s) - START))s] $*" | tee -a "$LOG"; }

# step NAME BUDGET_S PATTERN CMD...: run CMD under timeout min(BUDGET_S, time left before the deadline);
# log its output; record status, seconds and the output lines matching PATTERN (grep -E) in the summary.
step() {
    local name=$1 budget=$2 pattern=$3
    shift 3
    local left=$((DEADLINE_S - ($(date +%s) - START)))
    local t=$((budget < left ? budget : left))
    if ((t < 15)); then
        say "$name: SKIPPED (only ${left}s left before the ${DEADLINE_S}s deadline)"
        echo "## $name: SKIPPED (no time left)" >>"$SUMMARY"
        return
    fi
    say "$name: start (timeout ${t}s)"
    echo "===== $name: $*" >>"$LOG"
    local first=$(($(wc -l <"$LOG") + 1))
    local t0
    t0=$(date +%s)
    timeout -k 5 "$t" "$@" >>"$LOG" 2>&1
    local rc=$?
    local secs=$(($(date +%s) - t0))
    local status="ok"
    if ((rc == 124 || rc == 137)); then
        status="TIMEOUT after ${t}s"
    elif ((rc != 0)); then
        status="FAILED rc=$rc"
    fi
    say "$name: $status in ${secs}s"
    {
        echo "## $name: $status in ${secs}s"
        tail -n +"$first" "$LOG" | grep -E "$pattern" | cut -c1-300 | head -40
        if [[ $status != ok ]]; then
            echo "   last lines:"
            tail -n +"$first" "$LOG" | tail -n 6 | cut -c1-300 | sed 's/^/   | /'
        fi
    } >>"$SUMMARY"
}

# In a dry run the toy overrides below are appended to each benchmark's real command line.
toy() { if [[ $DRY == 1 ]]; then echo "$@"; fi; }

say "start: $(date -u +%FT%TZ), dry run: $DRY, deadline ${DEADLINE_S}s, python: $(command -v "$PY")"

# ---- 0. carried wheels (same transformers/timm/peft as CI); fall back to the machine's own if they fail
if [[ $DRY == 1 ]]; then
    say "dry run: wheels not installed (cp312 wheels); using this interpreter's libraries"
elif compgen -G ".whl/*.whl" >/dev/null; then
    if timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >>"$LOG" 2>&1; then
        export PYTHONPATH=/tmp/site:$PWD/src
        say "installed $(ls .whl | tr '\n' ' ')into /tmp/site"
    else
        say "WARNING: wheel install failed; using the machine's own libraries"
    fi
else
    say "WARNING: no .whl/ (carry=[\".whl\"] missing?); using the machine's own libraries"
fi
IMPORTS="import torch, transformers, timm, peft, agegender.mivolo.model, agegender.mllm.backends.transformers_backend"
if ! timeout 60 "$PY" -c "$IMPORTS" >>"$LOG" 2>&1; then
    say "WARNING: imports failed with PYTHONPATH=$PYTHONPATH (see log); falling back to the machine's libraries"
    export PYTHONPATH=$PWD/src
    echo "## FALLBACK: carried wheels unusable, ran with the machine's own transformers/timm/peft" >>"$SUMMARY"
fi

# ---- 1. machine and library versions
step env 60 "^(GPU|torch|transformers|timm|peft|accelerate|huggingface_hub|tokenizers|python|cuda|NVIDIA)" \
    bash -c 'nvidia-smi || echo "nvidia-smi: not available"; "$0" gpu/env_report.py "$1"' "$PY" "$OUT/env.json"

# ---- 2. tests: the gpu-marked ones (every module that holds one), then the CPU tests of two modules
GPU_MODULES=$(grep -l "mark.gpu" tests/unit/test_*.py | tr '\n' ' ')
say "modules with gpu tests: $GPU_MODULES"
# shellcheck disable=SC2086  # one argument per module
step tests_gpu 100 "(passed|failed|error|skipped|PASSED|FAILED|ERROR|SKIPPED)" \
    "$PY" -m pytest -q -p no:cacheprovider -rA --continue-on-collection-errors -m gpu $GPU_MODULES \
    $(toy --collect-only)

# ---- 3. MiVOLO inference and training speed
step mivolo_infer 60 "images/s median|^torch" \
    "$PY" benchmarks/bench_mivolo.py --device cuda --variants mivolo_d1_224 mivolo_d1_384 --batches 1 32 128 \
    --methods ours loop --repeats 5 --max-images 640 --warmup 2 --json "$OUT/mivolo_infer.json" \
    $(toy --device cpu --variants mivolo_d1_224 --batches 1 2 --repeats 1 --max-images 2 --warmup 0 --loop-images 1)
# bench_mivolo_train.py's CUDA cases through its own bench_step (the script's CPU cases would cost ~30 s here)
step mivolo_train 75 "samples/s|^torch" \
    "$PY" gpu/mivolo_train_cuda.py --gpu-steps 10 $(toy --device cpu --gpu-steps 1 --cases mivolo_tiny_64:6:2)

# ---- 4. LLaVA-1.5-7B-shaped inference (random weights, bf16): samples/s, peak memory, LAGENDA estimate
#         (8 CPU threads for the image processor: a GPU server has them to spare)
step mllm_7b 150 "^device|params|batch .*samples/s|=> LAGENDA|failed" \
    "$PY" benchmarks/bench_mllm_local.py --shape 7b --batch-sizes 1,8,32,64 --samples 128 --repeat 1 \
    --threads 8 --json "$OUT/mllm_7b.json" $(toy --shape mini --batch-sizes 1,2 --samples 2 --device cpu --threads 2)

# ---- 4b. one of today's families at 7-8B shape beside it (issue 14): Qwen2.5-VL-7B-shaped, random bf16 weights,
#          the modern profile's pixel budget
step mllm_qwen_7b 100 "^device|params|batch .*samples/s|=> LAGENDA|failed" \
    "$PY" benchmarks/bench_mllm_local.py --shape qwen2.5-vl-7b --batch-sizes 1,8,32 --samples 64 --repeat 1 \
    --threads 8 --json "$OUT/mllm_qwen_7b.json" $(toy --shape mini-qwen --batch-sizes 1,2 --samples 2 --device cpu --threads 2)

# ---- 5. 7B full fine-tuning step (gradient checkpointing, pure bf16 AdamW, vision tower frozen as in our
#         FinetuneConfig); an out-of-memory batch is reported and larger ones skipped
step finetune_7b 100 '^built|^\{"batch"' \
    "$PY" benchmarks/bench_mllm_finetune.py --shape 7b --freeze-vision --batches 1 4 8 16 32 --steps 3 --warmup 1 \
    --json "$OUT/finetune_7b.json" $(toy --shape mini --batches 1 --steps 1 --warmup 0)

# ---- 6. LLaVA-NeXT-34B-shaped inference: full depth when it fits the GPU (H200), else reduced + scaled
step mllm_34b 110 "^built|^device|params|REDUCED|batch .*samples/s|=> LAGENDA|failed" \
    "$PY" benchmarks/bench_mllm_local.py --shape 34b --batch-sizes 1,8,16 --samples 16 --repeat 1 \
    --text-layers auto --threads 8 --json "$OUT/mllm_34b.json" \
    $(toy --shape mini-next --batch-sizes 1,2 --samples 2 --text-layers 1 --device cpu --threads 2)

# ---- 7. cross-check of library versions: the CPU tests of two modules that exercise timm and transformers
step tests_cpu 60 "(passed|failed|error)" \
    "$PY" -m pytest -q -p no:cacheprovider -m "not gpu" tests/unit/test_mivolo_predict.py \
    tests/unit/test_mllm_transformers.py $(toy --collect-only)

say "done in $(($(date +%s) - START))s"
echo "==================== SUMMARY ($(($(date +%s) - START))s; full log: run.log) ===================="
cat "$SUMMARY"
ls -l "$OUT"
