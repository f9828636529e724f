"""The operator's requests to the training daemon: `control/state.json` and the one-shot signal files.

`control/state.json` holds the desired state (running | paused | stopped), `stop_after_file`, a pending skip, and
who asked and why. core/control.py applies requests (pause, resume, stop, skip, clear) to it; the daemon, its
training child and the watchdog read it. The original system's signal files `control/.pause .stop .skip .resume`
(empty; their existence is the request) are absorbed into the state on the next read and removed. The emergency
file `<base_dir>/.stop` always means stopped; it is never written into the state.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from core.state.base import StateFile, StateRecord, read_record, write_record

Desired = Literal["running", "paused", "stopped"]
DESIRED = ("running", "paused", "stopped")
SIGNAL_FILES = (".resume", ".pause", ".stop", ".skip")


class SkipRequest(BaseModel):
    """Set the file being trained aside (queue/failed/, with the reason)."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = None
    requested_at: float


class ControlState(StateRecord):
    """What the operator wants the daemon to do."""

    desired: Desired = "running"
    stop_after_file: bool = False
    skip: SkipRequest | None = None
    reason: str | None = None  # why, as the operator (or the daemon's alert) said it
    requested_at: float | None = None
    last_action: str | None = None
    updated_at: float | None = None  # every write; the watchdog tells an operator action by it


def control_path(layout) -> Path:
    return layout.control / "state.json"


def signal_file_path(layout, name: str) -> Path:
    if name not in SIGNAL_FILES:
        raise ValueError(f"unknown control signal file {name!r} (one of {', '.join(SIGNAL_FILES)})")
    return layout.control / name


def read_control(layout) -> ControlState:
    """The operator's current requests: the state file with any signal files absorbed (one-shot: they are removed
    and the state rewritten), and the emergency stop file applied. No file: running, nothing pending."""
    state = read_record(ControlState, control_path(layout)) or ControlState()
    state = _absorb_signal_files(layout, state)
    if layout.emergency_stop.exists():
        state = state.model_copy(update={"desired": "stopped", "reason": f"emergency stop file {layout.emergency_stop}"})
    return state


def _absorb_signal_files(layout, state: ControlState) -> ControlState:
    changed = False
    for name, update in ((".resume", {"desired": "running", "stop_after_file": False}),
                         (".pause", {"desired": "paused"}), (".stop", {"desired": "stopped"}),
                         (".skip", {"skip": SkipRequest(reason="signal file control/.skip", requested_at=time.time())})):
        f = signal_file_path(layout, name)
        if f.exists():
            state = state.model_copy(update={**update, "reason": f"signal file control/{name}"})
            f.unlink(missing_ok=True)
            changed = True
    if changed:
        state = write_control(layout, state)
    return state


def write_control(layout, state: ControlState) -> ControlState:
    """Replace control/state.json with `state`, stamped `updated_at`; returns what was written."""
    state = state.model_copy(update={"updated_at": time.time()})
    write_record(control_path(layout), state)
    return state


FILES = [
    StateFile(pattern="control/state.json", model=ControlState, writers=("core.control", "core.state.control"),
              readers=("core.daemon", "trainer.child", "safety.watchdog", "core.live_status", "monitoring.app"),
              description="The operator's requests: desired state, stop after file, pending skip, reason. The "
                          "signal files control/.pause .stop .skip .resume (empty) are absorbed into it when read."),
]
