#!/usr/bin/env bash
# Everything the CPU-only development box cannot check, in one command on a machine with one CUDA GPU.
#
#   bash benchmarks/gpu_check.sh            # after the README's set-up (scripts/setup.sh, and --vllm for vLLM)
#
# Runs, in this order, each step with its own time limit (the whole is meant to finish in < 8 min):
#   1. gpu-tests   pytest -m gpu: bf16 autocast, varlen attention on CUDA, a real CUDA OOM classified and
#                  the daemon's halve-micro-batch retry, async checkpoints equal to synchronous ones
#   2. train       benchmarks/train_throughput.py --preset qwen3-0.6b --throughput: Cadence vs HF Trainer
#                  and TRL SFTTrainer, tok/s and MFU
#   3. serve       benchmarks/serve.py on the builtin engine and on vLLM behind Cadence's front
#   4. swap        benchmarks/serve.py's swap test: versions deployed back to back while clients stream
# then prints one table (step, result, seconds, log) and exits non-zero if any step failed.
# Logs go to $GPU_CHECK_DIR (default: a new temp dir), which is printed at the end.
# Nobody could run this on the CPU box it was written on; it is checked there with `bash -n` only.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
OUT="${GPU_CHECK_DIR:-$(mktemp -d -t cadence-gpu-check-XXXXXX)}"
mkdir -p "$OUT"
cd "$REPO" || exit 2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

declare -a NAMES RESULTS SECONDS_TAKEN LOGS
FAILED=0

run_step() {  # run_step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    local log="$OUT/$name.log" start end code
    echo "== $name: $*" | tee "$log"
    start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1
    code=$?
    end=$(date +%s)
    NAMES+=("$name")
    SECONDS_TAKEN+=("$((end - start))")
    LOGS+=("$log")
    if [ "$code" -eq 0 ]; then
        RESULTS+=("ok")
    elif [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then
        RESULTS+=("TIMEOUT (${limit}s)")
        FAILED=1
    else
        RESULTS+=("FAILED (exit $code)")
        FAILED=1
    fi
    tail -n 5 "$log"
}

# 0. the machine is what this script is for
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi
"$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" | tee "$OUT/gpu.txt"

# 1. the GPU-marked tests (skipped without CUDA, so here every one of them must run and pass: -rs lists skips)
run_step gpu-tests 150 "$PY" -m pytest tests/test_gpu.py -m gpu -q -rs -p no:randomly
if grep -q "SKIPPED" "$OUT/gpu-tests.log"; then
    RESULTS[${#RESULTS[@]}-1]="FAILED (tests skipped on a GPU box)"
    FAILED=1
fi

# 2. training throughput on the Qwen3-0.6B preset (random weights, the real architecture, fp32 for everyone):
#    HF Trainer, TRL SFTTrainer and Cadence on the same examples, tok/s and MFU
run_step train-0.6b 150 "$PY" benchmarks/train_throughput.py --preset qwen3-0.6b --throughput --examples 96 \
    --contenders hf,trl,cadence --json "$OUT/train-0.6b.json"

# 3. serving on both engines (vLLM needs scripts/setup.sh --vllm: the .venv-vllm venv), the front's overhead
run_step serve 100 "$PY" benchmarks/serve.py --backends cadence cadence+vllm --concurrency 1 8 --max-tokens 32 \
    --threads 0 --swap-versions 0 --max-level-seconds 30 --json "$OUT/serve.json"

# 4. a swap under load: versions deployed back to back while clients stream (0 failed requests expected)
run_step swap 60 "$PY" benchmarks/serve.py --backends cadence --concurrency 8 --max-tokens 32 --threads 0 \
    --swap-versions 3 --max-level-seconds 20 --json "$OUT/swap.json"

echo
printf '%-12s %-36s %8s  %s\n' "step" "result" "seconds" "log"
printf '%-12s %-36s %8s  %s\n' "------------" "------------------------------------" "--------" "---"
total=0
for i in "${!NAMES[@]}"; do
    printf '%-12s %-36s %8s  %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}" "${LOGS[$i]}"
    total=$((total + SECONDS_TAKEN[i]))
done
printf '%-12s %-36s %8s\n' "total" "$([ "$FAILED" -eq 0 ] && echo "all passed" || echo "FAILURES")" "$total"
echo "logs and JSON results: $OUT"
exit "$FAILED"
