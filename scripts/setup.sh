#!/usr/bin/env bash
# Set up Cadence on a fresh machine (idempotent): venv in .venv, install, build
# the default tiny model into models/base/ if absent.
#
# Run as:  scripts/setup.sh [--test]     (--test also installs the test extras)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="[lora,export]"
if [[ "${1:-}" == "--test" ]]; then extras="[lora,export,test]"; fi
if [[ "${1:-}" == "--bench" ]]; then extras="[lora,export,test,bench]"; fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
# torch is pinned in pyproject; installing it first keeps pip from resolving a CUDA build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
# llama-cpp-python (a test extra) compiles llama.cpp here: CPU backend only, no BLAS, no curl, no llama.cpp tools
# (minutes on 2 cores, once: pip caches the wheel).
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_BLAS=OFF -DGGML_CUDA=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF}"
.venv/bin/pip install -q --disable-pip-version-check -e ".${extras}"
mkdir -p inbox queue models status logs control .pids
.venv/bin/python scripts/make_tiny_model.py --out models/base --if-absent
# The monitor page's chart library, pinned in package.json/package-lock.json; without npm the page says so and shows numbers only.
if command -v npm >/dev/null 2>&1; then npm ci --no-audit --no-fund --loglevel=error >/dev/null || echo "warning: npm ci failed: the monitor page will have no charts"; else echo "note: npm not found: the monitor page will have no charts (install Node.js/npm, rerun scripts/setup.sh)"; fi
echo "setup done: .venv ready, models/base present"
