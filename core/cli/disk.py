"""`cadence disk`: the command line of management.auto_disk_manager (free disk space in a safe order when it runs low; never touch what Cadence cannot lose.)

Run as:
    cadence disk status [--json]
    cadence disk free [--dry-run] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from management import retention
from management.auto_disk_manager import GB, disk_free, free_space


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Free disk space in a safe order (never the newest, deployed or best checkpoint).")
    add_config_args(parser)
    parser.add_argument("command", choices=["status", "free"], nargs="?", default="status")
    parser.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    parser.add_argument("--target-gb", type=float, help="free until this much is free (default: safety.warn_free_disk_gb)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    if args.command == "status":
        free = disk_free(cfg)
        out = {"free_gb": round(free / GB, 2), "warn_gb": cfg.safety.warn_free_disk_gb, "min_gb": cfg.safety.min_free_disk_gb,
               "current_model_gb": round(retention.dir_size(cfg.layout.current_model) / GB, 3),
               "protected": retention.protected_checkpoints(cfg)}
        print(json.dumps(out, indent=2) if args.json else
              f"{out['free_gb']} GB free (warn below {out['warn_gb']}, refuse below {out['min_gb']}); "
              f"current_model {out['current_model_gb']} GB; protected {out['protected']}")
        return 0
    out = free_space(cfg, dry_run=args.dry_run, target_free_gb=args.target_gb)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for a in out["actions"]:
            print(f"{'would remove' if args.dry_run else 'removed'} [{a['step']}] {a['path']} ({a['bytes'] / 1e6:.1f} MB)")
        print(f"{out['free_before_gb']} GB free before, {out['free_after_gb']} GB {'would be ' if args.dry_run else ''}free after "
              f"(target {out['target_gb']} GB)")
    return 0
