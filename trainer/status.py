"""The trainer's live record: `status/training_status.json` (atomic, merged) and `status/metrics.jsonl` (append).

After a resume from checkpoint-N, `rewind_metrics(N)` cuts metric lines past step N
from the end of the file (a tail scan, not a full read), so the logged step
sequence stays monotonic even when a crash forced steps to be recomputed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from core.atomic_io import append_jsonl, atomic_write_json, read_json


class StatusWriter:
    def __init__(self, status_path: Path, metrics_path: Path):
        self.status_path = Path(status_path)
        self.metrics_path = Path(metrics_path)
        self._status: dict = read_json(self.status_path, {}) or {}

    def update(self, **fields) -> dict:
        self._status.update(fields)
        self._status["updated_at"] = time.time()
        self._status["pid"] = os.getpid()
        atomic_write_json(self.status_path, self._status, durable=False)
        return self._status

    def metric(self, record: dict) -> None:
        append_jsonl(self.metrics_path, {"ts": time.time(), **record})

    def rewind_metrics(self, global_step: int) -> int:
        """Truncate trailing lines whose global_step > `global_step`; returns the number of lines removed."""
        path = self.metrics_path
        if not path.exists():
            return 0
        size = path.stat().st_size
        chunk = 1 << 20
        while True:
            start = max(0, size - chunk)
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read()
            first = 0 if start == 0 else data.find(b"\n") + 1  # skip a partial first line
            cut, removed, found = size, 0, False
            end = len(data)
            while end > first:
                nl = data.rfind(b"\n", first, end - 1)
                line_start = first if nl < first else nl + 1
                line = data[line_start:end].strip()
                if line:
                    try:
                        step = json.loads(line).get("global_step")
                    except (json.JSONDecodeError, AttributeError):
                        step = None
                    if isinstance(step, int) and step > global_step:
                        removed += 1
                        cut = start + line_start
                    else:
                        found = True
                        break
                end = line_start
            if found or start == 0:
                if cut < size:
                    with open(path, "r+b") as fh:
                        fh.truncate(cut)
                return removed
            chunk *= 4
