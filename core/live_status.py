"""What is really running, whether or not the daemon is up: training_status.json corrected by pid liveness and
staleness, with the controller's pending requests, the queue counts, the deployed version and the fault streak.

Used by `cadence control status` / `cadence status` (core/cli/control.py, the commands that send pause/resume/stop),
the monitor and `cadence follow`. A library: no entry point of its own.
"""
from __future__ import annotations

import logging
import time

from core.config import CadenceConfig
from core.procs import live_pid
from core.queue_store import TrainingQueue
from core.state.base import StateError
from core.state.control import read_control
from core.state.deployment import read_deployment_state
from core.state.faults import FaultStreak, fault_streak_path, read_fault_streak
from core.state.heartbeat import Heartbeat, read_heartbeat
from core.state.training_status import TrainingStatus, read_training_status

logger = logging.getLogger(__name__)


def live_status(cfg: CadenceConfig) -> dict:
    """The honest picture: training_status.json corrected by pid liveness and staleness."""
    layout = cfg.layout
    status = _read_or_none(read_training_status, layout) or TrainingStatus()
    daemon_pid = live_pid(layout.pid_file("daemon"))
    trainer_pid = live_pid(layout.pid_file("trainer"))
    watchdog_pid = live_pid(layout.pid_file("watchdog"))
    heartbeat: Heartbeat | None = _read_or_none(read_heartbeat, layout)
    age = time.time() - float(status.updated_at or 0)
    reported = status.state or "unknown"
    if daemon_pid is None:
        state = "not running"
        if trainer_pid:
            state = "not running (orphaned trainer pid %d)" % trainer_pid
    elif reported == "training" and trainer_pid is None:
        state = "starting" if age < cfg.monitor.stale_after_seconds else "idle"
    else:
        state = reported
    control = read_control(layout)
    try:
        actives = [t.active for t in read_deployment_state(layout).targets.values() if t.active]
    except StateError as exc:  # the status must answer; the broken file is named in the log
        logger.error("%s", exc)
        actives = []
    deployed_version = actives[0].version if actives else None
    tq = TrainingQueue(cfg)
    queue = {p: tq.count(p) for p in ("high", "normal", "low", "processing")}
    streak = _read_or_none(lambda lay: read_fault_streak(fault_streak_path(lay)), layout) or FaultStreak()
    return {
        "state": state, "reported_state": reported, "status_age_s": round(age, 1),
        "daemon_pid": daemon_pid, "trainer_pid": trainer_pid, "watchdog_pid": watchdog_pid,
        "desired": control.desired, "stop_after_file": control.stop_after_file,
        "pending_skip": bool(control.skip), "control_reason": control.reason,
        "global_step": status.global_step, "file": status.file, "file_step": status.file_step,
        "file_total_steps": status.file_total_steps, "loss": status.loss, "val_loss": status.val_loss,
        "lr": status.lr, "tokens_per_s": status.tokens_per_s, "eta_s": status.eta_s,
        "last_checkpoint": status.last_checkpoint, "heartbeat_age_s":
            round(time.time() - heartbeat.ts, 1) if heartbeat and heartbeat.ts else None,
        "heartbeat_phase": heartbeat.phase if heartbeat else None, "queue": queue, "blocked_reason": status.reason,
        "deployed_version": deployed_version, "system_faults_in_a_row": streak.count,
        "next_start_after": streak.retry_at,
    }


def _read_or_none(read, layout):
    """A status view shows what it can: a broken file (named in the log) reads as no file."""
    try:
        return read(layout)
    except StateError as exc:
        logger.warning("%s", exc)
        return None


def format_status(s: dict) -> str:
    lines = [f"state:        {s['state']}" + (f"  (status file says {s['reported_state']!r}, {s['status_age_s']}s old)"
                                              if s["state"] != s["reported_state"] else "")]
    lines.append(f"desired:      {s['desired']}" + ("  (stop after this file)" if s["stop_after_file"] else "")
                 + ("  (skip pending)" if s["pending_skip"] else ""))
    if s.get("control_reason"):
        lines.append(f"reason:       {s['control_reason']}")
    if s.get("blocked_reason") and s["blocked_reason"] != s.get("control_reason"):
        lines.append(f"blocked:      {s['blocked_reason']}")
    if s.get("system_faults_in_a_row"):
        lines.append(f"faults:       {s['system_faults_in_a_row']} system fault(s) in a row (safety.crash_loop_faults pauses)")
    lines.append(f"daemon pid:   {s['daemon_pid'] or '-'}   trainer pid: {s['trainer_pid'] or '-'}   watchdog pid: {s['watchdog_pid'] or '-'}")
    if s.get("file"):
        lines.append(f"file:         {s['file']}  step {s['file_step']}/{s['file_total_steps']}")
    fmt = lambda v, f: (f % v) if isinstance(v, (int, float)) else "-"
    lines.append(f"global step:  {s['global_step'] if s['global_step'] is not None else '-'}   loss {fmt(s['loss'], '%.4f')}   "
                 f"val {fmt(s['val_loss'], '%.4f')}   lr {fmt(s['lr'], '%.2e')}   {fmt(s['tokens_per_s'], '%.0f')} tok/s   "
                 f"eta {fmt(s['eta_s'], '%.0fs')}")
    lines.append(f"checkpoint:   {s['last_checkpoint'] or '-'}   deployed: {s.get('deployed_version') or '-'}")
    q = s["queue"]
    lines.append(f"queue:        high {q['high']}  normal {q['normal']}  low {q['low']}  processing {q['processing']}")
    return "\n".join(lines)

