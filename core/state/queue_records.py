"""The queue's records: the queue sidecar `NAME.meta.json`, the job sidecar `NAME.job.json` and the reject report
`NAME.reason.json`, each beside its `NAME.jsonl` in a queue folder (the job sidecar also in inbox/).

    QueueMeta      NAME.meta.json    written by core.queue_store (TrainingQueue) and core.ingest at every transition
    JobSidecar     NAME.job.json     written by a user (or the data manager, an importer, the monitor's upload)
    RejectReport   NAME.reason.json  written by core.validation.report (ValidationReport.write) when a file is refused
    IngestClaim    queue/.ingest/TOKEN.ingest.json   core.ingest's note of a file it is validating (crash recovery)

The folder names and suffixes of the queue are here too (`PRIORITIES`, `STATES`, `DATA_SUFFIX`, ...): the queue
(core.queue_store) and every reader of its folders use these, never their own copies. A file's state is the folder
it is in; `QueueMeta.state` repeats it for a reader that has only the sidecar.

Older sidecars (written before this module, without `schema_version`) still read: `QueueMeta._upgrade` drops a
`state` that is not a queue state (the folder says where the file is). A job sidecar is the user's own file:
an unknown key in it is an error naming the key, never dropped.

Library only.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from core.state.base import StateError, StateFile, StateRecord, read_record, write_record
from core.validation.spec import field_path, problem_message

# ------------------------------------------------------------------ the queue's folders and file names
PRIORITIES = ("high", "normal", "low")
TERMINAL = ("recently_completed", "failed", "rejected")
PARKED = ("deferred",)  # set aside, not finished: `retry` brings a file back (the data manager defers stale levels)
STATES = PRIORITIES + ("processing",) + TERMINAL + PARKED
DATA_SUFFIX = ".jsonl"
SIDECAR_KINDS = ("meta", "job", "reason")
META_SUFFIX, JOB_SUFFIX, REASON_SUFFIX = (f".{kind}.json" for kind in SIDECAR_KINDS)
SIDECAR_SUFFIXES = (META_SUFFIX, JOB_SUFFIX, REASON_SUFFIX)
INGEST_SUFFIX = ".ingest.json"  # queue/.ingest/TOKEN.ingest.json: an IngestClaim

Priority = Literal["high", "normal", "low"]
# "vanished": a rejected file whose data disappeared before it could be moved (only its sidecar and report exist)
QueueState = Literal["high", "normal", "low", "processing", "recently_completed", "failed", "rejected", "deferred",
                     "vanished"]


def stem_of(name: str) -> str:
    """`NAME` of `NAME.jsonl` (a name without the suffix is its own stem)."""
    return name[: -len(DATA_SUFFIX)] if name.endswith(DATA_SUFFIX) else name


def sidecar_path(data_path: str | os.PathLike, kind: str) -> Path:
    """`NAME.<kind>.json` beside `NAME.jsonl` (kind: meta | job | reason)."""
    if kind not in SIDECAR_KINDS:
        raise ValueError(f"sidecar kind must be one of {SIDECAR_KINDS}, got {kind!r}")
    data_path = Path(data_path)
    return data_path.with_name(f"{stem_of(data_path.name)}.{kind}.json")


class _Part(BaseModel):
    """A nested piece of a record: strict keys like the record itself."""

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)


# ------------------------------------------------------------------ NAME.meta.json
class HistoryEntry(_Part):
    at: str = Field(description="UTC time of the transition, ISO 8601 with Z.")
    event: str = Field(description="What happened: enqueued, claimed, completed, retry, requeued, failed, skipped, "
                                   "rejected, deferred, priority, recovered, or 'sidecar recreated by repair'.")
    from_: str | None = Field(None, alias="from", description="The state (folder) before; 'inbox' for enqueued.")
    to: str | None = Field(None, description="The state (folder) after.")
    reason: str | None = Field(None, description="Why, when the transition has a reason of its own (defer).")


class ErrorEntry(_Part):
    at: str | None = Field(None, description="UTC time the error was recorded.")
    attempt: int | None = Field(None, description="The attempt it ended (absent for a skip or a reject).")
    error: str = Field(description="What went wrong, as a person reads it.")


class LengthStats(_Part):
    min: int
    median: int
    mean: float
    p95: int
    p99: int
    max: int


class StandardSummary(_Part):
    """What STANDARD validation (the model's tokenizer and template) found before training."""

    length: LengthStats | None = Field(None, description="Example length in tokens.")
    reply_length: LengthStats | None = Field(None, description="Supervised reply length in tokens.")
    over_max_length: int | None = Field(None, description="Examples longer than model.max_length.")
    warnings: list[str] = Field(default_factory=list, description="Rules that warned.")
    errors: list[str] = Field(default_factory=list, description="Rules that failed.")


class ValidationSummary(_Part):
    """The sidecar's short form of the validation report (the whole report is NAME.reason.json when refused)."""

    level: str | None = Field(None, description="Highest level run: arrival, quick, standard or deep.")
    examples: int | None = None
    lines: int | None = None
    bytes: int | None = None
    tokens: int | None = None
    errors: int | None = Field(None, description="Problems of error severity.")
    warnings: int | None = Field(None, description="Problems of warning severity.")
    warning_rules: list[str] = Field(default_factory=list)
    error_rules: list[str] = Field(default_factory=list)
    suggested_max_length: int | None = None
    standard: StandardSummary | None = Field(None, description="Set once STANDARD passed or failed before training.")


class Progress(_Part):
    """How far training got when a file went back to its queue mid-way (kept, so the resume is visible)."""

    global_step: int | None = Field(None, description="Global step of the latest checkpoint then.")
    steps_done: int | None = Field(None, description="Steps of this file done by then (the engine's count).")


class QueueMeta(StateRecord):
    """`NAME.meta.json`: everything the queue knows about one file, rewritten atomically at each transition."""

    id: str | None = Field(None, description="sha256 of the content; the same content queued again is a duplicate.")
    name: str | None = Field(None, description="The file's name in the queue (unique across every state).")
    original_name: str | None = Field(None, description="The path it was dropped as, relative to inbox/.")
    schema_id: str | None = Field(None, description="Dataset spec the rows are validated and trained as.")
    priority: Priority | None = Field(None, description="The waiting folder it belongs to (and returns to).")
    state: QueueState | None = Field(None, description="The folder it is in (the folder is the truth).")
    attempts: int = Field(0, ge=0, description="Training attempts so far (a system fault is not one).")
    enqueued_at: str | None = Field(None, description="UTC time it was queued.")
    started_at: str | None = Field(None, description="UTC time of the latest claim.")
    finished_at: str | None = Field(None, description="UTC time it reached a terminal folder.")
    errors: list[ErrorEntry] = Field(default_factory=list, description="Every error, oldest first; never pruned.")
    validation: ValidationSummary = Field(default_factory=ValidationSummary, description="Validation summary.")
    global_step_start: int | None = Field(None, description="Global step of the file's first training step.")
    global_step_end: int | None = Field(None, description="Global step of its last training step.")
    epochs: int | None = Field(None, description="Passes over the file (job sidecar); None: training.epochs.")
    tags: list[str] = Field(default_factory=list, description="Labels from the job sidecar (skill:NAME, level:N).")
    notes: str | None = Field(None, description="Free text from the job sidecar.")
    order: float = Field(0.0, description="FIFO key within a priority (epoch seconds; smaller is sooner).")
    not_before: float | None = Field(None, description="Epoch seconds before which it is not claimed (backoff).")
    retry_at: str | None = Field(None, description="not_before as UTC text, for people.")
    progress: Progress | None = Field(None, description="Where training stood when it was requeued mid-file.")
    forced: bool = Field(False, description="Queued although the same content was known (--force).")
    history: list[HistoryEntry] = Field(default_factory=list, description="Every transition, oldest first.")
    claimed_by: int | None = Field(None, description="pid of the process that made the latest claim.")
    result: dict[str, Any] | None = Field(None, description="The engine's FileResult of the completed run, as the "
                                                            "training child reported it.")
    interruptions: int = Field(0, ge=0, description="Times training stopped mid-file and resumed later.")
    last_interruption: str | None = Field(None, description="Why it stopped the last time.")
    skipped: bool = Field(False, description="Set aside by the operator (skip) rather than failed.")
    attempt_step_start: int | None = Field(None, description="Global step of the checkpoint the latest attempt "
                                                             "started from (tells progress from none after a crash).")
    overrides: list[str] = Field(default_factory=list, description="key=value config overrides for this file "
                                                                   "(a shrunk micro-batch after an OOM).")
    deferred_at: str | None = Field(None, description="UTC time it was deferred.")
    deferred_reason: str | None = Field(None, description="Why it was deferred (a skill level already passed).")

    @classmethod
    def _upgrade(cls, data: dict, version: int) -> dict:
        # Sidecars from before the state package: the folder says where a file is, so a `state` word the queue
        # does not know (a hand-made sidecar's "queued") is dropped rather than refused.
        if data.get("state") not in QueueState.__args__:
            data.pop("state", None)
        return data

    def changed(self, **updates: Any) -> "QueueMeta":
        """A copy with `updates` applied and validated (an unknown field or a wrong type is an error here)."""
        data = self.model_dump()
        data.update(updates)
        return type(self).model_validate(data)


def read_queue_meta(path: str | os.PathLike) -> QueueMeta | None:
    """The queue sidecar at `path`; None without one; StateError when it is torn or invalid."""
    return read_record(QueueMeta, path)


def write_queue_meta(path: str | os.PathLike, meta: QueueMeta) -> None:
    write_record(path, meta)


# ------------------------------------------------------------------ NAME.job.json
class JobSidecar(StateRecord):
    """`NAME.job.json` beside a dropped file; every key optional, unknown keys an error."""

    model_config = ConfigDict(strict=True)

    schema_id: StrictStr | None = Field(None, description="Dataset spec id; default daemon.default_schema.")
    priority: Priority | None = Field(None, description="Queue priority; default daemon.default_priority.")
    epochs: StrictInt | None = Field(None, ge=1, le=1000, description="Passes over this file (overrides training.epochs).")
    tags: list[StrictStr] = Field(default_factory=list, description="Free labels, kept in the queue sidecar.")
    notes: StrictStr | None = Field(None, description="Free text, kept in the queue sidecar.")

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_none=True)


def parse_job_sidecar(data: Any) -> tuple[JobSidecar | None, list[str]]:
    """(sidecar, []) or (None, every problem as 'key: message')."""
    if not isinstance(data, dict):
        return None, [f"(root): must be a JSON object, got {type(data).__name__}"]
    try:
        return JobSidecar.model_validate(data), []
    except ValidationError as exc:
        return None, [f"{field_path(e['loc']) or '(root)'}: {problem_message(e)}" for e in exc.errors(include_url=False)]


def load_job_sidecar(path: str | os.PathLike) -> tuple[JobSidecar | None, list[tuple[int | None, str]]]:
    """The job sidecar at `path` and its problems as (line, message), each message naming the file:
    (None, []) without a file; (None, problems) when it is not JSON or breaks the model; (sidecar, []) else."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, []
    except UnicodeDecodeError as exc:
        return None, [(None, f"{path.name} is not valid JSON: not UTF-8 ({exc.reason})")]
    try:
        raw = json.loads(text)
    except ValueError as exc:
        return None, [(exc.lineno, f"{path.name} is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")]
    sidecar, problems = parse_job_sidecar(raw)
    return sidecar, [(None, f"{path.name}: {p}") for p in problems]


def read_job_sidecar(path: str | os.PathLike) -> JobSidecar | None:
    """The job sidecar at `path` (None without one); StateError naming the file and every problem."""
    sidecar, problems = load_job_sidecar(path)
    if problems:
        raise StateError(f"{path}: " + "; ".join(msg for _, msg in problems))
    return sidecar


def write_job_sidecar(path: str | os.PathLike, job: JobSidecar) -> None:
    write_record(path, job)


# ------------------------------------------------------------------ NAME.reason.json
class ProblemLine(_Part):
    line: int | None = Field(None, description="1-based line of the file (None: the file as a whole).")
    message: str = Field(description="What is wrong there, as a person reads it.")


class ProblemGroup(_Part):
    rule: str = Field(description="The rule broken (core.validation.report.RULES).")
    severity: Literal["error", "warning"]
    count: int = Field(ge=0, description="Occurrences in the whole file.")
    description: str = Field("", description="What the rule checks.")
    lines: list[ProblemLine] = Field(default_factory=list, description="The first occurrences, with their line.")
    more: int = Field(0, ge=0, description="Occurrences counted but not listed.")


class ReportStats(_Part):
    """What the validators measured on the way (each level adds its own)."""

    bytes: int | None = None
    lines: int | None = None
    examples: int | None = None
    blank_lines: int | None = None
    sha256: str | None = None
    tokens: int | None = None
    supervised_tokens: int | None = None
    max_length: int | None = None
    length: LengthStats | None = None
    reply_length: LengthStats | None = None
    over_max_length: int | None = None
    share_over_max_length: float | None = None
    zero_supervised: int | None = None
    suggested_max_length: int | None = None
    truncation: str | None = None
    deep_examples: int | None = None
    exact_unique: int | None = None
    emoji_think_share: float | None = None
    duplicate_of: str | None = Field(None, description="state/name of the queued file with the same content.")


class RejectReport(StateRecord):
    """`NAME.reason.json`: every problem of a refused file, grouped by rule, with line numbers and one human line."""

    validator: str = Field(description="Who refused it: InboxWatcher, DataValidator, TrainingQueue, ...")
    level: str = Field(description="arrival, quick, standard or deep.")
    file: str = Field(description="The file as it was dropped (relative to inbox/) or given.")
    schema_id: str | None = None
    verdict: Literal["ok", "rejected"]
    summary: str = Field(description="One human sentence: verdict, counts and the first problem of each rule.")
    errors: int = Field(ge=0)
    warnings: int = Field(ge=0)
    problems: list[ProblemGroup] = Field(default_factory=list)
    stats: ReportStats = Field(default_factory=ReportStats)
    created_at: str = Field(description="UTC time of the report.")


def read_reject_report(path: str | os.PathLike) -> RejectReport | None:
    return read_record(RejectReport, path)


def write_reject_report(path: str | os.PathLike, report: RejectReport) -> None:
    write_record(path, report)


# ------------------------------------------------------------------ queue/.ingest/TOKEN.ingest.json
class IngestOverrides(_Part):
    """What `training_queue.py add` was told, winning over the job sidecar."""

    priority: Priority | None = None
    schema_id: str | None = None
    epochs: int | None = Field(None, ge=1, le=1000)
    force: bool | None = None


class IngestClaim(StateRecord):
    """`queue/.ingest/TOKEN.ingest.json`: a file taken from inbox/ (or given to `add`) and being validated, so a
    process that dies mid-way leaves enough for the next start to finish it (TOKEN.data beside it)."""

    original_name: str = Field(description="The path it was dropped as, relative to inbox/ (or as given to add).")
    queue_name: str = Field(description="The queue name chosen for it.")
    overrides: IngestOverrides = Field(default_factory=IngestOverrides)
    taken_at: str = Field(description="UTC time it was taken.")
    pid: int = Field(description="The process ingesting it (a live other process is left alone).")


def read_ingest_claim(path: str | os.PathLike) -> IngestClaim | None:
    return read_record(IngestClaim, path)


def write_ingest_claim(path: str | os.PathLike, claim: IngestClaim) -> None:
    write_record(path, claim)


FILES: list[StateFile] = [
    StateFile(pattern="queue/*/*.meta.json", model=QueueMeta,
              writers=("core.queue_store", "core.ingest"),
              readers=("core.queue_store", "core.ingest", "core.daemon", "trainer.child", "data_manager.manager",
                       "data_manager.queue_files", "management.item_sets", "monitoring.sources"),
              description="Queue sidecar beside every queued file: id, state, attempts, errors, validation summary, "
                          "global_step_start/end, history of every transition."),
    # (a refused file keeps its job sidecar as the user wrote it, valid or not: queue/rejected/*.job.json and
    # queue/.ingest/*.job.json are the user's own files, listed in core.state.registry.NOT_RECORDS)
    StateFile(pattern="inbox/**/*.job.json", model=JobSidecar,
              writers=("users", "data_manager.manager", "data_manager.importers.common", "monitoring.app"),
              readers=("core.ingest", "data_manager.dataset_tools"),
              description="Job sidecar a user drops beside NAME.jsonl: schema_id, priority, epochs, tags, notes. "
                          "Unknown keys are an error."),
    *(StateFile(pattern=f"queue/{state}/*.job.json", model=JobSidecar,
                writers=("core.ingest", "core.queue_store"),
                readers=("data_manager.queue_files", "monitoring.sources"),
                description="The job sidecar of an accepted file, moved with it through the queue's folders.")
      for state in STATES if state != "rejected"),
    StateFile(pattern="queue/*/*.reason.json", model=RejectReport,
              writers=("core.validation.report",),
              readers=("core.queue_store", "monitoring.sources"),
              description="Reject report beside a refused file: validator, level, every problem with its line, "
                          "and one human sentence."),
    StateFile(pattern="queue/.ingest/*.ingest.json", model=IngestClaim,
              writers=("core.ingest",), readers=("core.ingest",),
              description="A file being validated on its way into the queue, finished by the next start after a "
                          "crash."),
]
