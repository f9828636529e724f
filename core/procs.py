"""Processes by recorded pid: pid files, liveness, single-instance locks, graceful-then-forced stops.

Nothing here looks processes up by name (the original system's watchdog did and
found nothing). A pid file holds the pid alone and is removed on clean exit; a
stale one (dead pid) is never trusted. Single instance is an OS lock (flock) on
`<name>.lock`, released by the kernel when the holder dies, however it dies.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import time
from pathlib import Path

import psutil

from core.atomic_io import atomic_write_text


class AlreadyRunning(RuntimeError):
    """Another instance holds the lock."""


def write_pid(path: Path, pid: int | None = None) -> None:
    atomic_write_text(path, f"{pid or os.getpid()}\n")


def read_pid(path: Path) -> int | None:
    try:
        text = Path(path).read_text().strip()
        return int(text) if text else None
    except (FileNotFoundError, ValueError):
        return None


def remove_pid(path: Path, pid: int | None = None) -> None:
    """Remove the pid file if it still names `pid` (default: this process)."""
    if read_pid(path) == (pid or os.getpid()):
        try:
            Path(path).unlink()
        except FileNotFoundError:
            pass


def pid_alive(pid: int | None) -> bool:
    if not pid or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def live_pid(path: Path) -> int | None:
    pid = read_pid(path)
    return pid if pid_alive(pid) else None


class InstanceLock:
    """flock-based single-instance guard; the kernel releases it if the holder dies."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None

    def acquire(self) -> "InstanceLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyRunning(f"{self.path}: held by another process") from None
            raise
        os.set_inheritable(fd, False)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def is_held_elsewhere(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        except OSError:
            return True
        finally:
            os.close(fd)


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    return not pid_alive(pid)


def terminate(pid: int, timeout: float, sig: int = signal.SIGTERM) -> str:
    """Send `sig`, wait up to `timeout`, then SIGKILL. Returns 'gone' | 'terminated' | 'killed'."""
    if not pid_alive(pid):
        return "gone"
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return "gone"
    if wait_dead(pid, timeout):
        return "terminated"
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return "terminated"
    wait_dead(pid, 10)
    return "killed"


def set_parent_death_signal(sig: int = signal.SIGTERM) -> bool:
    """Linux: ask the kernel to send `sig` to this process when its parent dies (no orphaned trainers)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, sig) == 0
    except OSError:
        return False
