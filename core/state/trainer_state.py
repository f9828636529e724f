"""The trainer's resume record: `training_state/trainer_state.json` inside every checkpoint.

Written by the engine (trainer/engine.py) into the checkpoint's temp folder before it is published, and by the
versioner when it restores a version as a new checkpoint (management/model_versioner.py). Read by the engine on
resume, the daemon (which file the latest checkpoint is mid-way through), the config validator (critical values
of the run), and management and the monitor (what a checkpoint has seen).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from core.manifest import TRAINING_STATE_DIR
from core.state.base import StateFile, StateRecord, read_record, write_record

STATE_FILE = "trainer_state.json"


class CurrentFile(BaseModel):
    """The file the checkpoint is mid-way through: a restart resumes it at `steps_done`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str
    name: str
    steps_done: int = 0
    total_steps: int
    global_step_start: int  # the global step before the file's first step
    started_at: float | None = None


class LastFile(BaseModel):
    """The last file trained to its end."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = None
    name: str | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    global_step_end: int | None = None


class TrainerState(StateRecord):
    """Where the run is: steps, what was seen, which files are done, the file in progress."""

    global_step: int = 0
    tokens_seen: int = 0
    examples_seen: int = 0
    files_done: list[str] = []  # ids (content hashes) of trained files, the last 10,000
    current_file: CurrentFile | None = None
    last_file: LastFile | None = None
    critical: dict[str, Any] | None = None  # the run's critical config values (core.config CRITICAL_KEYS)
    critical_hash: str | None = None
    config_hash: str | None = None  # the critical hash when this checkpoint was written
    run_started_at: float | None = None
    reason: str | None = None  # why this checkpoint was written: periodic | pause | stop | end_of_file | ...
    saved_at: float | None = None
    restored_from: str | None = None  # a version restored as this checkpoint (management/model_versioner.py)
    restored_at: float | None = None


def trainer_state_path(state_dir: str | Path) -> Path:
    """`state_dir`: a checkpoint's training_state/ folder."""
    return Path(state_dir) / STATE_FILE


def write_trainer_state(state_dir: str | Path, state: TrainerState) -> None:
    """Into a checkpoint's training_state/ (normally still the unpublished temp folder), stamped `saved_at`."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    write_record(trainer_state_path(state_dir), state.model_copy(update={"saved_at": time.time()}))


def read_trainer_state(state_dir: str | Path) -> TrainerState | None:
    """The record of a checkpoint's training_state/, None when it has none (e.g. an exported model)."""
    return read_record(TrainerState, trainer_state_path(state_dir))


FILES = [
    StateFile(pattern=f"models/**/{TRAINING_STATE_DIR}/{STATE_FILE}", model=TrainerState,
              writers=("trainer.engine", "management.model_versioner"),
              readers=("trainer.engine", "trainer.checkpoint", "core.daemon", "safety.config_validator",
                       "management.model_versioner", "management.model_comparison_engine", "management.retention",
                       "monitoring.sources", "inference.loader"),
              description="A checkpoint's resume record (also in its backups under models/backups/): global step, "
                          "tokens and examples seen, files done, the file in progress, the run's critical config."),
]
