"""Train one JSONL file standalone (no daemon): continues from the newest checkpoint, resumes mid-file.

Run as:
    cadence train inbox/my_data.jsonl [--schema chat_sft_v1] [--epochs N] [--set training.learning_rate=1e-4]
    cadence train --demo            # generate a small sample file and train on it

The file is trained by the same engine the daemon uses; interrupt it with Ctrl-C
(checkpoint at the step boundary) and run the same command again to resume.
"""
from __future__ import annotations

import json
import random
import signal
from pathlib import Path

from core.config import CadenceConfig
from trainer import TrainerEngine, TrainingHooks


class _StopOnSignal(TrainingHooks):
    """SIGINT/SIGTERM only set the flag; the engine checkpoints and stops at the next step boundary."""
    stop = False

    def control(self):
        return "stop" if self.stop else None


def train_standalone(cfg: CadenceConfig, path: Path, schema_id: str | None = None, epochs: int | None = None,
                     new_run: bool = False):
    """Train `path` with the daemon's engine in this process; Ctrl-C stops at a checkpoint. Raises trainer.DataError."""
    hooks = _StopOnSignal()
    signal.signal(signal.SIGINT, lambda *_: setattr(hooks, "stop", True))
    signal.signal(signal.SIGTERM, lambda *_: setattr(hooks, "stop", True))
    engine = TrainerEngine(cfg, hooks, new_run=new_run).setup()
    result = engine.train_file(path, schema_id=schema_id or cfg.daemon.default_schema, epochs=epochs)
    engine.leave_group()  # under `accelerate launch` / several ranks: all leave together
    return result


def write_demo_file(path: Path, n: int = 200, seed: int = 0) -> Path:
    """Tiny binary-addition chat data a ~4M-parameter model learns in a few minutes on CPU."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 7), rng.randint(0, 7)
        rows.append({"messages": [{"role": "user", "content": f"{a:b} + {b:b} ="},
                                  {"role": "assistant", "content": f"{a + b:b}"}]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
