#!/usr/bin/env bash
# One look at Cadence: the processes by recorded pid and the daemon's honest state.
#
# Run as:  scripts/status.sh [--config FILE]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[[ -x $PY ]] || PY=python3
"$PY" -m core.cli status "$@"
echo
exec "$PY" -m core.cli control status "$@"
