"""Helpers for tests/test_queue.py that run in spawned processes: a spawn child unpickles its target by module
name, so the target lives in a module imported as `tests.queue_support` (never as a bare test module name, which
depends on how pytest put tests/ on sys.path)."""
from __future__ import annotations

import json
import os
from pathlib import Path


def claim_worker(base_cfg_json: str, barrier, out, rounds: int) -> None:
    from core.config import from_dict
    from core.queue_store import TrainingQueue

    data = json.loads(base_cfg_json)
    q = TrainingQueue(from_dict(data, Path(data["paths"]["base_dir"])))
    for r in range(rounds):
        barrier.wait()
        try:
            e = q.claim_next()
        except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            out.put((r, os.getpid(), f"ERROR {type(exc).__name__}: {exc}"))
            continue
        out.put((r, os.getpid(), e.name if e else None))
