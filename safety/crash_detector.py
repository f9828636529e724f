"""Classify every training-child exit and decide what the daemon does about it.

Categories: cuda_oom, cpu_oom (the kernel's OOM killer), cuda_error, nan_loss,
disk_full, data_error, config_error, import_error, killed, segfault, stuck,
unknown — from the exit code, the signal, the child's result file and the tail
of its log. Every classification is appended to `status/crash_history.jsonl`.

Each category is also blamed on the system or on the file (ACTIONS). A system
fault is not an attempt of the file: it goes back to the front of its queue with
its attempts untouched, the daemon backs off, and after `safety.crash_loop_faults`
system faults in a row (kept in `status/fault_streak.json`, so a restarted daemon
goes on counting) it pauses itself with an alert naming the cause.

Run as:
    cadence crashes [--json] [-n 20]
"""
from __future__ import annotations

import re
import signal
import time
from pathlib import Path

from core.state.child_result import ChildResult
from core.state.faults import (Crash, FaultStreak, StreakFault, append_crash,
                               fault_streak_path, read_crashes, read_fault_streak, write_fault_streak)
from core.state.heartbeat import Heartbeat

CATEGORIES = ("cuda_oom", "cpu_oom", "cuda_error", "nan_loss", "disk_full", "data_error", "config_error",
              "import_error", "killed", "segfault", "stuck", "unknown")

_LOG_PATTERNS = [
    ("cuda_oom", re.compile(r"CUDA out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.I)),
    ("cuda_error", re.compile(r"CUDA error|cudaError|device-side assert|NCCL error", re.I)),
    ("disk_full", re.compile(r"No space left on device|ENOSPC|disk full", re.I)),
    ("import_error", re.compile(r"ModuleNotFoundError|ImportError", re.I)),
    ("nan_loss", re.compile(r"loss is nan|loss is inf|NonFiniteLoss", re.I)),
    ("cpu_oom", re.compile(r"MemoryError|Cannot allocate memory", re.I)),
]

# What the daemon does next, per category, and whom an exit without checkpoint progress is blamed on.
# blame: "file" = the data (counts an attempt of the file); "system" = never the data (backoff, crash-loop pause,
# the file keeps its attempts); "startup" = the system while the child has not begun its first training step
# (imports, model and checkpoint load are the same for every file; a file that cannot be read or tokenised raises a
# data error, which stays the file's), the file after it.
ACTIONS = {
    #  category       action                  blame
    "cuda_oom":     ("shrink_batch_retry",  "startup"),  # halve the micro-batch, double accumulation, retry; at load
                                                         # it is the GPU's memory, which no batch size changes
    "cpu_oom":      ("shrink_batch_retry",  "startup"),
    "cuda_error":   ("retry",               "startup"),  # a driver/device fault at start-up is the box; mid-file it
                                                         # may be a kernel fed by this data (device-side assert)
    "nan_loss":     ("fail",                "file"),     # the same data would diverge again
    "disk_full":    ("free_disk_and_pause", "system"),
    "data_error":   ("fail",                "file"),     # no retry: the file is bad, even before the first step
    "config_error": ("pause",               "system"),   # an operator must fix the config
    "import_error": ("pause",               "system"),   # a broken install starts no trainer for any file
    "killed":       ("retry",               "system"),   # a signal from outside (an operator, a supervisor, the OOM
                                                         # killer without RAM evidence) is never the data's doing
    "segfault":     ("retry",               "startup"),  # native code crashing before any step is the install/box
    "stuck":        ("retry",               "startup"),  # hung at load: a filesystem or lock; mid-file: maybe this data
    "unknown":      ("retry",               "startup"),  # an exception before the first step is in the start-up path
}
# A retry-type action blamed on the system becomes this: requeue at the front, attempts untouched, back off.
SYSTEM_RETRY = "system_retry"


def decide(category: str, started_training: bool) -> tuple[str, str]:
    """(action, blame) for one exit; `started_training`: the child had begun its first training step."""
    action, blame = ACTIONS[category]
    if blame == "startup":
        blame = "file" if started_training else "system"
    if blame == "system" and action in ("retry", "shrink_batch_retry"):
        action = SYSTEM_RETRY
    return action, blame


def classify(exit_code: int | None, result: ChildResult | None = None, log_tail: str = "",
             killed_by_us: str | None = None, heartbeat: Heartbeat | None = None) -> tuple[str, str]:
    """(category, message) for one child exit. `killed_by_us` is the reason the daemon killed it ('stuck', 'shutdown')."""
    if killed_by_us == "stuck":
        return "stuck", "no heartbeat progress: killed by the anti-stuck monitor"
    if result and result.category not in ("completed", "interrupted", "unknown"):
        cat = {"oom": "cuda_oom" if "cuda" in (result.message or "").lower() else "cpu_oom"}.get(
            result.category, result.category)
        return cat, result.message or cat
    text = "\n".join(filter(None, [result and result.message, result and result.traceback, log_tail]))
    for cat, rx in _LOG_PATTERNS:
        if rx.search(text):
            line = next((l for l in text.splitlines()[::-1] if rx.search(l)), cat)
            return cat, line.strip()[:500]
    if exit_code is not None and exit_code < 0:
        sig = -exit_code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGKILL and not killed_by_us:
            ram = heartbeat.ram_pct if heartbeat else None
            if ram is not None and ram > 90:
                return "cpu_oom", f"SIGKILL with RAM at {ram}%: the kernel's OOM killer"
            return "killed", "SIGKILL from outside Cadence (OOM killer or an operator)"
        if sig == signal.SIGSEGV:
            return "segfault", "segmentation fault"
        return "killed", f"terminated by {name}"
    if result and result.category == "unknown":
        return "unknown", result.message or "unknown error"
    return "unknown", f"exit code {exit_code} without a result"


def signal_name(exit_code: int | None) -> str | None:
    if exit_code is None or exit_code >= 0:
        return None
    try:
        return signal.Signals(-exit_code).name
    except ValueError:
        return str(-exit_code)


def record(history_path: Path, exit_code: int | None, category: str, message: str, file: str | None,
           global_step: int | None, started_training: bool = True) -> Crash:
    action, blame = decide(category, started_training)
    crash = Crash(category=category, action=action, exit_code=exit_code, signal=signal_name(exit_code),
                  message=message, file=file, global_step=global_step, ts=time.time(), blame=blame,
                  started_training=started_training)
    append_crash(history_path, crash)
    return crash


def streak_path(layout) -> Path:
    return fault_streak_path(layout)


def fault_streak(path: Path) -> FaultStreak:
    """System faults in a row, when the next start may come, and the faults themselves."""
    return read_fault_streak(path)


def note_system_fault(path: Path, safety, category: str, message: str, file: str | None,
                      now: float | None = None) -> FaultStreak:
    """One more system fault: the streak grows and the next start waits `system_fault_backoff_seconds` x 2^(n-1)
    (capped), so a box that cannot start a trainer is not hammered; the caller pauses at `crash_loop_faults`."""
    now = time.time() if now is None else now
    streak = fault_streak(path)
    count = streak.count + 1
    delay = min(safety.system_fault_backoff_seconds * 2 ** (count - 1), safety.system_fault_backoff_max_seconds)
    faults = (streak.faults + [StreakFault(ts=now, category=category, message=message, file=file)])[-count:]
    rec = FaultStreak(count=count, retry_at=now + delay, faults=faults)
    write_fault_streak(path, rec)
    return rec


def clear_fault_streak(path: Path) -> None:
    """The system trained, or a fault was the file's: the next system fault starts a new streak."""
    streak = fault_streak(path)
    if streak.count or streak.retry_at:
        write_fault_streak(path, FaultStreak())


def history(history_path: Path, n: int = 20) -> list[Crash]:
    """The last `n` recorded crashes, oldest first."""
    return read_crashes(history_path)[-n:] if n > 0 else []

