"""The event log: `status/events.jsonl`, one line per state change anywhere in Cadence.

Every writer goes through `append_event(layout, event, source=..., **fields)`: the daemon, the watchdog, the
queue, ingest, deployment, the monitor's demo run. A line is flat JSON: `ts`, `source`, `event` and the event's
own fields (`file`, `reason`, `global_step`, ...). The monitor tails it (monitoring/feed.py) through
`EventTail` and `tail_events`; a line that is not an event is skipped with a warning naming file and line.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import model_validator

from core.state.base import StateError, StateFile, StateRecord, append_record, parse_record, tail_lines

logger = logging.getLogger(__name__)


class Event(StateRecord):
    """One state change: when, who, what, and the event's own fields (written flat beside them)."""

    ts: float
    source: str  # daemon | watchdog | queue | ingest | deploy | ...
    event: str
    fields: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _gather_fields(cls, data: Any) -> Any:
        if isinstance(data, dict) and "fields" not in data:
            own = ("schema_version", "ts", "source", "event")
            data = {**{k: data[k] for k in own if k in data},
                    "fields": {k: v for k, v in data.items() if k not in own}}
        return data

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "ts": self.ts, "source": self.source, "event": self.event,
                **self.model_dump(mode="json", include={"fields"}, fallback=str)["fields"]}  # str(): as before

    def view(self) -> dict:
        """The event as the monitor shows it (its API and page): the line without the file's schema_version."""
        data = self.to_json()
        del data["schema_version"]
        return data

    def get(self, name: str, default: Any = None) -> Any:
        """One of the event's own fields."""
        return self.fields.get(name, default)


def append_event(layout, event: str, *, source: str, ts: float | None = None, **fields) -> Event:
    """Append one event to status/events.jsonl (one write(2) on O_APPEND: whole lines with several writers)."""
    record = Event(ts=time.time() if ts is None else ts, source=source, event=event, fields=fields)
    append_record(layout.events, record)
    return record


def _decode(line: bytes, where: str) -> Event | None:
    try:
        return parse_record(Event, json.loads(line), where)
    except StateError as exc:
        logger.warning("skipping %s", exc)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        logger.warning("skipping %s: not JSON (%s)", where, exc)
    return None


def read_events(path: str | Path) -> list[Event]:
    """Every event of the file in order (a bad line skipped with a warning naming file:line)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    return [e for n, line in enumerate(data.split(b"\n"), 1) if line.strip()
            and (e := _decode(line, f"{path}:{n}")) is not None]


def tail_events(path: str | Path, limit: int, max_bytes: int = 4 << 20) -> list[Event]:
    """The last `limit` events, read backwards from the end (never the whole file: it grows for months)."""
    lines = tail_lines(path, limit, max_bytes)
    return [e for back, line in zip(range(len(lines), 0, -1), lines)
            if (e := _decode(line, f"{path}: line {back} from the end")) is not None]


class EventTail:
    """Follows status/events.jsonl: `read_new()` returns the events appended since the last call (complete lines
    only); a file replaced or truncated is read again from its start (`reset` is then True)."""

    def __init__(self, path: str | Path, skip_history_over: int = 8 << 20, history_limit: int = 2000):
        self.path = Path(path)
        self.pos = 0
        self.inode = None
        self.lineno = 0
        self.skip_history_over = skip_history_over
        self.history_limit = history_limit

    def read_new(self) -> tuple[list[Event], bool, list[Event]]:
        """(new events, reset, history): on the first read of a file larger than `skip_history_over`, the
        reader jumps to its end and `history` holds its tail instead of every line."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return [], False, []
        reset = False
        if st.st_ino != self.inode or st.st_size < self.pos:
            first = self.inode is None
            self.inode, self.pos, self.lineno, reset = st.st_ino, 0, 0, True
            if first and st.st_size > self.skip_history_over:  # a huge old log: start from its tail
                self.pos, self.lineno = st.st_size, -1  # line numbers unknown without reading it all
                return [], reset, tail_events(self.path, self.history_limit)
        if st.st_size == self.pos:
            return [], reset, []
        with open(self.path, "rb") as fh:
            fh.seek(self.pos)
            data = fh.read(st.st_size - self.pos)
        end = data.rfind(b"\n")
        if end < 0:
            return [], reset, []
        self.pos += end + 1
        new = []
        for line in data[: end + 1].split(b"\n")[:-1]:
            if self.lineno >= 0:
                self.lineno += 1
            if line.strip():
                where = f"{self.path}:{self.lineno}" if self.lineno >= 0 else f"{self.path} (byte {self.pos})"
                if (e := _decode(line, where)) is not None:
                    new.append(e)
        return new, reset, []


FILES = [
    StateFile(pattern="status/events.jsonl", model=Event, kind="jsonl",
              writers=("core.daemon", "core.queue_store", "core.ingest", "safety.watchdog",
                       "management.deployment_state", "monitoring.demo"),
              readers=("monitoring.feed", "monitoring.app"),
              description="One line per state change anywhere in Cadence: ts, source, event and its fields."),
]
