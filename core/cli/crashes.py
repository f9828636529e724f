"""`cadence crashes`: the command line of safety.crash_detector (classify every training-child exit and decide what the daemon does about it.)

Run as:
    cadence crashes [--json] [-n 20]
"""
from __future__ import annotations

import argparse
import json
import time

from core.config import add_config_args, config_or_exit
from core.state.faults import crash_history_path
from safety.crash_detector import history


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Show classified training-child crashes.")
    parser.add_argument("command", choices=["history"])
    parser.add_argument("-n", type=int, default=20)
    parser.add_argument("--json", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    rows = history(crash_history_path(cfg.layout), args.n)
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
    else:
        for r in rows:
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r.ts))}  {r.category:<12} {r.action:<20} "
                  f"{r.blame:<6} {r.file or '-'}  {r.message[:100]}")
        if not rows:
            print("no crashes recorded")
    return 0
