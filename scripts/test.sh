#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite on CPU.
#
# Run as:  scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test --vllm   # --vllm: box B's vLLM venv, which tests/test_vllm_engine.py serves from
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
