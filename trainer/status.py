"""The trainer's live record: `status/training_status.json` (atomic, merged) and `status/metrics.jsonl` (append).

Both formats belong to core/state/ (training_status.py: TrainingStatus; metrics.py: Metric); this is the writer
the engine, the daemon and the watchdog hold. After a resume from checkpoint-N, `rewind_metrics(N)` cuts metric
lines past step N from the end of the file (core.state.metrics.rewind_metrics), so the logged step sequence stays
monotonic even when a crash forced steps to be recomputed.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from core.state.base import StateError, read_record
from core.state.metrics import Metric, append_metric, parse_metric, rewind_metrics
from core.state.training_status import TrainingStatus, write_training_status

logger = logging.getLogger(__name__)


class StatusWriter:
    def __init__(self, status_path: Path, metrics_path: Path):
        self.status_path = Path(status_path)
        self.metrics_path = Path(metrics_path)
        try:
            self._status = read_record(TrainingStatus, self.status_path) or TrainingStatus()
        except StateError as exc:  # replaced by this writer's next update
            logger.warning("%s: starting a fresh status", exc)
            self._status = TrainingStatus()

    def update(self, **fields) -> TrainingStatus:
        """Merge `fields` (TrainingStatus's) into the status and write it; a field it does not have is an error."""
        merged = {**self._status.model_dump(exclude_unset=True), **fields, "updated_at": time.time(), "pid": os.getpid()}
        try:
            self._status = TrainingStatus.model_validate(merged)
        except ValueError as exc:
            raise StateError(f"{self.status_path}: not a valid TrainingStatus update: {exc}") from None
        write_training_status(self.status_path, self._status)
        return self._status

    def metric(self, record: Metric | dict) -> None:
        if isinstance(record, dict):
            record = parse_metric(record, str(self.metrics_path))
        append_metric(self.metrics_path, record)

    def rewind_metrics(self, global_step: int) -> int:
        """Truncate trailing lines whose global_step > `global_step`; returns the number of lines removed."""
        return rewind_metrics(self.metrics_path, global_step)
