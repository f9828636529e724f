"""`cadence monitor-demo`: the command line of monitoring.demo (write a realistic Cadence run into a base_dir, to try the monitor without training (and for its tests).)

Run as:
    cadence monitor-demo --base-dir /tmp/cadence-demo [--steps 3000] [--live-pid PID]
    cadence monitor --set paths.base_dir=/tmp/cadence-demo
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import from_dict
from monitoring.demo import write_run


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-dir", required=True, help="folder to fill (created)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--live-pid", type=int, default=None, help="pid to record as daemon and trainer (default: none)")
    args = parser.parse_args(argv)
    base = Path(args.base_dir).resolve()
    cfg = from_dict({"paths": {"base_dir": str(base)}}, base)
    print(json.dumps(write_run(cfg, args.steps, args.live_pid)))
    return 0
