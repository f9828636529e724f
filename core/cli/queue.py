"""`cadence queue`: the command line of core.queue_store (the training queue on disk: one folder per state, a state change is a rename.)

Run as:
    cadence queue add FILE [--priority high|normal|low] [--schema ID] [--force] [--json]
    cadence queue status [--json]
    cadence queue list [--state STATE] [--json]
    cadence queue show NAME [--json]
    cadence queue set-priority NAME high|normal|low
    cadence queue retry NAME [--priority P]      # failed, rejected or deferred files
    cadence queue remove NAME
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from core.ingest import Ingestor
from core.queue_store import PRIORITIES, STATES, QueueError, TrainingQueue, _row, _table
from core.state.base import StateError


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return value


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Inspect and change the Cadence training queue.")
    add_config_args(parser)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("add", help="validate a file (spec + QUICK) and queue a copy of it")
    p.add_argument("file")
    p.add_argument("--priority", choices=PRIORITIES, default=None)
    p.add_argument("--schema", default=None, help="dataset spec id (default: daemon.default_schema)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="passes over this file (overrides training.epochs)")
    p.add_argument("--force", action="store_true", help="queue even if the same content is already known")
    p = sub.add_parser("status", help="counts per state, what is training, what is next")
    p = sub.add_parser("list", help="every file with its state")
    p.add_argument("--state", choices=STATES, action="append")
    p = sub.add_parser("show", help="one file's sidecar and reject report")
    p.add_argument("name")
    p = sub.add_parser("set-priority", help="move a waiting file to another priority")
    p.add_argument("name")
    p.add_argument("priority", choices=PRIORITIES)
    p = sub.add_parser("retry", help="failed or deferred -> queue again; rejected -> inbox to be validated again")
    p.add_argument("name")
    p.add_argument("--priority", choices=PRIORITIES, default=None)
    p = sub.add_parser("remove", help="delete a waiting or finished file and its sidecars")
    p.add_argument("name")
    for sp in sub.choices.values():
        sp.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cfg = config_or_exit(args)
    queue = TrainingQueue(cfg)
    out = lambda obj, text: print(json.dumps(obj, indent=2, default=str) if args.json else text)  # noqa: E731
    try:
        if args.cmd == "add":
            result = Ingestor(cfg, queue).ingest_path(args.file, priority=args.priority, schema_id=args.schema,
                                                      epochs=args.epochs, force=args.force, copy=True)
            out(result.to_dict(), result.message)
            return 0 if result.accepted else 1
        if args.cmd == "status":
            st = queue.status()
            text = "  ".join(f"{s}={n}" for s, n in st["counts"].items())
            text += "\nprocessing: " + (", ".join(p["name"] for p in st["processing"]) or "-")
            text += "\nnext: " + (st["next"]["name"] if st["next"] else "-")
            if st["backing_off"]:
                text += f"\nbacking off before a retry: {st['backing_off']}"
            out(st, text)
        elif args.cmd == "list":
            rows = [_row(e) for e in queue.entries(args.state or STATES)]
            out(rows, _table(rows, ["name", "state", "priority", "attempts", "examples", "enqueued", "id", "last_error"]))
        elif args.cmd == "show":
            e = queue.find(args.name)
            reason = queue.reject_report(e)
            obj = {"state": e.state, "name": e.name, "meta": e.meta.to_json(),
                   "reason": reason.to_json() if reason else None}
            out(obj, json.dumps(obj["meta"], indent=2) + (f"\nreason: {reason.summary}" if reason else ""))
        elif args.cmd == "set-priority":
            e = queue.set_priority(args.name, args.priority)
            out(_row(e), f"{e.name}: priority {e.priority}")
        elif args.cmd == "retry":
            e = queue.retry(args.name, args.priority)
            out(_row(e), f"{e.name}: {e.state}")
        elif args.cmd == "remove":
            e = queue.remove(args.name)
            out(_row(e), f"removed {e.state}/{e.name}")
    except (QueueError, StateError) as exc:
        if args.json:
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
