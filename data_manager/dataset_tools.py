"""Dataset tools on the daemon's own validators: validate, fix, dedupe, stats.

* `validate_file`: the checks a file meets on its way into the queue, in one
  report: the arrival checks of the inbox watcher (regular file, safe name,
  `.jsonl`, `NAME.job.json`, optionally a duplicate of queued content), then
  `DataValidator` QUICK, STANDARD (the model's tokenizer and chat template)
  and, on request, DEEP.
* `fix_file`: repairs what can be repaired without guessing and drops what
  cannot, reporting every change with its line: encoding (UTF-16/32 -> UTF-8),
  BOM, CRLF, blank lines, role names (human/bot/gpt/model/User ->
  user/assistant), ShareGPT `from`/`value` keys, text-part lists, control
  characters and unpaired surrogates, keys the spec does not know, leading
  assistant turns and trailing user turns; rows still invalid after that
  (bad JSON, empty or missing content, turns out of order, wrong types) are
  dropped. The result is checked with the same row checks as QUICK.
* `dedupe_file`: exact duplicates (same JSON) and normalised ones (same text
  after case-folding and whitespace collapsing); the first is kept.
* `file_stats`: counts, turns, roles, and token lengths with the model's
  tokenizer through STANDARD (min/median/p95/p99/max, supervised tokens).

Run as: cadence dataset validate|fix|dedupe|stats FILE ... (this module is its library).
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.validation.report import ValidationReport
from core.state.queue_records import JOB_SUFFIX, load_job_sidecar
from core.validation.spec import get_spec, UnknownSchemaError
from core.validation.validator import DataValidator, iter_rows, json_depth, role_order_problem
from data_manager.importers.common import normalise_role, write_jsonl
from core.queue_store import TrainingQueue
from core.watcher import name_problem

logger = logging.getLogger(__name__)

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
LEVELS = ("quick", "standard", "deep")


def _stem(path: Path) -> str:
    return path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else path.stem


def sidecar_schema(path: Path) -> tuple[str | None, list[tuple[int | None, str]]]:
    """schema_id from NAME.job.json beside the file (None without one) and its problems as (line, message)."""
    sidecar, problems = load_job_sidecar(path.with_name(_stem(path) + JOB_SUFFIX))
    return (sidecar.schema_id if sidecar else None), problems


# --------------------------------------------------------------------- validate
def validate_file(path: str | os.PathLike, cfg, *, schema_id: str | None = None, level: str = "standard",
                  validator: DataValidator | None = None, check_queue: bool = False) -> ValidationReport:
    """One report with every problem the daemon would find, from arrival checks up to `level`."""
    path = Path(path)
    validator = validator or DataValidator(cfg)
    rep = validator.new_report(path.name, "arrival", schema_id, validator="dataset validate")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        rep.add("file_unreadable", f"{path}: no such file")
        return rep
    if not stat.S_ISREG(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        rep.add("not_regular_file", f"{path.name} is {kind}: never followed or read")
        return rep
    problem = name_problem([path.name])
    if problem:
        rep.add("unsafe_name", problem)
    if path.name.endswith(JOB_SUFFIX):
        data = path.with_name(path.name[: -len(JOB_SUFFIX)] + ".jsonl")
        if not data.exists():
            rep.add("orphan_sidecar", f"{path.name} has no {data.name} beside it")
        return rep
    if not path.name.endswith(".jsonl"):
        rep.add("unsupported_extension", f"{path.name!r}: only .jsonl files are ingested "
                                         "(convert CSV/JSON with cadence import generic)")
        return rep
    side_schema, side_problems = sidecar_schema(path)
    for line, msg in side_problems:
        rep.add("job_sidecar", msg, line)
    if side_problems:
        return rep
    schema_id = schema_id or side_schema or cfg.daemon.default_schema
    rep.schema_id = schema_id
    quick = validator.quick(path, schema_id, name=path.name)
    rep.merge(quick)
    rep.level = "quick"
    if quick.ok and level in ("standard", "deep"):
        rep.merge(validator.standard(path, schema_id, name=path.name))
        rep.level = "standard"
    if quick.ok and level == "deep":
        rep.merge(validator.deep(path, schema_id, name=path.name))
        rep.level = "deep"
    if check_queue and rep.stats.get("sha256"):
        entry = TrainingQueue(cfg).find_by_id(rep.stats["sha256"])
        if entry is not None:
            rep.add("duplicate", f"the same content is already {entry.state}/{entry.name}")
    return rep


# -------------------------------------------------------------------------- fix
@dataclass
class FixResult:
    source: str
    out: str | None
    schema_id: str
    rows_in: int = 0
    rows_out: int = 0
    changes: list[dict] = field(default_factory=list)
    fatal: str | None = None

    def change(self, line: int | None, action: str, message: str) -> None:
        self.changes.append({"line": line, "action": action, "message": message})

    @property
    def dropped(self) -> int:
        return sum(1 for c in self.changes if c["action"] == "dropped")

    def to_dict(self) -> dict:
        return {"source": self.source, "out": self.out, "schema_id": self.schema_id, "rows_in": self.rows_in,
                "rows_out": self.rows_out, "dropped": self.dropped, "fatal": self.fatal, "changes": self.changes}


class _Drop(Exception):
    """This row cannot be repaired; the message says why."""


def _decode(data: bytes, result: FixResult) -> str | None:
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        result.change(1, "fixed", "file was UTF-32: re-encoded as UTF-8")
        return data.decode("utf-32")
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        result.change(1, "fixed", "file was UTF-16: re-encoded as UTF-8")
        return data.decode("utf-16")
    if len(data) > 3 and data[1] == 0 and data[3] == 0 and data[0] != 0:
        result.change(1, "fixed", "file was UTF-16 (little-endian, no BOM): re-encoded as UTF-8")
        return data.decode("utf-16-le")
    if b"\x00" in data[:8192]:
        result.fatal = "NUL bytes: a binary file, not JSONL; nothing to fix"
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        result.change(1, "fixed", "removed the UTF-8 byte order mark")
        data = data[3:]
    return data.decode("utf-8", errors="surrogateescape")


def _clean_string(s: str, where: str, line: int, result: FixResult) -> str:
    found = sorted({f"U+{ord(c):04X}" for c in _CONTROL.findall(s)})
    if not found:
        return s
    result.change(line, "fixed", f"{where}: removed control characters / unpaired surrogates {', '.join(found)}")
    return _CONTROL.sub("", s)


def _fix_chat(row: dict, spec, line: int, result: FixResult) -> dict:
    allowed = set(spec.row_model.model_fields)
    if "messages" not in row and isinstance(row.get("conversations"), list):
        row["messages"] = row.pop("conversations")
        result.change(line, "fixed", "renamed 'conversations' to 'messages'")
    for key in [k for k in row if k not in allowed]:
        del row[key]
        result.change(line, "fixed", f"removed key {key!r} (not part of {spec.id})")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Drop("no 'messages' list (or it is empty)")
    fixed = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise _Drop(f"messages[{i}] is not an object")
        if "role" not in m and "from" in m:
            m["role"] = m.pop("from")
            result.change(line, "fixed", f"messages[{i}]: renamed 'from' to 'role'")
        if "content" not in m and "value" in m:
            m["content"] = m.pop("value")
            result.change(line, "fixed", f"messages[{i}]: renamed 'value' to 'content'")
        role = normalise_role(m.get("role"))
        if role is None:
            raise _Drop(f"messages[{i}]: unknown role {m.get('role')!r}")
        if role != m["role"]:
            result.change(line, "fixed", f"messages[{i}]: role {m['role']!r} -> {role!r}")
        content = m.get("content")
        if isinstance(content, list) and content and all(isinstance(p, dict) and p.get("type") == "text"
                                                           and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
            result.change(line, "fixed", f"messages[{i}]: joined {len(m['content'])} text part(s) into one string")
        if not isinstance(content, str):
            raise _Drop(f"messages[{i}]: content is {'missing' if content is None else type(content).__name__}, not text")
        content = _clean_string(content, f"messages[{i}].content", line, result)
        if not content.strip():
            raise _Drop(f"messages[{i}] ({role}) is empty")
        extra = sorted(set(m) - {"role", "content"})
        if extra:
            result.change(line, "fixed", f"messages[{i}]: removed key(s) {', '.join(map(repr, extra))}")
        fixed.append({"role": role, "content": content})
    start = 1 if fixed[0]["role"] == "system" else 0
    while len(fixed) > start and fixed[start]["role"] == "assistant":
        fixed.pop(start)
        result.change(line, "fixed", "removed a leading assistant turn (nothing it replies to)")
    while fixed and fixed[-1]["role"] == "user":
        fixed.pop()
        result.change(line, "fixed", "removed a trailing user turn (no reply to learn from)")
    if not any(m["role"] == "assistant" for m in fixed):
        raise _Drop("incomplete: no user/assistant pair left")
    row["messages"] = fixed
    if isinstance(row.get("system_prompt"), str):
        row["system_prompt"] = _clean_string(row["system_prompt"], "system_prompt", line, result)
    return row


def _fix_completion(row: dict, spec, line: int, result: FixResult) -> dict:
    for key in [k for k in row if k not in spec.row_model.model_fields]:
        del row[key]
        result.change(line, "fixed", f"removed key {key!r} (not part of {spec.id})")
    for key in ("prompt", "completion", "text"):
        if isinstance(row.get(key), str):
            row[key] = _clean_string(row[key], key, line, result)
    return row


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def fix_file(path: str | os.PathLike, out: str | os.PathLike | None, cfg, *, schema_id: str | None = None) -> FixResult:
    """Repair `path` into `out` (None: report only); every change and every dropped row is in the result."""
    path = Path(path)
    schema_id = schema_id or sidecar_schema(path)[0] or cfg.daemon.default_schema
    spec = get_spec(schema_id)
    result = FixResult(str(path), str(out) if out else None, schema_id)
    text = _decode(path.read_bytes(), result)
    if text is None:
        return result
    if "\r\n" in text:
        text = text.replace("\r\n", "\n")
        result.change(None, "fixed", "converted CRLF line endings to LF")
    v = cfg.validation
    fix_row = _fix_chat if spec.kind == "chat" else _fix_completion
    rows = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            result.change(lineno, "removed", "blank line")
            continue
        result.rows_in += 1
        try:
            if len(raw.encode("utf-8", "surrogateescape")) > v.max_line_bytes:
                raise _Drop(f"line longer than validation.max_line_bytes {v.max_line_bytes}")
            try:
                raw.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise _Drop(f"invalid UTF-8 at character {exc.start + 1}") from None
            if json_depth(raw) > v.max_json_depth:
                raise _Drop(f"JSON nested deeper than validation.max_json_depth {v.max_json_depth}")
            try:
                row = json.loads(raw, parse_constant=_reject_constant)
            except (ValueError, RecursionError) as exc:
                last = " (the last line, cut short)" if lineno == len(lines) and not text.endswith("\n") else ""
                raise _Drop(f"invalid JSON{last}: {getattr(exc, 'msg', exc)}") from None
            if not isinstance(row, dict):
                raise _Drop(f"a row must be a JSON object, got {type(row).__name__}")
            row = fix_row(row, spec, lineno, result)
            problems = [f"{loc}: {msg}" if loc else msg for loc, msg in spec.check_row(row)]
            if not problems and spec.kind == "chat":
                order = role_order_problem([m["role"] for m in row["messages"]])
                problems += [order] if order else []
            if not problems:
                problems += [f"{where} is empty" for where, s in spec.strings(row) if not s.strip()]
            if problems:
                raise _Drop("; ".join(problems))
        except _Drop as exc:
            result.change(lineno, "dropped", str(exc))
            continue
        rows.append(row)
    result.rows_out = len(rows)
    if not rows:
        result.change(None, "dropped", "no valid rows left")
    if out is not None and rows:
        write_jsonl(rows, out)
    return result


# ----------------------------------------------------------------------- dedupe
def _normalised(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(value.casefold().split())
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in sorted(value.items()) if k not in ("id", "metadata", "tags")}
    return value


def dedupe_file(path: str | os.PathLike, out: str | os.PathLike | None, *, normalise: bool = True) -> dict:
    """Drop exact and (with `normalise`) normalised duplicates, keeping the first; lines that are not JSON objects are kept."""
    path = Path(path)
    exact: dict[str, int] = {}
    loose: dict[str, int] = {}
    kept, removed = [], []
    unparsed = 0
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as fh:
        for lineno, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError):
                row = None
            if not isinstance(row, dict):
                unparsed += 1
                kept.append(raw.rstrip("\n"))
                continue
            key = json.dumps(row, sort_keys=True, ensure_ascii=False)
            nkey = json.dumps(_normalised(row), sort_keys=True, ensure_ascii=False)
            if key in exact:
                removed.append({"line": lineno, "duplicate_of": exact[key], "kind": "exact"})
            elif normalise and nkey in loose:
                removed.append({"line": lineno, "duplicate_of": loose[nkey], "kind": "normalised"})
            else:
                exact[key] = lineno
                loose.setdefault(nkey, lineno)
                kept.append(json.dumps(row, ensure_ascii=False))
    if out is not None:
        out = Path(out)
        tmp = out.with_name(f".{out.name}.tmp")
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as fh:
            fh.write("".join(k + "\n" for k in kept))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, out)
    counts = Counter(r["kind"] for r in removed)
    return {"source": str(path), "out": str(out) if out else None, "rows_in": len(kept) + len(removed),
            "rows_out": len(kept), "exact_duplicates": counts["exact"], "normalised_duplicates": counts["normalised"],
            "not_checked": unparsed, "removed": removed}


# ------------------------------------------------------------------------ stats
def file_stats(path: str | os.PathLike, cfg, *, schema_id: str | None = None, validator: DataValidator | None = None) -> dict:
    """Counts, turns and token lengths (the model's tokenizer and chat template, as in training)."""
    path = Path(path)
    schema_id = schema_id or sidecar_schema(path)[0] or cfg.daemon.default_schema
    try:
        spec = get_spec(schema_id)
    except UnknownSchemaError as exc:
        raise ValueError(str(exc)) from None
    validator = validator or DataValidator(cfg)
    lines = blank = 0
    with open(path, "rb") as fh:
        for raw in fh:
            lines += 1
            blank += not raw.strip()
    rows = [row for _, row in iter_rows(path, spec)]
    out: dict[str, Any] = {"file": str(path), "schema_id": schema_id, "lines": lines, "blank_lines": blank,
                           "valid_rows": len(rows), "invalid_rows": lines - blank - len(rows)}
    if spec.kind == "chat" and rows:
        turns = [len(r["messages"]) for r in rows]
        roles = Counter(m["role"] for r in rows for m in r["messages"])
        out.update(messages=sum(turns), roles=dict(roles),
                   turns={"min": min(turns), "median": statistics.median(turns), "max": max(turns)},
                   with_system=sum(1 for r in rows if r["messages"][0]["role"] == "system"),
                   assistant_turns_per_example=round(roles["assistant"] / len(rows), 2))
    if rows:
        std = validator.standard(path, schema_id)
        s = std.stats
        out.update(tokens=s.get("tokens"), supervised_tokens=s.get("supervised_tokens"), length=s.get("length"),
                   reply_length=s.get("reply_length"), max_length=s.get("max_length"),
                   over_max_length=s.get("over_max_length"), suggested_max_length=s.get("suggested_max_length"),
                   encode_errors=std.problems["encode_error"].count if "encode_error" in std.problems else 0)
    return out
