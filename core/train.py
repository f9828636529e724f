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
