"""Inbox watcher: which files in inbox/ are complete and ready to be taken.

A file is ready when complete: an inotify close-after-write (or a rename into
place) for it, or its size and mtime unchanged for `daemon.settle_seconds`
while nobody has it open (an open writer vetoes the settle rule for at most
max(30 s, 10 x settle_seconds), so a lost event never strands a file). Hidden
files and `*.tmp` / `*.part` are ignored until renamed; files in subfolders
are found too. A `NAME.job.json` is ready with its `NAME.jsonl`, or alone as
an orphan after `daemon.orphan_sidecar_seconds`. Symlinks, directories named
`*.jsonl`, FIFOs, sockets and devices are reported at once, never followed.

watchdog's inotify observer wakes the loop; without inotify (or with
`daemon.inbox_observer = "polling"`) the inbox is scanned every
`daemon.poll_interval` and whenever a pending file is due to settle.
`core.ingest.Ingestor` takes what this module reports as ready.

Run as:
    imported by core.ingest (no entry point; `cadence ingest` watches inbox/)
"""
from __future__ import annotations

from pathlib import Path

import logging
import os
import re
import stat
import threading
import time
from dataclasses import dataclass

from core.state.queue_records import DATA_SUFFIX, JOB_SUFFIX, stem_of

logger = logging.getLogger(__name__)


class _BenignStopRace(logging.Filter):
    """watchdog logs an ERROR when its emitter is stopped while blocked in a read; nothing is lost."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_BenignStopRace())

IGNORED_SUFFIXES = (".tmp", ".part")
MAX_DEPTH = 8
MAX_NAME = 150
_SHELL_META = set(";&|$`<>\\\"'*?")
_UNSAFE_QUEUE_CHARS = re.compile(r"[^A-Za-z0-9._+@=,()-]")


def name_problem(rel_parts: list[str]) -> str | None:
    """Why a dropped file's path is refused (control characters, shell metacharacters, '..'), or None."""
    for part in rel_parts:
        if any(ord(c) < 32 or ord(c) == 127 or "\udc80" <= c <= "\udcff" for c in part):
            return f"{part!r}: control characters or bytes that are not UTF-8 in the name"
        bad = sorted(set(part) & _SHELL_META)
        if bad:
            return f"{part!r}: shell metacharacters {''.join(bad)!r} in the name; rename the file"
        if ".." in part:
            return f"{part!r}: '..' in the name; rename the file"
    return None


def queue_name(rel_parts: list[str]) -> str:
    """A safe, flat queue name for inbox/<rel_parts>: sub__dir__file.jsonl."""
    parts = [_UNSAFE_QUEUE_CHARS.sub("_", p) for p in rel_parts]
    stem = "__".join(stem_of(p) if i == len(parts) - 1 else p for i, p in enumerate(parts))
    while ".." in stem:
        stem = stem.replace("..", ".")
    stem = stem.lstrip(".-_") or "file"
    return stem[:MAX_NAME] + DATA_SUFFIX


@dataclass
class Ready:
    """Something in inbox/ to take now: a data file (with its sidecar, if any) or a stray to set aside."""

    kind: str  # data | symlink | directory | special file | orphan_sidecar
    parts: list[str]
    job_parts: list[str] | None = None

    @property
    def rel(self) -> str:
        return os.path.join(*self.parts)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class _InboxEvents:
    """watchdog handler: remembers close-after-write / rename-into-place and open counts per path; wakes the loop."""

    def __init__(self, inbox: Path, wake: threading.Event):
        self.inbox = inbox
        self.wake = wake
        self.lock = threading.Lock()
        self.closed: set[str] = set()
        self.open_count: dict[str, int] = {}

    def _rel(self, p) -> str | None:
        p = os.fsdecode(p)
        try:
            return os.path.relpath(p, self.inbox)
        except ValueError:
            return None

    def dispatch(self, event) -> None:
        kind = event.event_type
        if kind == "moved":
            # full events: a rename from outside the inbox has no source, one out of it has no destination
            src = self._rel(event.src_path) if event.src_path else None
            dest = self._rel(event.dest_path) if event.dest_path else None
            with self.lock:
                if src is not None:
                    self.closed.discard(src)
                if dest is not None and not dest.startswith(".."):
                    self.closed.add(dest)  # a rename into place is a finished file
            self.wake.set()
            return
        rel = self._rel(event.src_path)
        if rel is None:
            return
        with self.lock:
            if kind == "opened" and not event.is_directory:
                self.open_count[rel] = self.open_count.get(rel, 0) + 1
                return
            if kind in ("closed", "closed_no_write"):
                self.open_count[rel] = max(0, self.open_count.get(rel, 0) - 1)
                if kind == "closed":
                    self.closed.add(rel)
            elif kind == "modified":
                self.closed.discard(rel)
                return
            elif kind == "deleted":
                self.closed.discard(rel)
                self.open_count.pop(rel, None)
        self.wake.set()

    def is_open(self, rel: str) -> bool:
        with self.lock:
            return self.open_count.get(rel, 0) > 0

    def take_closed(self, rel: str) -> bool:
        with self.lock:
            return rel in self.closed

    def prune(self, exists) -> None:
        """Drop what is remembered about paths that no longer exist."""
        with self.lock:
            for rel in [r for r in self.closed if not exists(r)]:
                self.closed.discard(rel)
            for rel in [r for r in self.open_count if not exists(r)]:
                self.open_count.pop(rel, None)

    def forget(self, rel: str) -> None:
        with self.lock:
            self.closed.discard(rel)
            self.open_count.pop(rel, None)


class InboxWatcher:
    """Watches inbox/ and says what is ready; keeps no state on disk."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.inbox = cfg.layout.inbox
        self.wake = threading.Event()
        self.events = _InboxEvents(self.inbox, self.wake)
        self.observer = None
        self.next_due: float | None = None
        self._seen: dict[str, _Seen] = {}
        self._sidecar_since: dict[str, float] = {}  # when each NAME.job.json without its NAME.jsonl was first seen

    def start_observer(self) -> bool:
        """inotify observer on inbox/ (recursive); False when unavailable (polling only)."""
        if self.cfg.daemon.inbox_observer == "polling" or self.observer is not None:
            return self.observer is not None
        try:
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver(generate_full_events=True)  # moves into the inbox arrive as moves
            observer.schedule(self.events, str(self.inbox), recursive=True)
            observer.start()
        except Exception as exc:  # noqa: BLE001 - any failure means: poll instead
            logger.warning("inotify unavailable for %s (%s): polling every %.0fs", self.inbox, exc,
                           self.cfg.daemon.poll_interval)
            return False
        self.observer = observer
        return True

    def stop_observer(self) -> None:
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=5)
            self.observer = None

    def wait(self, stop_event: threading.Event) -> None:
        """Sleep until an inotify event, a pending file's settle time, poll_interval, or stop_event."""
        timeout = self.cfg.daemon.poll_interval
        if self.next_due is not None:
            timeout = min(timeout, max(0.05, self.next_due - time.time()))
        deadline = time.time() + timeout
        while not stop_event.is_set() and not self.wake.is_set() and time.time() < deadline:
            self.wake.wait(min(0.25, max(0.0, deadline - time.time())))

    def ready(self, now: float | None = None) -> list[Ready]:
        """Everything to take now: strays first, then complete data files, then orphan sidecars."""
        now = time.time() if now is None else now
        self.wake.clear()
        self.next_due = None
        data, sidecars, strays = [], {}, []
        self._walk(self.inbox, [], data, sidecars, strays)
        out = [Ready(kind, parts) for parts, kind in strays]
        seen_now = set()
        for parts in data:
            rel = os.path.join(*parts)
            seen_now.add(rel)
            job_parts = parts[:-1] + [stem_of(parts[-1]) + JOB_SUFFIX]
            job_rel = os.path.join(*job_parts)
            has_job = job_rel in sidecars
            if not self._complete(rel, now) or (has_job and not self._complete(job_rel, now)):
                continue
            sidecars.pop(job_rel, None)
            out.append(Ready("data", parts, job_parts if has_job else None))
        for job_rel, parts in sidecars.items():
            seen_now.add(job_rel)
            since = self._sidecar_since.setdefault(job_rel, now)
            due = since + self.cfg.daemon.orphan_sidecar_seconds
            if now >= due and self._complete(job_rel, now):
                out.append(Ready("orphan_sidecar", parts))
            else:
                self.next_due = due if self.next_due is None else min(self.next_due, due)
        for item in out:
            self.events.forget(item.rel)
            self._seen.pop(item.rel, None)
        for rel in list(self._seen):
            if rel not in seen_now:
                del self._seen[rel]
        for rel in list(self._sidecar_since):
            if rel not in sidecars:
                del self._sidecar_since[rel]
        self.events.prune(lambda rel: os.path.lexists(self.inbox / rel))
        return out

    def _walk(self, folder: Path, parts: list[str], data: list, sidecars: dict, strays: list) -> None:
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            logger.warning("cannot list %s: %s", folder, exc)
            return
        for e in sorted(entries, key=lambda e: e.name):
            name = e.name
            if name.startswith(".") or name.endswith(IGNORED_SUFFIXES):
                continue
            p = parts + [name]
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                strays.append((p, "symlink"))
            elif stat.S_ISDIR(st.st_mode):
                if name.endswith(DATA_SUFFIX) or len(p) > MAX_DEPTH:
                    strays.append((p, "directory"))
                else:
                    self._walk(Path(e.path), p, data, sidecars, strays)
            elif not stat.S_ISREG(st.st_mode):
                strays.append((p, "special file"))
            elif name.endswith(JOB_SUFFIX):
                sidecars[os.path.join(*p)] = p
            elif name.endswith(DATA_SUFFIX):
                data.append(p)
            else:
                data.append(p)  # rejected for its extension once complete

    def _complete(self, rel: str, now: float) -> bool:
        try:
            st = os.lstat(self.inbox / rel)
        except FileNotFoundError:
            return False
        if self.events.take_closed(rel) and not self.events.is_open(rel):
            return True
        prev = self._seen.get(rel)
        if prev is None or (prev.size, prev.mtime_ns) != (st.st_size, st.st_mtime_ns):
            self._seen[rel] = prev = _Seen(st.st_size, st.st_mtime_ns, now)
        stable = now - prev.since
        settle = self.cfg.daemon.settle_seconds
        # an open writer vetoes the settle rule, but not forever: a lost inotify event must not strand a file
        is_open = self.events.is_open(rel)
        wait = max(30.0, 10 * settle) if is_open else settle
        if stable >= wait:
            return True
        due = prev.since + wait  # its close event wakes the loop earlier
        self.next_due = due if self.next_due is None else min(self.next_due, due)
        return False
