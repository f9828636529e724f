"""Operator requests to the training daemon, kept on disk so they work whether or not it is running.

`control/state.json` holds the desired state (`running` | `paused` | `stopped`),
`stop_after_file`, a pending `skip` request, and who asked and why. The
controller writes it; the daemon and its training child read it at step
boundaries; a request made while the daemon is down applies when it starts. The
emergency file `<base_dir>/.stop` always means stop. The original system's signal
files `control/.pause .stop .skip .resume` are honoured as one-shot requests.
"""
from __future__ import annotations

import time
from pathlib import Path

from core.atomic_io import atomic_write_json, read_json
from core.config import Layout

DESIRED = ("running", "paused", "stopped")


def control_path(layout: Layout) -> Path:
    return layout.control / "state.json"


def read_control(layout: Layout) -> dict:
    state = read_json(control_path(layout), {}) or {}
    state.setdefault("desired", "running")
    state.setdefault("stop_after_file", False)
    state.setdefault("skip", None)
    _absorb_signal_files(layout, state)
    if layout.emergency_stop.exists():
        state["desired"] = "stopped"
        state["reason"] = f"emergency stop file {layout.emergency_stop}"
    return state


def _absorb_signal_files(layout: Layout, state: dict) -> None:
    changed = False
    for name, update in ((".resume", {"desired": "running", "stop_after_file": False}),
                         (".pause", {"desired": "paused"}), (".stop", {"desired": "stopped"}),
                         (".skip", {"skip": {"reason": "signal file control/.skip", "requested_at": time.time()}})):
        f = layout.control / name
        if f.exists():
            state.update(update, reason=f"signal file control/{name}")
            f.unlink(missing_ok=True)
            changed = True
    if changed:
        write_control(layout, state)


def write_control(layout: Layout, state: dict) -> dict:
    state = dict(state, updated_at=time.time())
    atomic_write_json(control_path(layout), state)
    return state


def request(layout: Layout, action: str, reason: str | None = None) -> dict:
    """Apply one operator action: pause | resume | stop | stop_after_file | skip | clear."""
    state = read_control(layout)
    reason = reason or f"{action} requested"
    if action == "pause":
        state.update(desired="paused")
    elif action == "resume":
        state.update(desired="running", stop_after_file=False)
        layout.emergency_stop.unlink(missing_ok=True)
    elif action == "stop":
        state.update(desired="stopped")
    elif action == "stop_after_file":
        state.update(stop_after_file=True)
    elif action == "skip":
        state.update(skip={"reason": reason, "requested_at": time.time()})
    elif action == "clear":
        state = {"desired": "running", "stop_after_file": False, "skip": None}
        layout.emergency_stop.unlink(missing_ok=True)
    else:
        raise ValueError(f"unknown action {action!r}")
    state.update(reason=reason, requested_at=time.time(), last_action=action)
    return write_control(layout, state)


def consume_skip(layout: Layout) -> dict | None:
    state = read_control(layout)
    skip = state.get("skip")
    if skip:
        state["skip"] = None
        write_control(layout, state)
    return skip


def consume_stop_after_file(layout: Layout) -> bool:
    state = read_control(layout)
    if state.get("stop_after_file"):
        state.update(stop_after_file=False, desired="stopped", reason="stop after file")
        write_control(layout, state)
        return True
    return False
