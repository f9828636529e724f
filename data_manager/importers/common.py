"""What every importer shares: the problem type, row checks against the chat_sft_v1 spec, and the writers.

An importer turns a foreign file into chat_sft_v1 rows. Before anything is
written, every row is checked with the same pieces the daemon's QUICK level
uses (`DatasetSpec.check_row` and `role_order_problem`), so an importer can
never hand the inbox a file the daemon would reject for its shape.

Writers:
* `write_jsonl(rows, path)`: temp file in the same folder, fsync, rename.
* `write_to_inbox(rows, inbox, name, job)`: `NAME.job.json` first, then the
  rows to a hidden `.NAME.jsonl.tmp` renamed to `NAME.jsonl`, so the watcher
  never sees a half-written file and always finds the sidecar with its data.

Run as: imported by the importer CLIs (no entry point).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from core.atomic_io import fsync_dir
from core.state.queue_records import DATA_SUFFIX, JOB_SUFFIX, parse_job_sidecar, write_job_sidecar
from core.validation.spec import get_spec
from core.validation.validator import role_order_problem
from core.config import add_config_args, config_from_args

logger = logging.getLogger(__name__)

SCHEMA_ID = "chat_sft_v1"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+@=,()-]")


@dataclass
class Problem:
    """One problem of an input file: where (file, line or row) and what."""

    file: str
    line: int | None
    message: str
    rule: str = "import"

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.rule}: {self.message}"


class ImportFailed(ValueError):
    """The input cannot be imported; `problems` lists every reason with file and line."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        shown = "\n".join(f"  {p}" for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        super().__init__(f"{len(problems)} problem(s):\n{shown}{more}")


@dataclass
class ImportResult:
    rows: list[dict]
    problems: list[Problem] = field(default_factory=list)
    stats: dict = field(default_factory=dict)


def row_problems(row: dict) -> list[str]:
    """Why a produced row would fail the daemon's QUICK check for chat_sft_v1 (empty list: it passes)."""
    spec = get_spec(SCHEMA_ID)
    problems = [f"{loc}: {msg}" if loc else msg for loc, msg in spec.check_row(row)]
    if problems:
        return problems
    order = role_order_problem([m["role"] for m in row["messages"]])
    if order:
        problems.append(order)
    for where, text in spec.strings(row):
        if not text.strip():
            problems.append(f"{where} is empty")
    return problems


def normalise_role(role: object) -> str | None:
    """user / assistant / system for the role names found in the wild, else None."""
    if not isinstance(role, str):
        return None
    return ROLE_ALIASES.get(role.strip().lower())


ROLE_ALIASES = {
    "user": "user", "human": "user", "prompter": "user", "question": "user", "customer": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant", "ai": "assistant",
    "chatgpt": "assistant", "answer": "assistant", "bard": "assistant", "claude": "assistant",
    "system": "system",
}


def _dump(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def write_jsonl(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write rows to `path` atomically (temp in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(_dump(rows))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def safe_stem(name: str) -> str:
    """A file stem the watcher accepts (no shell metacharacters, no '..', no control characters)."""
    stem = _SAFE_NAME.sub("_", name)
    while ".." in stem:
        stem = stem.replace("..", ".")
    return stem.strip("._-")[:120] or "import"


def write_to_inbox(rows: list[dict], inbox: str | os.PathLike, name: str, job: dict | None = None) -> Path:
    """Drop rows into inbox/ the way the watcher expects: sidecar first, then data by rename. Returns the data path."""
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    job = {"schema_id": SCHEMA_ID, **(job or {})}
    sidecar, problems = parse_job_sidecar(job)
    if problems:
        raise ValueError("job sidecar: " + "; ".join(problems))
    stem = safe_stem(name)
    candidate, n = stem, 1
    while (inbox / f"{candidate}{DATA_SUFFIX}").exists() or (inbox / f"{candidate}{JOB_SUFFIX}").exists():
        n += 1
        candidate = f"{stem}_{n}"
    write_job_sidecar(inbox / f"{candidate}{JOB_SUFFIX}", sidecar)
    data = inbox / f"{candidate}.jsonl"
    tmp = inbox / f".{candidate}.jsonl.tmp"
    with open(tmp, "wb") as fh:
        fh.write(_dump(rows))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, data)
    fsync_dir(inbox)
    return data


def add_output_args(parser) -> None:
    """--out PATH | --inbox (with --priority/--tag for the job sidecar) and the config arguments."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="write chat_sft_v1 JSONL to this path")
    where.add_argument("--inbox", action="store_true", help="drop the result into the configured inbox/ (sidecar first, then rename)")
    parser.add_argument("--name", help="file name in inbox/ (default: derived from the input file)")
    parser.add_argument("--priority", choices=["high", "normal", "low"], help="queue priority for the job sidecar")
    parser.add_argument("--tag", action="append", default=[], help="tag for the job sidecar (repeatable)")
    add_config_args(parser)


def emit(args, result: ImportResult, source: Path, kind: str) -> int:
    """Write the result where the CLI arguments say; print one human line; exit code."""
    for p in result.problems:
        print(f"skipped: {p}")
    if not result.rows:
        print(f"{source}: no examples produced; nothing written")
        return 1
    if args.out:
        dest = write_jsonl(result.rows, args.out)
    else:
        cfg = config_from_args(args)
        job = {"tags": [f"import:{kind}", *args.tag], "notes": f"imported from {source.name} by data_manager.importers.{kind}"}
        if args.priority:
            job["priority"] = args.priority
        dest = write_to_inbox(result.rows, cfg.layout.inbox, args.name or f"{kind}_{source.stem}", job)
    print(f"{source}: {len(result.rows)} example(s) -> {dest}" + (f" ({len(result.problems)} skipped)" if result.problems else ""))
    return 0
