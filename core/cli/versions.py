"""`cadence versions`: the command line of management.model_versioner (model versions: consolidate a checkpoint into `models/versions/vNNN_YYYYMMDD_<desc>/`, list, restore, roll back, delete.)

Run as:
    cadence versions list [--json]
    cadence versions create [--checkpoint checkpoint-120] [--desc NAME] [--json]
    cadence versions restore VERSION [--json]
    cadence versions rollback [--json]          # restore the version before the newest
    cadence versions delete VERSION --yes [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from management.model_versioner import (
    VersionError,
    create_version,
    delete_version,
    list_versions,
    restore_version,
    rollback_version,
)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Model versions under models/versions/: list, create, restore, rollback, delete.")
    add_config_args(parser)
    parser.add_argument("command", choices=["list", "create", "restore", "rollback", "delete"])
    parser.add_argument("version", nargs="?", help="version name (restore, delete)")
    parser.add_argument("--checkpoint", help="checkpoint to consolidate (create; default: the newest)")
    parser.add_argument("--desc", help="short description in the version name (create)")
    parser.add_argument("--yes", action="store_true", help="confirm delete")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    try:
        if args.command == "list":
            out = {"versions": list_versions(cfg)}
        elif args.command == "create":
            out = create_version(cfg, args.checkpoint, args.desc)
        elif args.command == "restore":
            if not args.version:
                parser.error("restore needs VERSION")
            out = restore_version(cfg, args.version)
        elif args.command == "rollback":
            out = rollback_version(cfg)
        else:
            if not args.version or not args.yes:
                parser.error("delete needs VERSION and --yes")
            out = {"deleted": delete_version(cfg, args.version)}
    except (VersionError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif args.command == "list":
        for v in out["versions"]:
            print(f"{v['name']:<36} step {v['step']!s:>7}  val_loss {v['val_loss']}  {v['created_at']}")
        print(f"{len(out['versions'])} version(s)")
    else:
        print(json.dumps(out, indent=2, default=str))
    return 0
