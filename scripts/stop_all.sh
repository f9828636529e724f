#!/usr/bin/env bash
# Stop Cadence gracefully: watchdog first (so nothing restarts), then the daemon
# (its trainer checkpoints at the step boundary and the file is requeued with
# its progress), then the servers; SIGKILL only after the timeout.
#
# Run as:  scripts/stop_all.sh [--timeout SECONDS] [--config FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
exec "$PY" -m core.cli stop "$@"
