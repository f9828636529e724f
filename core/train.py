"""Train one JSONL file standalone (no daemon): continues from the newest checkpoint, resumes mid-file.

Run as:
    python3 core/train.py inbox/my_data.jsonl [--schema chat_sft_v1] [--epochs N] [--set training.learning_rate=1e-4]
    python3 core/train.py --demo            # generate a small sample file and train on it

The file is trained by the same engine the daemon uses; interrupt it with Ctrl-C
(checkpoint at the step boundary) and run the same command again to resume.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.config import add_config_args, config_or_exit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one JSONL file with Cadence's engine (no daemon).")
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


def write_demo_file(path: Path, n: int = 200, seed: int = 0) -> Path:
    """Tiny binary-addition chat data a ~4M-parameter model learns in a few minutes on CPU."""
    import random

    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 7), rng.randint(0, 7)
        rows.append({"messages": [{"role": "user", "content": f"{a:b} + {b:b} ="},
                                  {"role": "assistant", "content": f"{a + b:b}"}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


if __name__ == "__main__":
    sys.exit(main())
