"""`cadence backup`: the command line of management.backup_manager (hash-verified backups of model folders, taken before any destructive operation, kept by count and age.)

Run as:
    cadence backup list [--json]
    cadence backup create PATH [--label NAME] [--json]
    cadence backup prune [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from management.backup_manager import BackupError, create_backup, list_backups, prune_backups


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Hash-verified backups of model folders (models/backups/).")
    add_config_args(parser)
    parser.add_argument("command", choices=["list", "create", "prune"])
    parser.add_argument("path", nargs="?", help="folder to back up (create)")
    parser.add_argument("--label")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    if args.command == "create":
        if not args.path:
            parser.error("create needs PATH")
        try:
            out = {"backup": str(create_backup(cfg, cfg.resolve(args.path), args.label))}
        except BackupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    elif args.command == "prune":
        out = {"removed": prune_backups(cfg, args.dry_run), "dry_run": args.dry_run}
    else:
        out = {"backups": list_backups(cfg)}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif args.command == "list":
        for b in out["backups"]:
            print(f"{b['name']}  from {b['source']}")
        print(f"{len(out['backups'])} backup(s)")
    else:
        print(json.dumps(out, indent=2, default=str))
    return 0
