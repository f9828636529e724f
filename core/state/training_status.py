"""The trainer's and the daemon's live record: `status/training_status.json`.

Written (merged, atomically, without fsync) through trainer/status.py's StatusWriter by the engine in the training
child (step, loss, eval, checkpoint), the daemon (idle / blocked / paused / training / stopping) and the watchdog
(crashed). Read by core/live_status.py (corrected by pid liveness), the monitor (monitoring/sources.py) and
scripts/follow.py through it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from core.state.base import StateFile, StateRecord, read_record, write_record


class TrainingStatus(StateRecord):
    """What the daemon and its trainer last said they were doing. Every field is optional: each writer sets its own."""

    state: str | None = None  # idle | training | paused | blocked | stopping | stopped | crashed
    reason: str | None = None  # why blocked / paused / crashed
    global_step: int | None = None
    file: str | None = None
    file_id: str | None = None
    file_step: int | None = None
    file_total_steps: int | None = None
    dropped_examples: int | None = None
    truncated_examples: int | None = None
    loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    val_loss: float | None = None
    fixed_val_loss: float | None = None
    preview: dict[str, Any] | None = None  # the model's answer to one held-out example (trainer.engine.preview)
    last_checkpoint: str | None = None
    deployed_version: str | None = None
    gpu: list[dict[str, Any]] | None = None  # core.system_metrics.gpu_stats()
    ram: dict[str, Any] | None = None  # core.system_metrics.ram_stats()
    queue: dict[str, int] | None = None  # queued files per priority (daemon, when idle)
    daemon_pid: int | None = None
    trainer_pid: int | None = None
    pid: int | None = None  # the process that wrote this version of the file
    updated_at: float | None = None

    def to_json(self) -> dict:
        # only the fields its writers set, as before the state package (a missing key is "never said")
        return {"schema_version": self.schema_version,
                **self.model_dump(mode="json", exclude_unset=True, exclude={"schema_version"})}


def write_training_status(path: str | Path, status: TrainingStatus) -> None:
    write_record(path, status, durable=False)


def read_training_status(layout) -> TrainingStatus | None:
    """None when no daemon or trainer has written one yet; StateError when the file is not a status."""
    return read_record(TrainingStatus, layout.training_status)


FILES = [
    StateFile(pattern="status/training_status.json", model=TrainingStatus,
              writers=("trainer.status", "trainer.engine", "core.daemon", "safety.watchdog"),
              readers=("core.live_status", "core.daemon", "monitoring.sources", "monitoring.feed", "scripts.follow"),
              description="The daemon's and trainer's live record: state, step, loss, eval losses, ETA, last "
                          "checkpoint."),
]
