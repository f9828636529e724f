"""Keep the training daemon alive: restart it when its recorded pid is dead, never look it up by name.

Every `safety.watchdog_interval` seconds: if `.pids/daemon.pid` names no live
process and the operator has not asked for a stop, kill any orphaned training
child by its recorded pid (`.pids/trainer.pid`), then start the daemon again.
More than `safety.max_restarts` restarts within `safety.restart_window`
seconds is a crash loop: the watchdog stays down, says why (events.jsonl and
training_status.json), and waits for an operator action (any controller
request) before trying again.

Run as:
    cadence watchdog [--config config.json] [--set key=value]
    python3 safety/daemon_watchdog.py ...     (the seed path)
    (`cadence start` starts it; it starts the daemon)
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from core.state.control import read_control
from core.state.events import append_event
from core.procs import AlreadyRunning, InstanceLock, live_pid, remove_pid, terminate, write_pid
from core.state.events import append_event
from trainer.status import StatusWriter

logger = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, cfg, config_path: str | None, overrides: list[str]):
        self.cfg = cfg
        self.layout = cfg.layout.ensure()
        self.config_path = config_path
        self.overrides = overrides
        self.restarts: deque[float] = deque()
        self.gave_up_at_control: float | None = None
        self.stop = threading.Event()

    def event(self, event: str, **fields) -> None:
        append_event(self.layout, event, source="watchdog", **fields)

    def daemon_cmd(self) -> list[str]:
        cmd = [sys.executable, str(REPO / "core" / "training_daemon.py")]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        for item in self.overrides:
            cmd += ["--set", item]
        return cmd

    def start_daemon(self) -> int:
        log = open(self.layout.logs / "daemon.log", "ab")
        proc = subprocess.Popen(self.daemon_cmd(), cwd=str(REPO), stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        # Record the pid at once so the next check never double-starts; the daemon rewrites the same pid.
        write_pid(self.layout.pid_file("daemon"), proc.pid)
        threading.Thread(target=proc.wait, daemon=True).start()  # reap it if it exits while we run
        return proc.pid

    def check(self) -> str:
        """One pass; returns what it did (for logs and tests)."""
        pid_file = self.layout.pid_file("daemon")
        if live_pid(pid_file) or InstanceLock(self.layout.pids / "daemon.lock").is_held_elsewhere():
            return "alive"
        control = read_control(self.layout)
        if control.desired == "stopped":
            return "stopped by operator"
        if self.gave_up_at_control is not None:
            if control.updated_at == self.gave_up_at_control:
                return "crash loop: waiting for an operator"
            self.gave_up_at_control = None
            self.restarts.clear()
            self.event("crash_loop_reset", reason="operator action")
        orphan = live_pid(self.layout.pid_file("trainer"))
        if orphan:
            outcome = terminate(orphan, self.cfg.daemon.shutdown_timeout)
            self.event("orphan_trainer_killed", pid=orphan, outcome=outcome)
        now = time.monotonic()
        while self.restarts and now - self.restarts[0] > self.cfg.safety.restart_window:
            self.restarts.popleft()
        if len(self.restarts) >= self.cfg.safety.max_restarts:
            reason = (f"daemon died {len(self.restarts)} times within {self.cfg.safety.restart_window:.0f}s: "
                      f"crash loop, staying down; see logs/daemon.log, then run "
                      f"`cadence resume` to try again")
            self.gave_up_at_control = control.updated_at
            self.event("crash_loop", reason=reason)
            StatusWriter(self.layout.training_status, self.layout.metrics).update(state="crashed", reason=reason)
            logger.error(reason)
            return "crash loop: gave up"
        had_pid = pid_file.exists()
        pid = self.start_daemon()
        self.restarts.append(now)
        self.event("daemon_restarted" if had_pid else "daemon_started", pid=pid)
        logger.info("started training daemon pid %d", pid)
        return "restarted"

    def run(self) -> int:
        lock = InstanceLock(self.layout.pids / "watchdog.lock")
        try:
            lock.acquire()
        except AlreadyRunning:
            print("watchdog already running", file=sys.stderr)
            return 3
        write_pid(self.layout.pid_file("watchdog"))
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        self.event("watchdog_started", pid=os.getpid())
        try:
            while not self.stop.is_set():
                try:
                    self.check()
                except Exception:  # the loop boundary: a watchdog must outlive its own bugs
                    logger.exception("watchdog check failed")
                self.stop.wait(self.cfg.safety.watchdog_interval)
        finally:
            remove_pid(self.layout.pid_file("watchdog"))
            lock.release()
            self.event("watchdog_stopped")
        return 0
