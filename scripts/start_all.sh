#!/usr/bin/env bash
# Start Cadence: watchdog (+ training daemon), monitor, lifecycle worker, skill
# servers and, in single-machine mode, the inference server. Idempotent: a
# process whose recorded pid is alive is not started twice.
#
# Run as:  scripts/start_all.sh [--no-inference] [--follow] [--config FILE] [--set key=value ...]
#   --follow   keep printing training progress (Ctrl-C stops following, not Cadence)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
follow=0
args=()
for a in "$@"; do
  if [[ $a == --follow ]]; then follow=1; else args+=("$a"); fi
done
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
"$PY" -m core.cli start "${args[@]}"
port=$("$PY" -c 'from core.config import load_config; print(load_config().monitor.port)' 2>/dev/null || echo 8080)
echo "Cadence is up. Monitor: http://127.0.0.1:${port}/   Status: cadence control status"
if (( follow )); then
  exec "$PY" -m core.cli follow "${args[@]}"
fi
