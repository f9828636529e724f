"""The 24/7 training daemon: a supervisor that never imports torch.

It holds an OS lock (one instance per base_dir), runs the inbox watcher and
validators, claims the next queued file and trains it in a child process
(`trainer/child.py`) that it can stop, kill and restart. The child writes a
heartbeat each step; the daemon checks it every tick (anti-stuck), classifies
every child exit (crash detector) and acts on it: complete, requeue at the
front with progress, retry with backoff, shrink the batch after an OOM, fail
the file, or pause with an alert. A fault the detector blames on the system (a
kill from outside; an OOM, segfault, hang or error before the child's first
training step) is not an attempt of the file: the file goes back to the front
with its attempts untouched, the daemon backs off, and after
`safety.crash_loop_faults` in a row it pauses itself with an alert. A file the
latest checkpoint is mid-way through is claimed before any other. Every state change goes to
`status/events.jsonl`. Config changes apply at the next file boundary
(critical ones are refused). SIGTERM/SIGINT: the child finishes its step,
checkpoints and exits; the file goes back to the front of its queue.

Run as:
    cadence daemon [--config config.json] [--set key=value]
    python3 core/training_daemon.py ...       (the seed path; the watchdog starts the daemon this way)
    (normally started by `cadence start` under the watchdog)
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

from core import launch
from core.config import CadenceConfig, ConfigError, load_config
from core.ingest import Ingestor
from core.control import consume_skip, consume_stop_after_file, request
from core.procs import AlreadyRunning, InstanceLock, live_pid, remove_pid, terminate, write_pid
from core.queue_store import QueueEntry, TrainingQueue
from core.state.base import StateError
from core.state.child_result import TrainedFile, exit_kind
from core.state.control import read_control
from core.state.events import append_event
from core.state.faults import crash_history_path
from core.state.heartbeat import Heartbeat, read_heartbeat
from core.state.training_status import read_training_status
from management.auto_disk_manager import free_space
from safety import anti_stuck_monitor, crash_detector
from safety.config_validator import critical_problems, disk_problems
from trainer.checkpoint import latest_checkpoint  # no torch: lazy package
from trainer.status import StatusWriter

logger = logging.getLogger(__name__)


def log_event(cfg: CadenceConfig, event: str, **fields) -> None:
    append_event(cfg.layout, event, source="daemon", **fields)


def sd_notify(message: str) -> None:
    """systemd notify protocol (READY=1, WATCHDOG=1, STATUS=...); a no-op outside systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        pass


class Child:
    """One running training child and what the daemon knows about it."""

    def __init__(self, proc: subprocess.Popen, entry: QueueEntry, step_at_start: int):
        self.proc = proc
        self.entry = entry
        self.started_at = time.time()
        self.step_at_start = step_at_start
        self.killed_reason: str | None = None
        self.term_sent_at: float | None = None


class TrainingDaemon:
    def __init__(self, config_path: str | None, overrides: list[str]):
        self.config_path = config_path
        self.overrides = overrides
        self.cfg = load_config(config_path, overrides)
        self.layout = self.cfg.layout.ensure()
        self.queue = TrainingQueue(self.cfg)
        self.status = StatusWriter(self.layout.training_status, self.layout.metrics)
        self.lock = InstanceLock(self.layout.pids / "daemon.lock")
        self.child: Child | None = None
        self.shutdown_requested = threading.Event()
        self.exit_reason = "shutdown"
        self.ingestor = None
        self._blocked_reason: str | None = None
        self.fault_streak_path = crash_detector.streak_path(self.layout)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> int:
        try:
            self.lock.acquire()
        except AlreadyRunning:
            pid = live_pid(self.layout.pid_file("daemon"))
            print(f"training daemon already running (pid {pid}) for {self.layout.base_dir}", file=sys.stderr)
            return 3
        write_pid(self.layout.pid_file("daemon"))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        log_event(self.cfg, "daemon_started", pid=os.getpid())
        try:
            self._reap_orphan()
            self._recover()
            self._start_ingest()
            sd_notify("READY=1")
            while not self.shutdown_requested.is_set():
                self.tick()
                self.shutdown_requested.wait(self.cfg.daemon.loop_interval if self.child is None else 0.2)
            self._shutdown()
        finally:
            self._stop_ingest()
            remove_pid(self.layout.pid_file("daemon"))
            self.lock.release()
        log_event(self.cfg, "daemon_stopped", reason=self.exit_reason)
        return 0

    def _on_signal(self, signum, _frame) -> None:
        self.exit_reason = signal.Signals(signum).name
        self.shutdown_requested.set()

    def _reap_orphan(self) -> None:
        """A trainer left by a previous daemon (which died) must be gone before a new one starts."""
        for pid in [live_pid(self.layout.pid_file("trainer")), *launch.orphan_pids(self.layout)]:
            if pid:
                outcome = terminate(pid, self.cfg.daemon.shutdown_timeout)
                log_event(self.cfg, "orphan_trainer_stopped", pid=pid, outcome=outcome)

    def _recover(self) -> None:
        ckpt = latest_checkpoint(self.layout.current_model)
        step = ckpt.step if ckpt else 0
        for e in self.queue.entries(("processing",)):
            progressed = step > (e.meta.attempt_step_start if e.meta.attempt_step_start is not None else step)
            self._note_global_step_start(e, None)
            if progressed:
                self.queue.requeue_front(e.name, progress={"global_step": step}, reason="recovered: progress made")
            else:
                # the daemon died (killed, OOM, power) with no new checkpoint: the system's fault, not the file's
                self._system_fault(e.name, "killed", "the daemon died while this file's trainer ran, before any "
                                                     "new checkpoint (recovered from processing/)")
            log_event(self.cfg, "recovered", file=e.name, counted_as_attempt=False)

    def _start_ingest(self) -> None:
        self.ingestor = Ingestor(self.cfg, self.queue)
        self._ingest_stop = threading.Event()
        self._ingest_thread = threading.Thread(target=self._ingest_loop, name="ingest", daemon=True)
        self._ingest_thread.start()

    def _ingest_loop(self) -> None:
        while not self._ingest_stop.is_set():
            try:
                self.ingestor.run_forever(self._ingest_stop)
            except Exception:  # the loop boundary: bad input must never stop the daemon
                logger.exception("inbox watcher failed; restarting it")
                self._ingest_stop.wait(1.0)

    def _stop_ingest(self) -> None:
        if self.ingestor is not None:
            self._ingest_stop.set()
            self._ingest_thread.join(timeout=10)

    def _shutdown(self) -> None:
        if self.child is None:
            return
        log_event(self.cfg, "stopping_child", pid=self.child.proc.pid, reason=self.exit_reason)
        self.status.update(state="stopping")
        try:
            self.child.proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.child.proc.wait(self.cfg.daemon.shutdown_timeout)
        except subprocess.TimeoutExpired:
            self.child.killed_reason = "shutdown"
            self.child.proc.kill()
            self.child.proc.wait()
        self._handle_exit(self.child, self.child.proc.returncode)

    # ------------------------------------------------------------------ loop
    def tick(self) -> None:
        sd_notify("WATCHDOG=1")
        if self.child is not None:
            code = self.child.proc.poll()
            if code is not None:
                child, self.child = self.child, None
                self._handle_exit(child, code)
            else:
                self._check_stuck()
            return
        control = read_control(self.layout)
        if control.skip:
            consume_skip(self.layout)
            log_event(self.cfg, "skip_ignored", reason="no file is training")
        if control.desired == "stopped":
            self.exit_reason = f"stop requested ({control.reason})"
            self._idle_status("stopped")
            self.shutdown_requested.set()
            return
        if control.desired == "paused":
            self._idle_status("paused", reason=control.reason)
            return
        if self._backing_off() or not self._ready_to_train():
            return
        entry = self._claim()
        if entry is None:
            self._idle_status("idle")
            return
        self._spawn(entry)

    def _claim(self) -> QueueEntry | None:
        """The next file; one the latest checkpoint is mid-way through comes first, whatever its priority, because
        a trainer that starts another file ends that file's resume record (it would train from its start again)."""
        ckpt = latest_checkpoint(self.layout.current_model)
        current = ckpt.trainer_state().current_file if ckpt else None
        entry = self.queue.claim_next(resume_id=current.id if current else None)
        if entry is not None and current is not None and entry.id == current.id:
            log_event(self.cfg, "resume_first", file=entry.name, steps_done=current.steps_done,
                      global_step=ckpt.step)
        return entry

    def _backing_off(self) -> bool:
        """After a system fault no trainer starts until the streak's retry time (kept on disk across restarts)."""
        retry_at = crash_detector.fault_streak(self.fault_streak_path).retry_at
        if retry_at is None or time.time() >= retry_at:
            return False
        self._idle_status("blocked", reason="backing off after a system fault: next trainer start at "
                                            + time.strftime("%H:%M:%S UTC", time.gmtime(retry_at)))
        return True

    def _ready_to_train(self) -> bool:
        """File boundary: reload config (non-critical changes apply now), refuse critical changes, check disk."""
        try:
            fresh = load_config(self.config_path, self.overrides)
        except ConfigError as exc:
            return self._blocked(f"config.json invalid, keeping the last good config: {exc}", keep_config=True)
        if fresh.model_dump() != self.cfg.model_dump():
            log_event(self.cfg, "config_reloaded")
        problems = critical_problems(fresh)
        if problems:
            return self._blocked("critical config change refused: " + " | ".join(problems))
        self.cfg = fresh
        errors, warnings = disk_problems(self.cfg)
        if errors:
            self._free_disk()
            errors, warnings = disk_problems(self.cfg)
            if errors:
                return self._blocked("; ".join(errors))
        if self._blocked_reason:
            log_event(self.cfg, "unblocked", was=self._blocked_reason)
            self._blocked_reason = None
        return True

    def _blocked(self, reason: str, keep_config: bool = False) -> bool:
        if reason != self._blocked_reason:
            logger.error("%s", reason)
            log_event(self.cfg, "blocked", reason=reason)
            self._blocked_reason = reason
        self._idle_status("blocked", reason=reason)
        return False

    def _free_disk(self) -> None:
        try:
            freed = free_space(self.cfg)
            log_event(self.cfg, "disk_freed", detail=freed)
        except Exception:
            logger.exception("disk manager failed")

    def _idle_status(self, state: str, **extra) -> None:
        counts = {p: self.queue.count(p) for p in ("high", "normal", "low")}
        try:
            current = read_training_status(self.layout)
        except StateError as exc:
            logger.warning("%s: rewriting it", exc)
            current = None
        if current is not None and current.state == state and current.queue == counts and current.pid == os.getpid() \
                and time.time() - (current.updated_at or 0) < 5:
            return
        self.status.update(state=state, queue=counts, daemon_pid=os.getpid(), file=None, **extra)

    def _spawn(self, entry: QueueEntry) -> None:
        ckpt = latest_checkpoint(self.layout.current_model)
        step = ckpt.step if ckpt else 0
        entry = self.queue.update_meta(entry.name, attempt_step_start=step)
        cmd = [sys.executable, "-m", "trainer.child", "--file", str(entry.path), "--file-id", entry.id or entry.name,
               "--schema", entry.meta.schema_id or self.cfg.daemon.default_schema]
        if entry.meta.epochs:
            cmd += ["--epochs", str(entry.meta.epochs)]
        if self.config_path:
            cmd += ["--config", str(self.config_path)]
        for item in self.overrides + entry.meta.overrides:
            cmd += ["--set", item]
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        log = open(self.layout.logs / "trainer.log", "ab")
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        launch.clear_results(self.layout, launch.processes(self.cfg))
        proc = launch.start(self.cfg, cmd, log, env, str(REPO))  # one process, or the group of ranks
        log.close()
        self.child = Child(proc, entry, step)
        log_event(self.cfg, "training_started", file=entry.name, pid=proc.pid, attempt=entry.meta.attempts,
                  global_step=step, **({"pids": proc.pids} if isinstance(proc, launch.RankGroup) else {}))
        self.status.update(state="training", file=entry.name, daemon_pid=os.getpid(), trainer_pid=proc.pid)

    def _check_stuck(self) -> None:
        child = self.child
        if child.killed_reason:
            return
        verdict = launch.check_stuck(self.cfg, child.proc, child.started_at)  # every rank's heartbeat
        if verdict is None:
            return
        log_event(self.cfg, "stuck", file=child.entry.name, pid=verdict.pid, detail=str(verdict))
        how = anti_stuck_monitor.dump_stacks(verdict.pid, self.layout.logs / "trainer.log")
        child.killed_reason = "stuck"
        terminate(verdict.pid, 5, signal.SIGKILL)  # a group then kills its other ranks
        log_event(self.cfg, "stuck_child_killed", file=child.entry.name, stacks=how)

    # ------------------------------------------------------------------ exits
    def _handle_exit(self, child: Child, code: int) -> None:
        layout = self.layout
        result = launch.child_result(layout, child.proc)  # the result of the rank whose exit is the child's
        name = child.entry.name
        ckpt = latest_checkpoint(layout.current_model)
        step = ckpt.step if ckpt else 0
        kind = exit_kind(code)
        res = result.result if result else None
        progress = {"global_step": step, "steps_done": res.steps if res else None}
        if kind != "rejected":
            self._note_global_step_start(child.entry, res)
        if kind in ("completed", "interrupted", "rejected"):
            crash_detector.clear_fault_streak(self.fault_streak_path)  # the child started: the system works
        if kind == "completed":
            end = res.global_step_end if res else step
            self.queue.complete(name, global_step_end=end, stats=res.model_dump(mode="json") if res else {})
            log_event(self.cfg, "training_completed", file=name, global_step=end, status=res.status if res else None)
            if consume_stop_after_file(layout):
                log_event(self.cfg, "stop_after_file")
            return
        if kind == "rejected" and not child.entry.path.exists():
            log_event(self.cfg, "rejected_before_training", file=name, message=result.message if result else None)
            return
        if kind == "interrupted":
            skip = consume_skip(layout)
            if skip:
                self.queue.skip(name, skip.reason or "skipped by operator")
                log_event(self.cfg, "skipped", file=name, reason=skip.reason, global_step=step)
            else:
                message = result.message if result else None
                self.queue.requeue_front(name, progress=progress, reason=message or "interrupted")
                log_event(self.cfg, "training_interrupted", file=name, global_step=step, reason=message)
            return
        try:
            beat = read_heartbeat(layout)
        except StateError as exc:
            logger.warning("%s", exc)
            beat = None
        category, message = crash_detector.classify(
            code, result, _log_tail(layout.logs / "trainer.log"), child.killed_reason, beat)
        crash = crash_detector.record(crash_history_path(layout), code, category, message, name, step,
                                      started_training=_started_training(beat, child))
        log_event(self.cfg, "child_crashed", file=name, category=category, action=crash.action, message=message,
                  exit_code=code, global_step=step, blame=crash.blame, started_training=crash.started_training)
        if not (crash.action == crash_detector.SYSTEM_RETRY and step <= child.step_at_start):
            crash_detector.clear_fault_streak(self.fault_streak_path)
        self._act(crash, child, step)

    def _note_global_step_start(self, entry: QueueEntry, res: TrainedFile | None) -> None:
        """Set once, when it is durable: the global step of the file's first training step, from the engine's own
        record (the result of a finished or stopped run, else the checkpoint the file is mid-way through)."""
        if entry.meta.global_step_start is not None:
            return
        start = res.global_step_start if res is not None and res.steps else None
        if start is None:
            ckpt = latest_checkpoint(self.layout.current_model)
            current = ckpt.trainer_state().current_file if ckpt else None
            if entry.id and current is not None and current.id == entry.id and current.steps_done:
                start = current.global_step_start
        if start is not None:
            # the engine counts from the step before the file's first one; the sidecar names the first step itself
            self.queue.note_global_step_start(entry.name, int(start) + 1)

    def _system_fault(self, name: str, category: str, message: str) -> None:
        """Not the file's fault: back to the front with its attempts untouched; back off; pause after a crash loop."""
        self.queue.requeue_front(name, reason=f"system fault ({category}), not counted as an attempt: {message}")
        streak = crash_detector.note_system_fault(self.fault_streak_path, self.cfg.safety, category, message, name)
        limit = self.cfg.safety.crash_loop_faults
        log_event(self.cfg, "system_fault", file=name, category=category, message=message, faults_in_a_row=streak.count,
                  limit=limit, retry_at=streak.retry_at)
        if streak.count < limit:
            return
        causes = sorted({f.category for f in streak.faults})
        reason = (f"ALERT crash loop: {streak.count} system faults in a row ({', '.join(causes)}), the trainer could "
                  f"not train; last: {category}: {message}. Files stay queued; fix the cause, then resume")
        request(self.layout, "pause", reason=reason)
        log_event(self.cfg, "alert", kind="crash_loop", cause=category, message=message,
                  faults=[f.model_dump(mode="json") for f in streak.faults], file=name)
        crash_detector.clear_fault_streak(self.fault_streak_path)  # a resume starts a fresh count, without backoff

    def _act(self, crash, child: Child, step: int) -> None:
        name = child.entry.name
        action = crash.action
        if action == "fail":
            self.queue.fail(name, f"{crash.category}: {crash.message}", retryable=False)
        elif action == "shrink_batch_retry":
            entry = self.queue.find(name, ("processing",))
            t = self.cfg.training
            over = dict(item.split("=", 1) for item in entry.meta.overrides)
            micro = int(over.get("training.micro_batch_tokens", t.micro_batch_tokens))
            accum = int(over.get("training.gradient_accumulation_steps", t.gradient_accumulation_steps))
            if micro // 2 < self.cfg.model.max_length:
                self.queue.fail(name, f"{crash.category}: micro-batch cannot shrink below max_length "
                                      f"({micro} tokens): {crash.message}", retryable=False)
                return
            over.update({"training.micro_batch_tokens": str(micro // 2), "training.gradient_accumulation_steps": str(accum * 2)})
            self.queue.update_meta(name, overrides=[f"{k}={v}" for k, v in over.items()])
            self.queue.requeue_front(name, reason=f"{crash.category}: retry with micro-batch {micro // 2} x {accum * 2}")
            log_event(self.cfg, "batch_shrunk", file=name, micro_batch_tokens=micro // 2, accumulation=accum * 2)
        elif action == "free_disk_and_pause":
            self.queue.requeue_front(name, reason="disk full")
            self._free_disk()
            request(self.layout, "pause", reason=f"ALERT disk full: {crash.message}")
            log_event(self.cfg, "alert", kind="disk_full", message=crash.message)
        elif action == "pause":
            self.queue.requeue_front(name, reason=crash.category)
            request(self.layout, "pause", reason=f"ALERT {crash.category}: {crash.message}")
            log_event(self.cfg, "alert", kind=crash.category, message=crash.message)
        elif action == crash_detector.SYSTEM_RETRY and step <= child.step_at_start:
            self._system_fault(name, crash.category, crash.message)
        else:  # retry: an attempt counts only when it made no progress
            if step > child.step_at_start:
                self.queue.requeue_front(name, progress={"global_step": step}, reason=f"{crash.category} after progress")
            else:
                self.queue.fail(name, f"{crash.category}: {crash.message}", retryable=True)


def _started_training(beat: Heartbeat | None, child: Child) -> bool:
    """The child had begun its first training step: its heartbeat (written after it started) names that step."""
    return beat is not None and beat.ts >= child.started_at and beat.first_step is not None


def _log_tail(path: Path, n_bytes: int = 16_384) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, fh.seek(0, os.SEEK_END) - n_bytes))
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
