"""Detect a training child that stopped making progress, dump its stacks, and kill it.

Progress is the child's heartbeat (`status/heartbeat.json`, written every step
and during load/eval/checkpoint). No heartbeat for `safety.stuck_timeout`
(`stuck_timeout_eval` / `stuck_timeout_checkpoint` in those phases) means
stuck: every thread's stack is dumped to the child's log (py-spy when installed,
else the child's faulthandler on SIGUSR1), then the child is killed and the
daemon requeues the file with the attempt counted. The daemon runs this check
every tick; the CLI runs it once against the recorded trainer pid.

Run as:
    cadence stuck [--kill]
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from core.state.base import StateError
from core.state.heartbeat import read_heartbeat

logger = logging.getLogger(__name__)


@dataclass
class Verdict:
    pid: int
    phase: str
    silent_for: float
    limit: float
    global_step: int | None

    def __str__(self) -> str:
        return (f"no heartbeat for {self.silent_for:.0f}s in phase {self.phase!r} (limit {self.limit:.0f}s) "
                f"at global step {self.global_step}")


def limit_for(cfg, phase: str) -> float:
    s = cfg.safety
    return {"eval": s.stuck_timeout_eval, "checkpoint": s.stuck_timeout_checkpoint,
            "load": s.stuck_timeout_load}.get(phase, s.stuck_timeout)


def check(cfg, pid: int, started_at: float, now: float | None = None, rank: int = 0) -> Verdict | None:
    """A Verdict when child `pid` has been silent longer than its phase allows; paused children never are.
    `rank`: whose heartbeat file to read (rank 0: status/heartbeat.json; other ranks have their own)."""
    now = now or time.time()
    try:
        beat = read_heartbeat(cfg.layout, rank)
    except StateError as exc:  # a foreign or broken file is no beat of this child
        logger.warning("%s", exc)
        beat = None
    if beat is None or beat.pid != pid:  # no heartbeat of its own yet: count from its start
        phase, ts, step = "load", started_at, None
    else:
        phase, ts, step = beat.phase, beat.ts, beat.global_step
    if phase == "paused":
        return None
    silent = now - ts
    limit = limit_for(cfg, phase)
    if silent > limit:
        return Verdict(pid, phase, silent, limit, step)
    return None


def dump_stacks(pid: int, log_path: Path | None = None, timeout: float = 20.0) -> str:
    """All thread stacks of `pid`, into the log. Returns how they were taken."""
    pyspy = shutil.which("py-spy")
    if pyspy:
        try:
            out = subprocess.run([pyspy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=timeout)
            if out.returncode == 0:
                logger.error("stacks of stuck trainer %d (py-spy):\n%s", pid, out.stdout)
                if log_path:
                    with open(log_path, "a") as fh:
                        fh.write(f"\n--- py-spy dump of stuck pid {pid} ---\n{out.stdout}\n")
                return "py-spy"
        except (subprocess.TimeoutExpired, OSError) as exc:
            logger.warning("py-spy failed: %s", exc)
    try:
        os.kill(pid, signal.SIGUSR1)  # the child's faulthandler writes every thread's stack to its log
        time.sleep(1.0)
        return "faulthandler"
    except ProcessLookupError:
        return "gone"
