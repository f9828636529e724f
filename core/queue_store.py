"""The training queue on disk: one folder per state, a state change is a rename.

    queue/high, normal, low/       waiting, FIFO within a priority (high first)
                                   (the file a checkpoint is mid-way through before all: claim_next)
    queue/processing/              claimed by a trainer
    queue/recently_completed/      trained
    queue/failed/                  out of attempts, or skipped (every error kept)
    queue/rejected/                refused by validation (NAME.reason.json says why)
    queue/deferred/                set aside, not trained yet (a skill level already passed): `retry` brings it back

Each `NAME.jsonl` travels with `NAME.meta.json` (rewritten atomically at each
transition), and with `NAME.job.json` / `NAME.reason.json` when it has them.
The data file's rename is the commit point: claiming is `os.rename` into
processing/, so of two processes claiming the same file exactly one wins. The
id of a file is the sha256 of its content; the same content queued again is a
duplicate (named in the error) unless forced.

Run as:
    cadence queue add FILE [--priority high|normal|low] [--schema ID] [--force] [--json]
    cadence queue status [--json]
    cadence queue list [--state STATE] [--json]
    cadence queue show NAME [--json]
    cadence queue set-priority NAME high|normal|low
    cadence queue retry NAME [--priority P]      # failed, rejected or deferred files
    cadence queue remove NAME
    python3 core/training_queue.py ...        (the seed path, the same command)
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterable

from core.atomic_io import fsync_dir
from core.manifest import sha256_file
from core.state.events import append_event
from core.state.base import StateError
from core.state.queue_records import (DATA_SUFFIX, META_SUFFIX, PARKED, PRIORITIES, SIDECAR_KINDS, SIDECAR_SUFFIXES,
                                      STATES, TERMINAL, ErrorEntry, HistoryEntry, JobSidecar, QueueMeta, RejectReport,
                                      read_queue_meta, read_reject_report, sidecar_path, stem_of, write_queue_meta)

# the queue's own names (PRIORITIES, STATES, ...) are imported from here by its users
__all__ = ["PRIORITIES", "STATES", "TERMINAL", "PARKED", "DATA_SUFFIX", "DUPLICATE_STATES", "stem_of", "now_iso",
           "data_file_names", "QueueError", "DuplicateError", "MovedMeanwhile", "QueueEntry", "TrainingQueue",
           "place_file"]

logger = logging.getLogger(__name__)

# A file already in one of these is what "the same content again" collides with (a rejected one may come back).
DUPLICATE_STATES = PRIORITIES + ("processing", "recently_completed", "failed") + PARKED


def now_iso(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def data_file_names(folder: str | os.PathLike) -> list[str]:
    """The data files (`NAME.jsonl`, not hidden) in one queue folder, in no particular order."""
    try:
        return [e.name for e in os.scandir(folder) if e.name.endswith(DATA_SUFFIX) and not e.name.startswith(".")]
    except FileNotFoundError:
        return []


class QueueError(Exception):
    """A queue operation that cannot be done; the message says why."""


class DuplicateError(QueueError):
    def __init__(self, file_id: str, original: "QueueEntry"):
        self.file_id = file_id
        self.original = original
        super().__init__(f"same content (sha256 {file_id[:12]}) is already {original.state}: "
                         f"{original.state}/{original.name} (originally {original.meta.original_name!r})")


class MovedMeanwhile(QueueError):
    """The file was moved by another process between looking and renaming (a lost race, not an error)."""


@dataclass
class QueueEntry:
    name: str
    state: str
    meta: QueueMeta
    path: Path

    @property
    def id(self) -> str | None:
        return self.meta.id

    @property
    def priority(self) -> str:
        return self.meta.priority or "normal"

    def sidecar(self, kind: str) -> Path:
        return sidecar_path(self.path, kind)


class TrainingQueue:
    """Library for the daemon, the ingestor and the CLI; every operation is safe across processes."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.layout = cfg.layout
        self.qcfg = cfg.queue
        for state in STATES:
            self.layout.queue_dir(state).mkdir(parents=True, exist_ok=True)

    # ----------------------------------------------------------- inspection
    def dir(self, state: str) -> Path:
        return self.layout.queue_dir(state)

    def _sidecar(self, state: str, name: str, kind: str) -> Path:
        return sidecar_path(self.dir(state) / name, kind)

    def _names(self, state: str) -> list[str]:
        return data_file_names(self.dir(state))

    def count(self, state: str) -> int:
        """Data files in one state, without reading their sidecars (cheap enough for every daemon tick)."""
        return len(self._names(state))

    def _read_meta(self, state: str, name: str) -> QueueMeta | None:
        path = self._sidecar(state, name, "meta")
        try:
            return read_queue_meta(path)
        except StateError as exc:
            logger.warning("ignoring an unreadable queue sidecar: %s", exc)
            return None

    def _entry(self, state: str, name: str) -> QueueEntry:
        meta = self._read_meta(state, name)
        if meta is None:
            # mid-transition (the sidecar follows the data file), written by hand, or a file an older version
            # set aside without one (queue/deferred/): find or synthesise it
            meta = next((m for s in STATES if s != state and (m := self._read_meta(s, name)) is not None), None) \
                or QueueMeta(original_name=name, priority=state if state in PRIORITIES else "normal")
        return QueueEntry(name, state, meta, self.dir(state) / name)

    def entries(self, states: Iterable[str] = STATES) -> list[QueueEntry]:
        out = []
        for state in states:
            items = [self._entry(state, n) for n in self._names(state)]
            items.sort(key=lambda e: (e.meta.order, e.name))
            out.extend(items)
        return out

    def find(self, key: str, states: Iterable[str] = STATES) -> QueueEntry:
        """An entry by queue name (with or without .jsonl), original name, or id prefix (8+ hex chars)."""
        name = key if key.endswith(DATA_SUFFIX) else key + DATA_SUFFIX
        states = tuple(states)
        for state in states:
            if (self.dir(state) / name).is_file():
                return self._entry(state, name)
        matches = [e for e in self.entries(states)
                   if e.meta.original_name == key or (len(key) >= 8 and (e.id or "").startswith(key))]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise QueueError(f"{key!r} is ambiguous: " + ", ".join(f"{m.state}/{m.name}" for m in matches))
        raise QueueError(f"{key!r}: no such file in {', '.join(states)}")

    def find_by_id(self, file_id: str, states: Iterable[str] = DUPLICATE_STATES) -> QueueEntry | None:
        for state in states:
            for p in self.dir(state).glob(f"*{META_SUFFIX}"):
                name = p.name[: -len(META_SUFFIX)] + DATA_SUFFIX
                meta = self._read_meta(state, name)
                if meta is not None and meta.id == file_id and (self.dir(state) / name).exists():
                    return QueueEntry(name, state, meta, self.dir(state) / name)
        return None

    def status(self) -> dict:
        counts = {s: self.count(s) for s in STATES}
        waiting = self.entries(PRIORITIES)
        now = time.time()
        ready = [e for e in waiting if (e.meta.not_before or 0) <= now]
        return {
            "counts": counts,
            "waiting": sum(counts[p] for p in PRIORITIES),
            "processing": [self._brief(e) for e in self.entries(("processing",))],
            "next": self._brief(self._next_ready()) if ready else None,
            "backing_off": len(waiting) - len(ready),
        }

    @staticmethod
    def _brief(e: QueueEntry | None) -> dict | None:
        if e is None:
            return None
        m = e.meta
        return {"name": e.name, "state": e.state, "priority": m.priority, "id": m.id,
                "original_name": m.original_name, "attempts": m.attempts,
                "examples": m.validation.examples, "enqueued_at": m.enqueued_at}

    def _next_ready(self, now: float | None = None) -> QueueEntry | None:
        now = time.time() if now is None else now
        for prio in PRIORITIES:
            for e in self.entries((prio,)):
                if (e.meta.not_before or 0) <= now:
                    return e
        return None

    # ---------------------------------------------------------- transitions
    def _event(self, event: str, entry: QueueEntry, **extra) -> None:
        try:
            append_event(self.layout, event, source="queue", at=now_iso(), file=entry.name, state=entry.state, id=entry.id,
                         **extra)
        except OSError:
            logger.warning("cannot append to %s", self.layout.events, exc_info=True)

    def _move(self, entry: QueueEntry, dst: str, event: str, *, reason: str | None = None, new_name: str | None = None,
              **updates) -> QueueEntry:
        """Rename the data file (the commit point), then write the sidecar beside it and move the others.

        `new_name` renames the file on the way (a file set aside into a folder that already holds its name: only
        a file placed by hand or by an older version can collide, because the queue keeps names unique)."""
        src = entry.state
        name = new_name or entry.name
        src_path, dst_path = self.dir(src) / entry.name, self.dir(dst) / name
        if (dst != src or name != entry.name) and os.path.lexists(dst_path):
            # names are unique across states, so this is another process that moved the same file first
            raise MovedMeanwhile(f"{dst}/{name} already exists")
        try:
            os.rename(src_path, dst_path)
        except FileNotFoundError:
            raise MovedMeanwhile(f"{src}/{entry.name} was moved by another process") from None
        step = HistoryEntry(at=now_iso(), from_=src, to=dst, event=event, reason=reason)
        meta = entry.meta.changed(**updates, state=dst, history=[*entry.meta.history, step],
                                  **({"name": name} if new_name else {}))
        new = QueueEntry(name, dst, meta, dst_path)
        write_queue_meta(self._sidecar(dst, name, "meta"), meta)
        if dst != src or name != entry.name:
            try:
                os.unlink(self._sidecar(src, entry.name, "meta"))
            except FileNotFoundError:
                pass
            for kind in ("job", "reason"):
                p = self._sidecar(src, entry.name, kind)
                if p.exists():
                    os.replace(p, self._sidecar(dst, name, kind))
        fsync_dir(self.dir(dst))
        extra = {"from": src} if src != dst else {}
        if new_name:
            extra["renamed_from"] = entry.name
        if reason is not None:
            extra["reason"] = reason
        self._event(event, new, **extra)
        return new

    def _rewrite(self, entry: QueueEntry, **updates) -> QueueEntry:
        meta = entry.meta.changed(**updates)
        write_queue_meta(self._sidecar(entry.state, entry.name, "meta"), meta)
        return QueueEntry(entry.name, entry.state, meta, entry.path)

    def unique_name(self, desired: str) -> str:
        """`desired` (a safe file name ending .jsonl), or `stem-2.jsonl`, ... not used in any state."""
        stem = stem_of(desired)
        taken = set()
        for state in STATES:
            taken.update(self._names(state))
        name, n = stem + DATA_SUFFIX, 1
        while name in taken:
            n += 1
            name = f"{stem}-{n}{DATA_SUFFIX}"
        return name

    def enqueue(self, src: str | os.PathLike, *, file_id: str, original_name: str, schema_id: str,
                priority: str = "normal", validation: dict | None = None, job: JobSidecar | None = None,
                job_path: str | os.PathLike | None = None, name: str | None = None, force: bool = False) -> QueueEntry:
        """Move an accepted file into queue/<priority>/ (DuplicateError if its content is already known)."""
        if priority not in PRIORITIES:
            raise QueueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
        if not force:
            original = self.find_by_id(file_id)
            if original is not None:
                raise DuplicateError(file_id, original)
        t = time.time()
        job = job or JobSidecar()
        for _ in range(20):
            qname = self.unique_name(name or Path(src).name)
            dst = self.dir(priority) / qname
            try:
                # the data file first: claimers skip a waiting file until its sidecar is beside it
                place_file(src, dst)
            except FileExistsError:
                continue  # another process took the name meanwhile
            meta = QueueMeta(
                id=file_id, name=qname, original_name=original_name, schema_id=schema_id, priority=priority,
                state=priority, enqueued_at=now_iso(t), validation=validation or {}, epochs=job.epochs,
                tags=job.tags, notes=job.notes, order=t, forced=force,
                history=[HistoryEntry(at=now_iso(t), from_="inbox", to=priority, event="enqueued")])
            write_queue_meta(self._sidecar(priority, qname, "meta"), meta)
            if job_path is not None and Path(job_path).exists():
                os.replace(job_path, self._sidecar(priority, qname, "job"))
            entry = QueueEntry(qname, priority, meta, dst)
            self._event("enqueued", entry, original_name=original_name)
            return entry
        raise QueueError(f"could not find a free queue name for {name or src}")

    def claim_next(self, now: float | None = None, resume_id: str | None = None) -> QueueEntry | None:
        """The oldest ready file of the highest priority, renamed into processing/ (None if nothing is ready).

        `resume_id` is the file the latest checkpoint is mid-way through: while it waits in a priority folder it is
        claimed before any other (priority and FIFO do not apply) and nothing else is claimed during its backoff,
        because a trainer that starts another file ends that file's resume record and it would be trained twice."""
        now = time.time() if now is None else now
        if resume_id:
            resume = self.find_by_id(resume_id, PRIORITIES)
            if resume is not None:
                if (resume.meta.not_before or 0) > now:
                    return None
                try:
                    return self._move(resume, "processing", "claimed", started_at=now_iso(now),
                                      attempts=resume.meta.attempts + 1, claimed_by=os.getpid())
                except MovedMeanwhile:
                    return None  # another process claimed it: still nothing else may start before it
        for prio in PRIORITIES:
            for e in self.entries((prio,)):
                if (e.meta.not_before or 0) > now or not e.sidecar("meta").exists():
                    continue
                try:
                    return self._move(e, "processing", "claimed", started_at=now_iso(now),
                                      attempts=e.meta.attempts + 1, claimed_by=os.getpid())
                except MovedMeanwhile:
                    continue  # another process claimed it first
        return None

    def _processing(self, name: str) -> QueueEntry:
        return self.find(name, ("processing",))

    def complete(self, name: str, *, global_step_end: int | None = None, stats: dict | None = None) -> QueueEntry:
        e = self._processing(name)
        return self._move(e, "recently_completed", "completed", finished_at=now_iso(),
                          global_step_end=global_step_end, result=stats or e.meta.result)

    def fail(self, name: str, error: str, *, retryable: bool = True, now: float | None = None) -> QueueEntry:
        """A failed attempt: back to its priority after a backoff, or to failed/ after max_attempts."""
        now = time.time() if now is None else now
        e = self._processing(name)
        attempts = max(e.meta.attempts, 1)
        errors = [*e.meta.errors, ErrorEntry(at=now_iso(now), attempt=attempts, error=str(error))]
        if retryable and attempts < self.qcfg.max_attempts:
            delay = self.qcfg.retry_backoff_seconds * 2 ** (attempts - 1)
            return self._move(e, e.priority, "retry", errors=errors, not_before=now + delay,
                              retry_at=now_iso(now + delay))
        return self._move(e, "failed", "failed", errors=errors, finished_at=now_iso(now))

    def requeue_front(self, name: str, progress: dict | None = None, reason: str = "interrupted") -> QueueEntry:
        """Stop mid-file: back to the FRONT of its priority with its progress kept; not a failed attempt."""
        e = self._processing(name)
        return self._move(e, e.priority, "requeued", order=self._front_order(e.priority),
                          attempts=max(0, e.meta.attempts - 1), not_before=None,
                          progress=progress if progress is not None else e.meta.progress,
                          interruptions=e.meta.interruptions + 1, last_interruption=reason)

    def _front_order(self, prio: str) -> float:
        orders = [e.meta.order for e in self.entries((prio,))]
        return min(orders + [time.time()]) - 1.0

    def skip(self, name: str, reason: str) -> QueueEntry:
        """Set a waiting or processing file aside into failed/ with the reason; `retry` brings it back."""
        e = self.find(name, PRIORITIES + ("processing",))
        errors = [*e.meta.errors, ErrorEntry(at=now_iso(), error=f"skipped: {reason}")]
        return self._move(e, "failed", "skipped", errors=errors, skipped=True, finished_at=now_iso())

    def reject(self, name: str, report) -> QueueEntry:
        """A queued or processing file refused by a later validation level (STANDARD): to rejected/ with its report."""
        e = self.find(name, PRIORITIES + ("processing",))
        report.write(self._sidecar(e.state, e.name, "reason"))
        errors = [*e.meta.errors, ErrorEntry(at=now_iso(), error=report.summary())]
        return self._move(e, "rejected", "rejected", errors=errors, finished_at=now_iso())

    def reject_report(self, entry: QueueEntry) -> RejectReport | None:
        """The file's NAME.reason.json (None without one; StateError when it is not a valid report)."""
        return read_reject_report(entry.sidecar("reason"))

    def note_global_step_start(self, name: str, global_step: int) -> QueueEntry:
        """Record the global step of the file's first training step, once: a resume keeps the first value."""
        e = self.find(name)
        if e.meta.global_step_start is not None:
            return e
        return self._rewrite(e, global_step_start=int(global_step))

    def update_meta(self, name: str, **fields: Any) -> QueueEntry:
        """Record fields (global_step_start, validation, progress...) in a file's sidecar in place."""
        return self._rewrite(self.find(name), **fields)

    def set_priority(self, name: str, priority: str) -> QueueEntry:
        if priority not in PRIORITIES:
            raise QueueError(f"priority must be one of {PRIORITIES}")
        e = self.find(name)
        if e.state not in PRIORITIES:
            raise QueueError(f"{e.name} is {e.state}: only waiting files change priority (use retry for failed ones)")
        if e.state == priority:
            return e
        return self._move(e, priority, "priority", priority=priority)

    def defer(self, name: str, reason: str) -> QueueEntry:
        """Set a waiting file aside into deferred/ with the reason (not trained, not failed); `retry` brings it back.
        A name already taken in deferred/ (only an older version or a hand could do that) gets a free one."""
        e = self.find(name, PRIORITIES)
        new_name = self.unique_name(e.name) if (self.dir("deferred") / e.name).exists() else None
        return self._move(e, "deferred", "deferred", reason=reason, new_name=new_name, deferred_at=now_iso(),
                          deferred_reason=reason)

    def retry(self, name: str, priority: str | None = None) -> QueueEntry:
        """failed/ or deferred/ -> its priority with attempts reset; rejected/ -> back to inbox/ to be validated
        again."""
        e = self.find(name, ("failed", "rejected") + PARKED)
        if e.state == "rejected":
            inbox = self.layout.inbox
            target = inbox / e.name
            if target.exists():
                raise QueueError(f"inbox/{e.name} already exists")
            job = e.sidecar("job")
            if job.exists():
                os.replace(job, sidecar_path(target, "job"))
            os.rename(e.path, target)
            for kind in ("meta", "reason"):
                try:
                    os.unlink(e.sidecar(kind))
                except FileNotFoundError:
                    pass
            self._event("retry", e, to="inbox")
            return QueueEntry(e.name, "inbox", e.meta, target)
        prio = priority or e.priority
        return self._move(e, prio, "retry", priority=prio, attempts=0, not_before=None, skipped=False,
                          finished_at=None, order=time.time())

    def remove(self, name: str) -> QueueEntry:
        """Delete a waiting or finished file and its sidecars (never the one in processing/)."""
        e = self.find(name)
        if e.state == "processing":
            raise QueueError(f"{e.name} is being trained: stop or skip it with the controller first")
        os.unlink(e.path)
        for kind in SIDECAR_KINDS:
            try:
                os.unlink(e.sidecar(kind))
            except FileNotFoundError:
                pass
        self._event("removed", e)
        return e

    def recover_processing(self, count_as_attempt: bool = True) -> list[QueueEntry]:
        """On start: whatever is left in processing/ goes back to the FRONT of its priority (progress kept),
        counted as a failed attempt unless told otherwise, so a file that kills the trainer ends in failed/."""
        out = []
        self.repair()
        for e in self.entries(("processing",)):
            if not count_as_attempt:
                out.append(self.requeue_front(e.name, reason="recovered after restart"))
                continue
            attempts = max(e.meta.attempts, 1)
            errors = [*e.meta.errors, ErrorEntry(at=now_iso(), attempt=attempts,
                                                 error="recovered from processing/ after an unclean shutdown")]
            if attempts >= self.qcfg.max_attempts:
                out.append(self._move(e, "failed", "failed", errors=errors, finished_at=now_iso()))
            else:
                out.append(self._move(e, e.priority, "recovered", errors=errors, order=self._front_order(e.priority),
                                      not_before=None))
        return out

    def repair(self) -> int:
        """Sidecars left behind by a crash between a rename and its sidecar move are put next to their file."""
        fixed = 0
        where = {n: s for s in STATES for n in self._names(s)}
        for state in STATES:
            for kind, suffix in zip(SIDECAR_KINDS, SIDECAR_SUFFIXES):
                for p in self.dir(state).glob(f"*{suffix}"):
                    name = p.name[: -len(suffix)] + DATA_SUFFIX
                    home = where.get(name)
                    if home is None or home == state:
                        continue
                    target = self._sidecar(home, name, kind)
                    if target.exists():
                        os.unlink(p)  # the one beside the data file was written after the rename: it wins
                    else:
                        if kind == "meta":
                            meta = self._read_meta(state, name) or QueueMeta(original_name=name)
                            write_queue_meta(target, meta.changed(state=home))
                            os.unlink(p)
                        else:
                            os.replace(p, target)
                    fixed += 1
        for name, state in where.items():
            if not self._sidecar(state, name, "meta").exists():
                # a data file without any sidecar (crash right after the rename, or put there by hand)

                t = time.time()
                meta = QueueMeta(id=sha256_file(self.dir(state) / name), name=name, original_name=name,
                                 schema_id=self.cfg.daemon.default_schema,
                                 priority=state if state in PRIORITIES else self.cfg.daemon.default_priority,
                                 state=state, enqueued_at=now_iso(t), order=t,
                                 history=[HistoryEntry(at=now_iso(t), event="sidecar recreated by repair")])
                write_queue_meta(self._sidecar(state, name, "meta"), meta)
                logger.warning("queue/%s/%s had no sidecar: recreated it", state, name)
                fixed += 1
        return fixed


def place_file(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Move src to dst without ever overwriting dst (FileExistsError); works across filesystems."""
    src, dst = Path(src), Path(dst)
    try:
        os.link(src, dst, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if dst.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(dst)) from None
        tmp = dst.with_name(f".{dst.name}.part")
        shutil.copyfile(src, tmp, follow_symlinks=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.rename(tmp, dst)
    os.unlink(src)
    fsync_dir(dst.parent)


# -------------------------------------------------------------------- CLI
def _table(rows: list[dict], cols: list[str]) -> str:
    if not rows:
        return "(empty)"
    cells = [[str(r.get(c) if r.get(c) is not None else "-") for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _row(e: QueueEntry) -> dict:
    m = e.meta
    v = m.validation
    if e.state == "deferred":
        note = f"deferred: {m.deferred_reason or 'set aside by an older version'}"[:80]
    elif v.error_rules:
        note = ", ".join(v.error_rules)
    else:
        note = m.errors[-1].error[:80] if m.errors else None
    return {"name": e.name, "state": e.state, "priority": m.priority, "attempts": m.attempts,
            "examples": v.examples, "warnings": v.warnings, "enqueued": m.enqueued_at,
            "id": (m.id or "")[:12], "original": m.original_name,
            "retry_at": m.retry_at if m.not_before else None, "last_error": note}
