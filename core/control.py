"""Operator requests to the training daemon, kept on disk so they work whether or not it is running.

`control/state.json` (owned by core/state/control.py: ControlState) holds the desired state
(`running` | `paused` | `stopped`), `stop_after_file`, a pending `skip` request, and who asked and why. The
controller writes it; the daemon and its training child read it at step boundaries; a request made while the
daemon is down applies when it starts. The emergency file `<base_dir>/.stop` always means stop. The original
system's signal files `control/.pause .stop .skip .resume` are honoured as one-shot requests.
"""
from __future__ import annotations

import time

from core.config import Layout
from core.state.control import ControlState, SkipRequest, read_control, write_control

ACTIONS = ("pause", "resume", "stop", "stop_after_file", "skip", "clear")


def request(layout: Layout, action: str, reason: str | None = None) -> ControlState:
    """Apply one operator action: pause | resume | stop | stop_after_file | skip | clear."""
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    state = read_control(layout)
    reason = reason or f"{action} requested"
    now = time.time()
    if action == "pause":
        update = {"desired": "paused"}
    elif action == "resume":
        update = {"desired": "running", "stop_after_file": False}
        layout.emergency_stop.unlink(missing_ok=True)
    elif action == "stop":
        update = {"desired": "stopped"}
    elif action == "stop_after_file":
        update = {"stop_after_file": True}
    elif action == "skip":
        update = {"skip": SkipRequest(reason=reason, requested_at=now)}
    else:  # clear
        state = ControlState()
        update = {}
        layout.emergency_stop.unlink(missing_ok=True)
    state = state.model_copy(update={**update, "reason": reason, "requested_at": now, "last_action": action})
    return write_control(layout, state)


def consume_skip(layout: Layout) -> SkipRequest | None:
    state = read_control(layout)
    skip = state.skip
    if skip:
        write_control(layout, state.model_copy(update={"skip": None}))
    return skip


def consume_stop_after_file(layout: Layout) -> bool:
    state = read_control(layout)
    if state.stop_after_file:
        write_control(layout, state.model_copy(update={"stop_after_file": False, "desired": "stopped",
                                                       "reason": "stop after file"}))
        return True
    return False
