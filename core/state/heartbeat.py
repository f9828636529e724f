"""The training child's heartbeat: `status/heartbeat.json` (rank r of a distributed group: `heartbeat.rank<r>.json`).

Written by every training process at each step and during long phases (load, eval, checkpoint, paused); read by
the daemon's anti-stuck check (safety/anti_stuck_monitor.py, every rank through core/launch.py), the crash
detector (RAM at death, whether training had begun) and the status views (core/live_status.py). Disposable state:
written atomically without fsync.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from core.state.base import StateFile, StateRecord, read_record, write_record

Phase = Literal["load", "train", "eval", "checkpoint", "paused"]


class Heartbeat(StateRecord):
    """One beat of one training process."""

    pid: int
    phase: Phase
    global_step: int  # -1 while paused
    file: str | None = None  # the queued file being trained
    ts: float  # epoch seconds of the beat
    first_step: int | None = None  # the global step this process's first training step began at; None: starting up
    ram_pct: float | None = None  # host RAM in use, for telling the kernel's OOM killer from an outside SIGKILL


def heartbeat_path(layout, rank: int = 0) -> Path:
    """Rank 0 keeps the single-process name every reader knows; rank r writes heartbeat.rank<r>.json."""
    return layout.status / ("heartbeat.json" if rank == 0 else f"heartbeat.rank{rank}.json")


def write_heartbeat(layout, beat: Heartbeat, rank: int = 0) -> None:
    write_record(heartbeat_path(layout, rank), beat, durable=False)


def read_heartbeat(layout, rank: int = 0) -> Heartbeat | None:
    """The latest beat of `rank`, None when it has not beaten; StateError when the file is not a heartbeat."""
    return read_record(Heartbeat, heartbeat_path(layout, rank))


FILES = [
    StateFile(pattern="status/heartbeat.json", model=Heartbeat, writers=("trainer.child",),
              readers=("safety.anti_stuck_monitor", "core.launch", "core.daemon", "core.live_status"),
              description="The training child's latest beat (rank 0 of a group)."),
    StateFile(pattern="status/heartbeat.rank*.json", model=Heartbeat, writers=("trainer.child",),
              readers=("safety.anti_stuck_monitor", "core.launch"),
              description="The beat of rank r > 0 of a distributed training child."),
]
