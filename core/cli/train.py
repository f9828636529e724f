"""`cadence train`: train one JSONL file standalone (no daemon) with the daemon's engine (core.train).

Continues from the newest checkpoint and resumes mid-file; Ctrl-C checkpoints
at the step boundary and the same command again resumes. Exit codes: 0 done,
1 not completed, 2 no such file, 3 bad data.

Run as:
    cadence train inbox/my_data.jsonl [--schema chat_sft_v1] [--epochs N] [--set training.learning_rate=1e-4]
    cadence train --demo            # generate a small sample file and train on it
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from core.config import add_config_args, config_or_exit


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Train one JSONL file with Cadence's engine (no daemon).")
    parser.add_argument("file", nargs="?", help="JSONL training file")
    parser.add_argument("--schema", default=None, help="chat_sft_v1 | completion_v1 | syllo_v1 (default: daemon.default_schema)")
    parser.add_argument("--epochs", type=int, default=None, help="passes over the file (default: training.epochs)")
    parser.add_argument("--new-run", action="store_true", help="ignore existing checkpoints' critical settings and start from the base model")
    parser.add_argument("--demo", action="store_true", help="write a small sample file to inbox/demo_sample.jsonl and train on it")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_or_exit(args)
    cfg.layout.ensure()
    path = Path(args.file) if args.file else None
    if path is None and not args.demo:
        parser.error("a FILE (or --demo) is required")
    # lazy: core.train imports torch, which `cadence train --help` must not load
    from core.train import train_standalone, write_demo_file
    from trainer import DataError

    if args.demo:
        path = cfg.layout.inbox.parent / "status" / "demo_sample.jsonl"
        write_demo_file(path)
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    try:
        result = train_standalone(cfg, path, args.schema, args.epochs, new_run=args.new_run)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(result.__dict__, indent=2, default=str))
    return 0 if result.status in ("completed", "already_done") else 1
