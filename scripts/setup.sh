#!/usr/bin/env bash
# Set up Cadence on a fresh machine (idempotent): venv in .venv, install, build
# the default tiny model into models/base/ if absent.
#
# Run as:  scripts/setup.sh [--test|--bench] [--vllm]
#   --test   also installs the test extras      --bench  test + benchmark extras
#   --vllm   also builds box B's vLLM venv (.venv-vllm, scripts/setup_vllm.sh) for inference.engine="vllm"
set -euo pipefail
cd "$(dirname "$0")/.."
extras="[lora,export]"
with_vllm=0
for arg in "$@"; do
  case "$arg" in
    --test) extras="[lora,export,test]" ;;
    --bench) extras="[lora,export,test,bench]" ;;
    --vllm) with_vllm=1 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
# torch is pinned in pyproject; installing it first keeps pip from resolving a CUDA build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
# llama-cpp-python (a test extra) compiles llama.cpp. It is built once per machine as a portable wheel into
# $CADENCE_WHEELS (AVX2/FMA/F16C; no -march=native, no AVX-512/AMX: a native build that pip cached on one host
# crashes on another, and ggml's AMX/AVX-512 q8_0 path segfaulted on a Sapphire Rapids VM here), CPU backend only,
# and installed from there before the extras (minutes on 2 cores, once).
LLAMA_CPP_VERSION=0.3.36  # the same pin as pyproject.toml's test extra
if [[ $extras == *test* ]]; then
  wheels=${CADENCE_WHEELS:-$HOME/.cache/cadence-wheels}
  if ! compgen -G "$wheels/llama_cpp_python-$LLAMA_CPP_VERSION-*.whl" >/dev/null; then
    echo "building llama-cpp-python $LLAMA_CPP_VERSION (portable CPU wheel, once per machine) into $wheels"
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
-DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAMA_CURL=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF" \
      .venv/bin/pip wheel -q --disable-pip-version-check --no-cache-dir --no-deps -w "$wheels" "llama-cpp-python==$LLAMA_CPP_VERSION"
  fi
  # --force-reinstall: replaces a native build an older setup.sh installed (same version, other flags)
  .venv/bin/pip install -q --disable-pip-version-check --no-index --no-deps --force-reinstall --find-links "$wheels" \
    "llama-cpp-python==$LLAMA_CPP_VERSION"
fi
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras}"
mkdir -p inbox queue models status logs control .pids
.venv/bin/python scripts/make_tiny_model.py --out models/base --if-absent
# The monitor page's chart library, pinned in package.json/package-lock.json; without npm the page says so and shows numbers only.
if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error >/dev/null || echo "warning: npm ci failed: the monitor page will have no charts"; else echo "note: npm not found: the monitor page will have no charts (install Node.js/npm, rerun scripts/setup.sh)"; fi
if (( with_vllm )); then scripts/setup_vllm.sh; fi
echo "setup done: .venv ready, models/base present$( (( with_vllm )) && echo ', .venv-vllm ready')"
