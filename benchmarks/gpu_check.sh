#!/usr/bin/env bash
# Everything the CPU-only development box cannot check, in one command on a machine with one CUDA GPU.
#
# Run as:
#   bash benchmarks/gpu_check.sh              # after the README's set-up (scripts/setup.sh)
#   bash benchmarks/gpu_check.sh --dry-run    # any machine: the steps replaced by stand-ins (table and exit logic)
#
# Set-up: the checks need the bench and test extras (pytest, TRL, datasets) and the vLLM venv; whatever of
# that is missing is installed first by `scripts/setup.sh --bench --vllm` (idempotent; its time is shown on its
# own row and is not part of the checks' budget). GPU_CHECK_NO_SETUP=1: refuse instead of installing.
#
# Then, in this order, each step with its own time limit (together <= BUDGET_S = 480 s, the issue's 8 minutes):
#   gpu-tests     pytest tests/test_gpu.py -m gpu (not the vLLM one): bf16 autocast, varlen attention on CUDA,
#                 a real CUDA OOM classified + the daemon's halve-micro-batch retry, async checkpoints
#   swap-builtin  tests/test_inference_swap.py's swap under load on the builtin engine (on the GPU here)
#   swap-vllm     tests/test_gpu.py's vLLM swap under load then rollback (own pytest process: the GPU memory
#                 a previous test process cached would count against the two vLLM servers)
#   train-0.6b    benchmarks/train_throughput.py --preset qwen3-0.6b --throughput: Cadence vs HF Trainer and
#                 TRL SFTTrainer on the GPU (fp32, same examples), tok/s and MFU
#   serve         benchmarks/serve.py on the builtin engine and on vLLM behind Cadence's front (c=8)
# A step fails if it exits non-zero, runs out of time, or its result does not show what it is for
# (benchmarks/gpu_check_verify.py: a skipped test, a backend that did not serve, a failed request, a contender
# without tok/s). Then one table (step, result, seconds, figures, log) and exit 1 if anything failed
# (2: no GPU, or the set-up failed). Logs and JSON go to $GPU_CHECK_DIR (default: a new temp dir).
#
# --dry-run (tested on CPU by tests/test_gpu_check.py): no GPU, no set-up; each step runs a stand-in that
# logs the command it would run, except steps named in GPU_CHECK_DRY_FAIL (comma list: exit 3) or
# GPU_CHECK_DRY_HANG (sleep past a 1 s limit: the timeout path); results are not verified.
set -u -o pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
BUDGET_S=480
DRY=0
for arg in "$@"; do
    case "$arg" in
        --dry-run) DRY=1 ;;
        -h|--help) sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "gpu_check: unknown option $arg (see --help)" >&2; exit 2 ;;
    esac
done
OUT="${GPU_CHECK_DIR:-$(mktemp -d -t cadence-gpu-check-XXXXXX)}"
mkdir -p "$OUT"
cd "$REPO" || exit 2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

NAMES=() RESULTS=() SECONDS_TAKEN=() FIGURES=() LOGS=()
FAILED=0

in_list() {  # in_list WORD COMMA,LIST
    case ",$2," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

record() {  # record NAME RESULT SECONDS FIGURES LOG
    NAMES+=("$1") RESULTS+=("$2") SECONDS_TAKEN+=("$3") FIGURES+=("$4") LOGS+=("$5")
}

run_step() {  # run_step NAME TIMEOUT_S COMMAND...
    local name="$1" limit="$2"
    shift 2
    local log="$OUT/$name.log" start end code
    local -a cmd=("$@")
    echo "== $name (limit ${limit}s): $*" | tee "$log"
    if [ "$DRY" -eq 1 ]; then
        if in_list "$name" "${GPU_CHECK_DRY_FAIL:-}"; then
            cmd=(bash -c 'echo "dry run: simulated failure"; exit 3')
        elif in_list "$name" "${GPU_CHECK_DRY_HANG:-}"; then
            cmd=(sleep 600) limit=1
        else
            cmd=(echo "dry run: would run the command above")
        fi
    fi
    start=$(date +%s)
    timeout --kill-after=3 "$limit" "${cmd[@]}" >>"$log" 2>&1
    code=$?
    end=$(date +%s)
    local result figures=""
    if [ "$code" -eq 0 ]; then
        result="ok"
    elif [ "$code" -eq 124 ] || [ "$code" -eq 137 ]; then  # 137: still alive after the TERM, killed
        result="TIMEOUT (${limit}s)" figures="stopped after its ${limit} s"
        FAILED=1
    else
        result="FAILED (exit $code)" figures="$(tail -n 1 "$log" | cut -c1-60)"  # the error, usually
        FAILED=1
    fi
    record "$name" "$result" "$((end - start))" "$figures" "$log"
    tail -n +2 "$log" | tail -n 5
}

check_step() {  # check_step VERIFY-ARGS...: the last step's result checked by gpu_check_verify.py
    local last=$((${#NAMES[@]} - 1)) line code
    if [ "${RESULTS[$last]}" != "ok" ]; then
        return
    fi
    if [ "$DRY" -eq 1 ]; then
        FIGURES[$last]="(dry run: not verified)"
        return
    fi
    line="$("$PY" benchmarks/gpu_check_verify.py "$@" 2>&1 | tail -n 1)"
    code=$?
    FIGURES[$last]="$line"
    if [ "$code" -ne 0 ]; then
        RESULTS[$last]="FAILED (result)"
        FAILED=1
    fi
    echo "   $line"
}

# ---- the machine is what this script is for, and has what the checks need
if [ "$DRY" -eq 1 ]; then
    echo "gpu_check: dry run: no GPU needed, nothing installed, every step a stand-in"
    record setup "skipped (dry run)" 0 "" "-"
else
    if [ ! -x "$PY" ]; then
        echo "gpu_check: $PY missing: run scripts/setup.sh first (see README)" >&2
        exit 2
    fi
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
        echo "gpu_check: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
        exit 2
    fi
    missing=""
    for module in pytest trl datasets peft openai; do
        "$PY" -c "import $module" >/dev/null 2>&1 || missing="$missing $module"
    done
    [ -x "$REPO/.venv-vllm/bin/python" ] || missing="$missing .venv-vllm"
    if [ -z "$missing" ]; then
        record setup "ok (already set up)" 0 "" "-"
    elif [ "${GPU_CHECK_NO_SETUP:-0}" = "1" ]; then
        echo "gpu_check: missing:$missing; run scripts/setup.sh --bench --vllm (GPU_CHECK_NO_SETUP=1 set)" >&2
        exit 2
    else
        echo "== setup: missing:$missing -> scripts/setup.sh --bench --vllm" | tee "$OUT/setup.log"
        start=$(date +%s)
        if ! scripts/setup.sh --bench --vllm >>"$OUT/setup.log" 2>&1; then
            tail -n 20 "$OUT/setup.log" >&2
            echo "gpu_check: scripts/setup.sh --bench --vllm failed (log: $OUT/setup.log)" >&2
            exit 2
        fi
        record setup "ok (installed:$missing)" "$(($(date +%s) - start))" "not in the budget" "$OUT/setup.log"
    fi
    "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__, '| CUDA', torch.version.cuda)" \
        | tee "$OUT/gpu.txt"
fi

# ---- the checks (limits sum to 460 s of the 480 s budget; the stand-in of a dry run takes none of it)
PYTEST=("$PY" -m pytest -q -rs -p no:randomly)

run_step gpu-tests 100 "${PYTEST[@]}" tests/test_gpu.py -m gpu -k "not vllm"
check_step pytest "$OUT/gpu-tests.log"

run_step swap-builtin 40 "${PYTEST[@]}" tests/test_inference_swap.py -k swap_under_load_drops_nothing
check_step pytest "$OUT/swap-builtin.log"

run_step swap-vllm 130 "${PYTEST[@]}" tests/test_gpu.py -m gpu -k vllm
check_step pytest "$OUT/swap-vllm.log"

# compile auto (the shipped default): a file this short trains eager, as a user's would
run_step train-0.6b 100 "$PY" benchmarks/train_throughput.py --preset qwen3-0.6b --throughput --examples 96 \
    --contenders hf,trl,cadence --cadence-compile auto --workdir "$OUT/train-0.6b" --json "$OUT/train-0.6b.json"
check_step train "$OUT/train-0.6b.json"
rm -rf "$OUT/train-0.6b"  # the 0.6B model and runs: a few GB

run_step serve 90 "$PY" benchmarks/serve.py --backends cadence cadence+vllm --concurrency 8 --requests 32 \
    --max-tokens 32 --threads 0 --swap-versions 0 --big-request-mb 0 --max-level-seconds 15 --json "$OUT/serve.json"
check_step serve "$OUT/serve.json" --backends cadence cadence+vllm

# ---- one table
total=0
for i in "${!NAMES[@]}"; do
    [ "${NAMES[$i]}" = "setup" ] || total=$((total + SECONDS_TAKEN[i]))
done
if [ "$total" -gt "$BUDGET_S" ]; then
    record total "OVER BUDGET (> ${BUDGET_S}s)" "$total" "" "-"
    FAILED=1
else
    record total "$([ "$FAILED" -eq 0 ] && echo "all passed" || echo "FAILURES")" "$total" "budget ${BUDGET_S}s" "-"
fi
echo
printf '%-13s %-26s %7s  %-60s %s\n' "step" "result" "seconds" "figures" "log"
printf '%-13s %-26s %7s  %-60s %s\n' "-------------" "--------------------------" "-------" \
    "------------------------------------------------------------" "---"
for i in "${!NAMES[@]}"; do
    printf '%-13s %-26s %7s  %-60s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}" "${FIGURES[$i]}" \
        "${LOGS[$i]}"
done
echo "logs and JSON results: $OUT"
exit "$FAILED"
