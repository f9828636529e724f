"""The training curve: `status/metrics.jsonl`, one line per train step (every `training.log_steps`), eval and
checkpoint.

Appended by the engine in the training child (rank 0) through trainer/status.py's StatusWriter; after a resume
from checkpoint-N, `rewind_metrics(N)` cuts the lines past step N from the end (a tail scan, not a full read), so
the logged step sequence stays monotonic even when a crash forced steps to be recomputed. Read by the monitor's
index (monitoring/metrics_index.py) through `decode_metric_lines`, which keeps the lines as plain dicts for
speed (a million-line file is indexed in seconds) and drops any line that is not a metric record.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from core.state.base import StateError, StateFile, StateRecord, append_record, parse_record, read_records

logger = logging.getLogger(__name__)

KINDS = ("train", "eval", "checkpoint")


_ONLY = {  # the fields each kind of line may carry besides type, ts, global_step (and which it must)
    "train": ({"file", "file_step", "file_total_steps", "loss", "lr", "grad_norm", "tokens", "tokens_per_s",
               "step_time_s", "processes"}, {"loss"}),
    "eval": ({"val_loss", "fixed_val_loss", "preview"}, set()),
    "checkpoint": ({"path", "reason"}, {"path"}),
}


class Metric(StateRecord):
    """One line: a logged training step (type=train), an evaluation (eval) or a checkpoint written (checkpoint).
    A line carries only the fields its writer set (as before the state package: the file grows for months)."""

    type: Literal["train", "eval", "checkpoint"]
    ts: float = Field(default_factory=time.time)
    global_step: int
    # train
    file: str | None = None
    file_step: int | None = None
    file_total_steps: int | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    tokens: int | None = None
    tokens_per_s: float | None = None
    step_time_s: float | None = None
    processes: int | None = None  # ranks that ran the step
    # eval (held-out rows of the file and/or the fixed validation set)
    val_loss: float | None = None
    fixed_val_loss: float | None = None
    preview: dict[str, Any] | None = None  # prompt, golden, answer, match (trainer.engine.preview)
    # checkpoint (logged in step order, before a background publish finishes)
    path: str | None = None  # the checkpoint folder's name
    reason: str | None = None

    @model_validator(mode="after")
    def _fields_of_kind(self) -> "Metric":
        allowed, required = _ONLY[self.type]
        given = self.model_fields_set - {"type", "ts", "global_step", "schema_version"}
        if given - allowed:
            raise ValueError(f"fields {sorted(given - allowed)} do not belong to a {self.type} line")
        missing = sorted(f for f in required if getattr(self, f) is None)
        if missing:
            raise ValueError(f"a {self.type} line needs {missing}")
        return self

    def to_json(self) -> dict:
        return {"schema_version": self.schema_version, "type": self.type, "ts": self.ts,
                **self.model_dump(mode="json", exclude_unset=True, exclude={"schema_version", "type", "ts"})}


def parse_metric(data: Any, where: str) -> Metric:
    """A metric record from a dict; StateError naming `where` and the field when it is not one."""
    return parse_record(Metric, data, where)


def append_metric(path: str | Path, record: Metric) -> None:
    append_record(path, record)


def append_metrics(path: str | Path, records, block: int = 20_000) -> int:
    """Append many records in large writes (a demo or benchmark run of a million steps); returns how many."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, buf = 0, []
    with open(path, "a", encoding="utf-8") as fh:
        for rec in records:
            buf.append(json.dumps(rec.to_json(), ensure_ascii=False, default=str))
            n += 1
            if len(buf) >= block:
                fh.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            fh.write("\n".join(buf) + "\n")
    return n


def read_metrics(path: str | Path, strict: bool = False):
    """Every metric record in file order (a bad line skipped with a warning naming file:line)."""
    return read_records(Metric, path, strict)


def decode_metric_lines(lines: list[bytes], offs: list[int]) -> list[tuple[int, dict]]:
    """(offset, record) for every line of a block that holds a metric record (a JSON object whose `type` is
    train, eval or checkpoint), as plain dicts for the monitor's column index. One json.loads for the whole block
    (the per-call overhead dominates on short lines); line by line when the block has a bad line."""
    idx = [i for i, line in enumerate(lines) if line.strip()]
    if not idx:
        return []
    try:
        parsed = json.loads(b"[" + b",".join(lines[i] for i in idx) + b"]")
        if len(parsed) == len(idx) and all(type(r) is dict and r.get("type") in KINDS for r in parsed):
            return [(offs[i], r) for i, r in zip(idx, parsed)]
    except (json.JSONDecodeError, UnicodeDecodeError):
        pass
    out = []
    for i in idx:
        try:
            rec = json.loads(lines[i])
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict) and rec.get("type") in KINDS:
            out.append((offs[i], rec))
    return out


def rewind_metrics(path: str | Path, global_step: int) -> int:
    """Truncate trailing lines whose global_step > `global_step`; returns the number of lines removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    chunk = 1 << 20
    while True:
        start = max(0, size - chunk)
        with open(path, "rb") as fh:
            fh.seek(start)
            data = fh.read()
        first = 0 if start == 0 else data.find(b"\n") + 1  # skip a partial first line
        cut, removed, found = size, 0, False
        end = len(data)
        while end > first:
            nl = data.rfind(b"\n", first, end - 1)
            line_start = first if nl < first else nl + 1
            line = data[line_start:end].strip()
            if line:
                try:
                    step = json.loads(line).get("global_step")
                except (json.JSONDecodeError, AttributeError):
                    step = None
                if isinstance(step, int) and step > global_step:
                    removed += 1
                    cut = start + line_start
                else:
                    found = True
                    break
            end = line_start
        if found or start == 0:
            if cut < size:
                with open(path, "r+b") as fh:
                    fh.truncate(cut)
            return removed
        chunk *= 4


FILES = [
    StateFile(pattern="status/metrics.jsonl", model=Metric, kind="jsonl",
              writers=("trainer.status", "trainer.engine"), readers=("monitoring.metrics_index", "monitoring.feed"),
              description="The training curve: one line per logged train step (type=train), evaluation (eval) "
                          "and checkpoint written (checkpoint)."),
]
