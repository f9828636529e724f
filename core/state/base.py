"""What every shared record has in common: a schema version, strict fields, atomic writes, honest reads.

A record is a pydantic model. Writers build the model (so a wrong field is an error where it is made, not a
surprise in another process) and write it atomically (temp file, fsync, rename: core/atomic_io.py). Readers get the
model back or a StateError naming the file and the field; a missing file is `None`, never a guess. Older files
on disk (written before this package existed, without `schema_version`) still validate: a model upgrades them in
its own `_upgrade` hook, which is the one place that knows an older shape.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Iterator, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from core.atomic_io import append_jsonl, atomic_write_bytes

logger = logging.getLogger(__name__)

R = TypeVar("R", bound="StateRecord")


class StateError(ValueError):
    """A shared file that exists but is not a valid record: names the file (and line) and what is wrong."""


class StateRecord(BaseModel):
    """Base of every shared record. Subclasses set SCHEMA_VERSION and may override `_upgrade(data)`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int = 1

    @model_validator(mode="before")
    @classmethod
    def _versioned(cls, data: Any) -> Any:
        if isinstance(data, dict):
            version = data.get("schema_version", 0)
            if isinstance(version, int) and version < cls.SCHEMA_VERSION:
                data = cls._upgrade(dict(data), version)
                data["schema_version"] = cls.SCHEMA_VERSION
            elif isinstance(version, int) and version > cls.SCHEMA_VERSION:
                raise ValueError(f"schema_version {version} is newer than this Cadence reads ({cls.SCHEMA_VERSION})")
        return data

    @classmethod
    def _upgrade(cls, data: dict, version: int) -> dict:
        """Bring a file of an older `version` (0: written before the state package) to the current shape."""
        return data

    def to_json(self) -> dict:
        return self.model_dump(mode="json")


class RecordPart(BaseModel):
    """A nested piece of a record (a ledger entry, a target's active version): strict like the record, without a
    schema_version of its own."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)


class SparseRecord(StateRecord):
    """A record written with only the keys its writer set: the files written before the state package left optional
    keys out rather than writing null, and their readers tell "absent" from "null" (`"champion": null` is a
    decision, a missing `"verdicts"` is none yet). `schema_version` is always written."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version,
                **self.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude={"schema_version"})}


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '(record)'}: {e['msg']}" for e in exc.errors())


def parse_record(model: type[R], data: Any, where: str) -> R:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise StateError(f"{where}: not a valid {model.__name__}: {_describe(exc)}") from None


def read_record(model: type[R], path: str | os.PathLike) -> R | None:
    """The record at `path`, None when there is no file; StateError when the file is torn or invalid."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: not JSON ({exc})") from None
    return parse_record(model, data, str(path))


def write_record(path: str | os.PathLike, record: StateRecord, durable: bool = True) -> None:
    """Replace `path` with `record` atomically (durable=False: no fsync, for heartbeats and other disposable state)."""
    data = json.dumps(record.to_json(), indent=2, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, data.encode("utf-8"), durable=durable)


def append_record(path: str | os.PathLike, record: StateRecord) -> None:
    """Append one record as a JSON line (a single write(2) on O_APPEND: whole lines with several writers)."""
    append_jsonl(path, record.to_json())


def read_records(model: type[R], path: str | os.PathLike, strict: bool = False) -> Iterator[R]:
    """The records of a JSONL file in order. A bad line (a torn last line after a crash, a hand edit) is skipped
    with a warning naming the file and line, or raised as StateError with strict=True."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                try:
                    data = json.loads(line)
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise StateError(f"{path}:{lineno}: not JSON ({exc})") from None
                yield parse_record(model, data, f"{path}:{lineno}")
            except StateError as exc:  # its text names the file and line
                if strict:
                    raise
                logger.warning("skipping %s", exc)


class StateFile(BaseModel):
    """One shared file (or family of files) and the model its content validates against: every topic module lists
    its own in a module-level `FILES`, which the docs generator (docs/shared-files.md) and the ownership tests read."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    pattern: str  # glob relative to paths.base_dir, e.g. "status/heartbeat.json", "queue/*/*.meta.json"
    model: type[StateRecord]
    kind: str = "json"  # "json": one record per file; "jsonl": one record per line
    writers: tuple[str, ...] = ()  # the modules that write it (through this package), for the docs
    readers: tuple[str, ...] = ()
    description: str = ""


def tail_lines(path: str | os.PathLike, limit: int, max_bytes: int = 4 << 20) -> list[bytes]:
    """The last `limit` non-empty complete lines of a file, read backwards from its end in doubling blocks (never
    the whole file: the monitor polls JSONL files that grow for months; at most about `max_bytes` are read)."""
    if limit <= 0:
        return []
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        size = os.fstat(fh.fileno()).st_size
        block, data, pos = 65536, b"", size
        while pos > 0 and data.count(b"\n") <= limit and size - pos < max_bytes:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
            block *= 2
    lines = data.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first one is cut
    return [ln for ln in lines if ln.strip()][-limit:]


def tail_records(model: type[R], path: str | os.PathLike, limit: int, max_bytes: int = 4 << 20) -> list[R]:
    """The last `limit` valid records of a JSONL file (tail_lines). A bad line is skipped with a warning naming the
    file and its position from the end (the line number is unknown without reading the whole file)."""
    lines = tail_lines(path, limit, max_bytes)
    out = []
    for back, line in zip(range(len(lines), 0, -1), lines):
        where = f"{path}: line {back} from the end"
        try:
            out.append(parse_record(model, json.loads(line), where))
        except StateError as exc:  # names the place already
            logger.warning("skipping %s", exc)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            logger.warning("skipping %s: not JSON (%s)", where, exc)
    return out
