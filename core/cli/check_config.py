"""`cadence check-config`: the command line of safety.config_validator (guard the configuration: critical parameters frozen once checkpoints exist, writable paths, free disk.)

Run as:
    cadence check-config [--json]          # check config.json against the run on disk
    cadence check-config --start-new-run   # archive current checkpoints; next training starts from base_model
"""
from __future__ import annotations

import argparse
import json

from core.config import add_config_args, config_or_exit
from safety.config_validator import start_new_run, validate


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Check config.json against the run on disk (critical keys, paths, disk).")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--start-new-run", action="store_true", help="archive current checkpoints so critical settings may change")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    if args.start_new_run:
        dest = start_new_run(cfg, "operator started a new run")
        print(f"archived previous run to {dest}" if dest else "no checkpoints: nothing to archive")
        return 0
    report = validate(cfg)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for e in report["errors"]:
            print(f"error: {e}")
        for w in report["warnings"]:
            print(f"warning: {w}")
        print("config OK" if report["ok"] else "config REFUSED")
    return 0 if report["ok"] else 1
