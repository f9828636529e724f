"""The safety records: every classified child exit (`status/crash_history.jsonl`), the streak of system faults
(`status/fault_streak.json`), and the fault-injection markers (`status/.fault_fired_<kind>`).

The crash detector (safety/crash_detector.py) writes and reads the first two for the daemon (core/daemon.py);
the status views read the streak (core/live_status.py). The markers are written by the training child's fault
injection (trainer/child.py `Faults`, tests only): each fault fires once per base_dir.
"""
from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from core.state.base import StateFile, StateRecord, append_record, read_record, read_records, write_record


class Crash(StateRecord):
    """One classified exit of a training child and what the daemon does about it."""

    category: str  # crash_detector.CATEGORIES
    action: str  # crash_detector.ACTIONS (or system_retry)
    exit_code: int | None
    signal: str | None  # the signal's name when the child died by one
    message: str
    file: str | None = None
    global_step: int | None = None
    ts: float = 0.0
    blame: str = "file"  # file | system
    started_training: bool | None = None


class StreakFault(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ts: float
    category: str
    message: str
    file: str | None = None


class FaultStreak(StateRecord):
    """System faults in a row (kept on disk, so a restarted daemon goes on counting) and when to try again."""

    count: int = 0
    retry_at: float | None = None  # epoch seconds; None: no backoff
    faults: list[StreakFault] = []


def crash_history_path(layout) -> Path:
    return layout.status / "crash_history.jsonl"


def fault_streak_path(layout) -> Path:
    return layout.status / "fault_streak.json"


def append_crash(path: str | Path, crash: Crash) -> None:
    append_record(path, crash)


def read_crashes(path: str | Path) -> list[Crash]:
    """Every recorded crash, oldest first (a bad line skipped with a warning naming file:line)."""
    return list(read_records(Crash, path))


def read_fault_streak(path: str | Path) -> FaultStreak:
    """The streak on disk; no file: no faults."""
    return read_record(FaultStreak, path) or FaultStreak()


def write_fault_streak(path: str | Path, streak: FaultStreak) -> None:
    write_record(path, streak)


def fault_marker_path(status_dir: str | Path, kind: str) -> Path:
    return Path(status_dir) / f".fault_fired_{kind}"


def claim_fault_marker(status_dir: str | Path, kind: str, step: int) -> bool:
    """True the first time fault `kind` fires in this base_dir (the marker is created, holding the step)."""
    try:
        fd = os.open(fault_marker_path(status_dir, kind), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(str(step))
    return True


FILES = [
    StateFile(pattern="status/crash_history.jsonl", model=Crash, kind="jsonl",
              writers=("safety.crash_detector", "core.daemon"), readers=("safety.crash_detector",),
              description="Every classified exit of a training child: category, action, blame, exit code, message."),
    StateFile(pattern="status/fault_streak.json", model=FaultStreak,
              writers=("safety.crash_detector", "core.daemon"),
              readers=("safety.crash_detector", "core.daemon", "core.live_status"),
              description="System faults in a row and the backoff's next start time (crash-loop pause)."),
]
# status/.fault_fired_<kind>: an empty-schema marker (its content is the step, its existence the record) written
# only under CADENCE_FAULT_INJECT; not a StateRecord, so not listed in FILES.
