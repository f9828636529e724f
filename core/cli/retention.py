"""`cadence retention`: the command line of management.retention (checkpoint retention: latest N + best K + deployed (+ champion), optimizer state only on the latest M; versions and backups by count.)

Run as:
    cadence retention [--dry-run] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from management.retention import apply_retention


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Apply checkpoint retention (latest N + best K + deployed; optimizer state on the latest M).")
    add_config_args(parser)
    parser.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    out = apply_retention(cfg, args.dry_run)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print(f"protected: {out['protected']}")
        for a in out["actions"]:
            print(f"{'would ' if args.dry_run else ''}{a['action']}: {a['path']} ({a['bytes'] / 1e6:.1f} MB)")
        print(f"{'would free' if args.dry_run else 'freed'} {out['freed_bytes'] / 1e9:.2f} GB")
    return 0
