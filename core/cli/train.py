"""TODO docstring."""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from core.config import add_config_args, config_or_exit
from core.train import write_demo_file


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
    if args.demo:
        path = cfg.layout.inbox.parent / "status" / "demo_sample.jsonl"
        write_demo_file(path)
    if path is None:
        parser.error("a FILE (or --demo) is required")
    if not path.is_file():
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2

    from trainer import DataError, TrainerEngine, TrainingHooks

    class CtrlC(TrainingHooks):
        stop = False

        def control(self):
            return "stop" if self.stop else None

    hooks = CtrlC()
    signal.signal(signal.SIGINT, lambda *_: setattr(hooks, "stop", True))
    signal.signal(signal.SIGTERM, lambda *_: setattr(hooks, "stop", True))
    engine = TrainerEngine(cfg, hooks, new_run=args.new_run).setup()
    try:
        result = engine.train_file(path, schema_id=args.schema or cfg.daemon.default_schema, epochs=args.epochs)
        engine.leave_group()  # under `accelerate launch` / several ranks: all leave together
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    print(json.dumps(result.__dict__, indent=2, default=str))
    return 0 if result.status in ("completed", "already_done") else 1
