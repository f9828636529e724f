"""Ingest: take ready files from inbox/, validate them (spec + QUICK), queue or reject them.

`core.watcher.InboxWatcher` says what is complete. Taking a file is a rename
into `queue/.ingest/` (so nothing can change it while it is validated, and a
crash leaves it there to be finished by the next start). From there it ends
in exactly one place: queue/<priority>/ with `NAME.meta.json`, or
queue/rejected/ with `NAME.reason.json` naming file, line and rule. Names
with control characters, shell metacharacters or '..' and files that are not
`*.jsonl` are rejected; files in subfolders are queued as `sub__dir__NAME.jsonl`.
No exception from a bad file leaves this module.

The daemon calls:
    ingestor = Ingestor(cfg)              # or Ingestor(cfg, queue, validator)
    ingestor.run_forever(stop_event)      # in a thread; returns when stop_event is set
    ingestor.scan_once() -> list[IngestResult]
    standard_gate(cfg, queue, entry, validator) -> bool   # after claim, before training

Run as:
    cadence ingest [--once] [--config config.json]     # watch inbox/ (Ctrl-C stops)
"""
from __future__ import annotations

import logging
import os
import shutil
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.state.events import append_event
from core.queue_store import DATA_SUFFIX, DuplicateError, QueueEntry, TrainingQueue, now_iso, stem_of
from core.state.base import StateError
from core.state.queue_records import (INGEST_SUFFIX, JOB_SUFFIX, SIDECAR_KINDS, ErrorEntry, IngestClaim, IngestOverrides,
                                      JobSidecar, QueueMeta, ValidationSummary, load_job_sidecar, read_ingest_claim,
                                      sidecar_path, write_ingest_claim, write_queue_meta)
from core.validation.report import ValidationReport
from core.validation.validator import DataValidator
from core.watcher import InboxWatcher, Ready, name_problem, queue_name

logger = logging.getLogger(__name__)


@dataclass
class IngestResult:
    original_name: str
    outcome: str  # queued | rejected | vanished
    name: str | None = None
    state: str | None = None
    message: str = ""
    report: dict | None = None
    entry: QueueEntry | None = field(default=None, repr=False)

    @property
    def accepted(self) -> bool:
        return self.outcome == "queued"

    def to_dict(self) -> dict:
        return {"original_name": self.original_name, "outcome": self.outcome, "name": self.name,
                "state": self.state, "message": self.message, "report": self.report}


class Ingestor:
    """Turns complete inbox files into queued or rejected ones; one per daemon."""

    def __init__(self, cfg, queue: TrainingQueue | None = None, validator: DataValidator | None = None):
        self.cfg = cfg
        self.layout = cfg.layout
        self.queue = queue or TrainingQueue(cfg)
        self.validator = validator or DataValidator(cfg)
        self.inbox = self.layout.inbox
        self.staging = self.layout.queue / ".ingest"
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.staging.mkdir(parents=True, exist_ok=True)
        self.watcher = InboxWatcher(cfg)
        self._recovered = False

    @property
    def observer(self):
        return self.watcher.observer

    def run_forever(self, stop_event: threading.Event) -> None:
        """Take files on every inotify event, when a pending file is due to settle, and every poll_interval."""
        self.watcher.start_observer()
        try:
            while not stop_event.is_set():
                try:
                    self.scan_once()
                except Exception:  # noqa: BLE001 - the watcher never dies of one bad scan
                    logger.exception("inbox scan failed; continuing")
                self.watcher.wait(stop_event)
        finally:
            self.watcher.stop_observer()

    def scan_once(self, now: float | None = None) -> list[IngestResult]:
        """Take every complete file in inbox/ now (and finish any left in staging); what happened to each."""
        results: list[IngestResult] = []
        results += self.recover_staging(include_own=not self._recovered)
        self._recovered = True
        for item in self.watcher.ready(now):
            self._guarded(results, item)
        return results

    def _guarded(self, results: list, item: Ready) -> None:
        """One file's failure (disk full, permissions) is logged and retried next scan; the others go on."""
        try:
            if item.kind == "data":
                results.append(self._take(item.parts, item.job_parts))
            else:
                results.append(self._take_stray(item.parts, item.kind))
        except Exception:  # noqa: BLE001
            logger.exception("could not take inbox/%s; will retry", item.rel)

    # -------------------------------------------------------------- taking
    def _stage(self, src: Path, original: str, qname: str, job_src: Path | None,
               overrides: IngestOverrides | dict | None = None) -> Path | None:
        """Rename src (and its sidecar) into queue/.ingest/; None when it vanished first."""
        token = f"{time.time_ns()}-{os.getpid()}"
        info = self.staging / f"{token}{INGEST_SUFFIX}"
        write_ingest_claim(info, IngestClaim(original_name=original, queue_name=qname, taken_at=now_iso(),
                                             pid=os.getpid(), overrides=overrides or IngestOverrides()))
        staged = self.staging / f"{token}.data"
        try:
            os.rename(src, staged)
        except FileNotFoundError:
            os.unlink(info)
            return None
        if job_src is not None:
            try:
                os.rename(job_src, self.staging / f"{token}{JOB_SUFFIX}")
            except FileNotFoundError:
                pass
        return staged

    def _take(self, parts: list[str], job_parts: list[str] | None) -> IngestResult:
        rel = os.path.join(*parts)
        qname = queue_name(parts)
        job_src = self.inbox.joinpath(*job_parts) if job_parts else None
        staged = self._stage(self.inbox / rel, rel, qname, job_src)
        if staged is None:
            logger.info("inbox/%s disappeared before it was taken", rel)
            return IngestResult(rel, "vanished", message=f"inbox/{rel} disappeared before it was taken")
        problem = name_problem(parts)
        if problem is None and not parts[-1].endswith(DATA_SUFFIX):
            return self._reject_new(staged, rel, qname, "unsupported_extension",
                                    f"{parts[-1]!r}: only .jsonl files are ingested", validator="InboxWatcher")
        if problem:
            return self._reject_new(staged, rel, qname, "unsafe_name", problem, validator="InboxWatcher")
        return self.process_staged(staged)

    def _take_stray(self, parts: list[str], kind: str) -> IngestResult:
        rel = os.path.join(*parts)
        if kind == "orphan_sidecar":
            data_name = parts[-1][: -len(JOB_SUFFIX)] + DATA_SUFFIX
            qname = queue_name(parts[:-1] + [data_name])
        else:
            qname = queue_name(parts)
        staged = self._stage(self.inbox / rel, rel, qname, None)
        if staged is None:
            return IngestResult(rel, "vanished", message=f"inbox/{rel} disappeared before it was taken")
        if kind == "orphan_sidecar":
            rep = self._report(rel, "orphan_sidecar", f"{parts[-1]} arrived but {data_name} did not within "
                                                      f"{self.cfg.daemon.orphan_sidecar_seconds:.0f}s")
            result = self._finish_reject(None, staged, qname, rep, state="rejected")
            try:
                os.unlink(self.staging / (staged.name[: -len(".data")] + INGEST_SUFFIX))
            except FileNotFoundError:
                pass
            return result
        what = {"symlink": "a symlink (never followed)", "directory": "a directory, not a file",
                "special file": "a FIFO, socket or device (never read)"}[kind]
        return self._reject_new(staged, rel, qname, "not_regular_file", f"inbox/{rel} is {what}",
                                validator="InboxWatcher")

    def ingest_path(self, path: str | os.PathLike, *, priority: str | None = None, schema_id: str | None = None,
                    epochs: int | None = None, force: bool = False, copy: bool = True) -> IngestResult:
        """Queue a file from anywhere (the CLI's `add`): a copy (or the file itself) goes through the same checks.
        A `NAME.job.json` beside it is used too; arguments given here win over it."""
        src = Path(path)
        overrides = IngestOverrides(priority=priority, schema_id=schema_id, epochs=epochs, force=force or None)
        token = f"{time.time_ns()}-{os.getpid()}"
        staged = self.staging / f"{token}.data"
        qname = queue_name([src.name])
        if not src.is_file():
            return IngestResult(str(src), "rejected", message=f"{src}: not a regular file")
        job = src.with_name(stem_of(src.name) + JOB_SUFFIX)
        write_ingest_claim(self.staging / f"{token}{INGEST_SUFFIX}", IngestClaim(
            original_name=str(src), queue_name=qname, overrides=overrides, taken_at=now_iso(), pid=os.getpid()))
        if job.is_file():
            shutil.copyfile(job, self.staging / f"{token}{JOB_SUFFIX}")
        if copy:
            shutil.copyfile(src, self.staging / f"{token}.part")
            os.rename(self.staging / f"{token}.part", staged)
        else:
            shutil.move(str(src), staged)
        return self.process_staged(staged)

    def recover_staging(self, include_own: bool = True) -> list[IngestResult]:
        """Files taken but not finished by a process that died are finished now (nothing stays in queue/.ingest/)."""
        out = []
        for info in sorted(self.staging.glob("*" + INGEST_SUFFIX)):
            claim = self._claim(info)
            owner = claim.pid if claim else None
            if owner == os.getpid() and not include_own:
                continue
            if owner and owner != os.getpid() and _alive(owner):
                continue  # another live process (the queue CLI's `add`) is ingesting it right now
            staged = info.with_name(info.name[: -len(INGEST_SUFFIX)] + ".data")
            if os.path.lexists(staged):
                out.append(self.process_staged(staged))
            else:
                job = info.with_name(info.name[: -len(INGEST_SUFFIX)] + JOB_SUFFIX)
                if job.exists():
                    qname = claim.queue_name if claim else "recovered.jsonl"
                    self._finish_reject(None, job, qname, self._report(
                        qname, "orphan_sidecar", "its data file was lost in a crash while ingesting"))
                os.unlink(info)
        return out

    @staticmethod
    def _claim(info: Path) -> IngestClaim | None:
        try:
            return read_ingest_claim(info)
        except StateError as exc:  # torn by a crash while it was written: the data file alone is finished
            logger.warning("%s", exc)
            return None

    # ---------------------------------------------------------- validating
    def process_staged(self, staged: Path) -> IngestResult:
        """Spec + QUICK (+ configured levels), then enqueue or reject. Never raises."""
        token = staged.name[: -len(".data")]
        info_path = self.staging / f"{token}{INGEST_SUFFIX}"
        claim = self._claim(info_path)
        original = claim.original_name if claim else staged.name
        qname = claim.queue_name if claim else queue_name([Path(original).name])
        overrides = claim.overrides if claim else IngestOverrides()
        job_path = self.staging / f"{token}{JOB_SUFFIX}"
        try:
            return self._validate_and_queue(staged, original, qname, overrides, job_path if job_path.exists() else None)
        except Exception as exc:  # noqa: BLE001 - a bad file must never take the daemon down
            logger.exception("unexpected error ingesting %s", original)
            rep = self._report(original, "ingest_error", f"{type(exc).__name__}: {exc}")
            return self._finish_reject(staged, job_path if job_path.exists() else None, qname, rep)
        finally:
            try:
                os.unlink(info_path)
            except FileNotFoundError:
                pass

    def _report(self, name: str, rule: str, message: str, validator: str = "InboxWatcher",
                line: int | None = None) -> ValidationReport:
        rep = self.validator.new_report(name, "arrival", validator=validator)
        rep.add(rule, message, line)
        return rep

    def _reject_new(self, staged: Path, original: str, qname: str, rule: str, message: str,
                    validator: str) -> IngestResult:
        token = staged.name.rsplit(".", 1)[0]
        result = self._finish_reject(staged, None, qname, self._report(original, rule, message, validator))
        try:
            os.unlink(self.staging / f"{token}{INGEST_SUFFIX}")
        except FileNotFoundError:
            pass
        return result

    def _validate_and_queue(self, staged: Path, original: str, qname: str, overrides: IngestOverrides,
                            job_path: Path | None) -> IngestResult:
        st = os.lstat(staged)
        if not stat.S_ISREG(st.st_mode):
            return self._finish_reject(staged, job_path, qname, self._report(
                original, "not_regular_file", f"{original} is not a regular file"))
        job = JobSidecar()
        if job_path is not None:
            sidecar, problems = load_job_sidecar(job_path)
            if problems:
                # the staged copy is TOKEN.job.json: the report names the file the user wrote
                own = stem_of(Path(original).name) + JOB_SUFFIX
                rep = self.validator.new_report(original, "arrival", validator="InboxWatcher")
                for line, msg in problems:
                    rep.add("job_sidecar", own + msg[len(job_path.name):], line)
                return self._finish_reject(staged, job_path, qname, rep)
            job = sidecar or job
        job = job.model_copy(update={k: v for k, v in overrides.model_dump(exclude_none=True).items()
                                     if k in ("priority", "schema_id", "epochs")})
        schema_id = job.schema_id or self.cfg.daemon.default_schema
        priority = job.priority or self.cfg.daemon.default_priority
        rep = self.validator.quick(staged, schema_id, name=original)
        if rep.ok and self.cfg.validation.standard_on_arrival:
            rep.merge(self.validator.standard(staged, schema_id, name=original))
            rep.level = "standard"
        if rep.ok and self.cfg.validation.deep_on_arrival:
            rep.merge(self.validator.deep(staged, schema_id, name=original))
        extra = {"schema_id": schema_id, "priority": priority, "file_id": rep.stats.get("sha256")}
        if not os.path.lexists(staged):
            rep.add("file_vanished", "the file disappeared while it was being validated")
        if not rep.ok:
            return self._finish_reject(staged, job_path, qname, rep, **extra)
        try:
            entry = self.queue.enqueue(staged, file_id=rep.stats["sha256"], original_name=original,
                                       schema_id=schema_id, priority=priority, validation=validation_summary(rep),
                                       job=job, job_path=job_path, name=qname, force=bool(overrides.force))
        except DuplicateError as exc:
            dup = self._report(original, "duplicate", str(exc), validator="TrainingQueue")
            dup.stats.update(rep.stats, duplicate_of=f"{exc.original.state}/{exc.original.name}")
            return self._finish_reject(staged, job_path, qname, dup, **extra)
        except FileNotFoundError:
            return self._finish_reject(staged, job_path, qname, self._report(
                original, "file_vanished", "the file disappeared before it could be queued"), **extra)
        logger.info("queued %s as %s/%s (%s examples, %d warning(s))", original, entry.state, entry.name,
                    rep.stats.get("examples"), rep.warning_count)
        return IngestResult(original, "queued", entry.name, entry.state, rep.summary(), rep.to_dict(), entry)

    def _finish_reject(self, staged: Path | None, job_path: Path | None, qname: str, rep: ValidationReport, *,
                       state: str | None = None, file_id: str | None = None, schema_id: str | None = None,
                       priority: str | None = None) -> IngestResult:
        """Move the file (whatever it is) and its sidecar to queue/rejected/ and write the reason beside it."""
        rejected = self.queue.dir("rejected")
        name = self.queue.unique_name(qname)
        n = 1
        while any(sidecar_path(rejected / name, kind).exists() for kind in SIDECAR_KINDS):
            n += 1
            name = self.queue.unique_name(f"{stem_of(qname)}-{n}{DATA_SUFFIX}")
        present = staged is not None and os.path.lexists(staged)
        # the reason first, then the file: a crash in between leaves the file in staging, finished on restart
        rep.write(sidecar_path(rejected / name, "reason"))
        meta = QueueMeta(id=file_id, name=name, original_name=rep.file, schema_id=schema_id, priority=priority,
                         state=state or ("rejected" if present else "vanished"), finished_at=now_iso(),
                         errors=[ErrorEntry(at=now_iso(), error=rep.summary())], validation=validation_summary(rep))
        write_queue_meta(sidecar_path(rejected / name, "meta"), meta)
        if job_path is not None and job_path.exists():
            os.replace(job_path, sidecar_path(rejected / name, "job"))
        if present:
            os.rename(staged, rejected / name)
        logger.warning("rejected %s", rep.summary())
        try:
            append_event(self.layout, "rejected", source="ingest", at=now_iso(), file=name, original_name=rep.file,
                         rules=rep.rules("error"), summary=rep.summary())
        except OSError:
            logger.warning("cannot append to %s", self.layout.events)
        outcome = "rejected" if present or state == "rejected" else "vanished"
        return IngestResult(rep.file, outcome, name, "rejected", rep.summary(), rep.to_dict())


def _alive(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True


def validation_summary(rep: ValidationReport) -> ValidationSummary:
    s = rep.stats
    return ValidationSummary(level=rep.level, examples=s.get("examples"), lines=s.get("lines"), bytes=s.get("bytes"),
                             tokens=s.get("tokens"), errors=rep.error_count, warnings=rep.warning_count,
                             warning_rules=rep.rules("warning"), error_rules=rep.rules("error"),
                             suggested_max_length=s.get("suggested_max_length"))


def standard_gate(cfg, queue: TrainingQueue, entry: QueueEntry, validator: DataValidator) -> bool:
    """STANDARD before training: True to train the claimed file; False when it was moved to rejected/."""
    schema = entry.meta.schema_id or cfg.daemon.default_schema
    rep = validator.standard(entry.path, schema, name=entry.meta.original_name or entry.name)
    before = entry.meta.validation
    summary = before.model_dump()
    summary.update({k: v for k, v in validation_summary(rep).model_dump().items()
                    if v is not None and k not in ("level", "standard")})
    summary["warnings"] = (before.warnings or 0) + rep.warning_count
    summary["warning_rules"] = sorted(set(before.warning_rules) | set(rep.rules("warning")))
    summary["standard"] = {"length": rep.stats.get("length"), "reply_length": rep.stats.get("reply_length"),
                           "over_max_length": rep.stats.get("over_max_length"),
                           "warnings": rep.rules("warning"), "errors": rep.rules("error")}
    summary["level"] = "standard"
    if rep.ok:
        queue.update_meta(entry.name, validation=summary)
        if rep.warning_count:
            logger.warning("%s", rep.summary())
        return True
    logger.warning("rejected before training: %s", rep.summary())
    queue.update_meta(entry.name, validation=summary)
    queue.reject(entry.name, rep)
    return False
