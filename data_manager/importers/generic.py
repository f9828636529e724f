"""Generic CSV / TSV / JSON / JSONL instruction data -> chat_sft_v1 JSONL.

Each record becomes one conversation. Recognised shapes (column and key names
are matched case-insensitively, surrounding spaces ignored), first match wins:

* `messages`: HF chat rows, a list of {"role", "content"}; content may also be
  a list of {"type": "text", "text": ...} parts (joined);
* `conversations`: ShareGPT, a list of {"from", "value"} (or role/content);
* `instruction` + `output` (+ optional `input`, appended to the instruction
  after a blank line): Alpaca;
* `prompt` + `response` | `completion` | `output` | `answer`;
* `question` + `answer`;
* an optional `system` column/key becomes the first (system) message.

Role names are normalised (human/prompter -> user; gpt/bot/model/ai/chatgpt
-> assistant). Trailing user turns (no reply to learn from) are trimmed and
counted. Every other problem (unknown columns, empty cells, unknown roles,
non-text content, turns out of order, invalid JSON) names the file, the line
(or JSON array item) and the problem; by default any problem fails the whole
import (all of them listed), `skip_bad` drops the bad records and reports them.
Not handled: multimodal content (image parts), tool/function-call turns,
preference pairs (chosen/rejected), nested JSON other than one top-level list.

Run as:
    cadence import generic data.csv --out data.jsonl
    cadence import generic sharegpt.json --skip-bad --inbox --priority high
"""
from __future__ import annotations

import csv
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from data_manager.importers.common import (ImportFailed, ImportResult, Problem, normalise_role,
                                           row_problems)

logger = logging.getLogger(__name__)

FORMATS = ("csv", "tsv", "json", "jsonl")
REPLY_KEYS = ("response", "completion", "output", "answer")
KNOWN_SHAPES = ("messages", "conversations", "instruction+output[+input]", "prompt+response|completion|output|answer",
                "question+answer")


class RecordError(ValueError):
    """One record cannot be converted (message says why)."""


def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt:
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("ndjson",):
        return "jsonl"
    if suffix in FORMATS:
        return suffix
    raise ImportFailed([Problem(str(path), None, f"cannot tell the format from the extension {path.suffix!r}; "
                                                 f"use --format {'|'.join(FORMATS)}", "import_format")])


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        kinds = {p.get("type") for p in value}
        if kinds <= {"text"}:
            return "".join(str(p.get("text", "")) for p in value)
        raise RecordError(f"{where}: content parts of type {sorted(k for k in kinds if k != 'text')} are not supported (text only)")
    raise RecordError(f"{where}: must be text, got {type(value).__name__}")


def _turns(items: Any, key: str) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise RecordError(f"'{key}' must be a non-empty list of turns")
    out = []
    for i, turn in enumerate(items):
        if not isinstance(turn, dict):
            raise RecordError(f"{key}[{i}] must be an object, got {type(turn).__name__}")
        t = {str(k).strip().lower(): v for k, v in turn.items()}
        raw_role = t.get("role", t.get("from"))
        role = normalise_role(raw_role)
        if role is None:
            raise RecordError(f"{key}[{i}]: unknown role {raw_role!r} (use user/assistant/system or human/gpt)")
        content = t["content"] if "content" in t else t.get("value")
        if content is None:
            raise RecordError(f"{key}[{i}]: no 'content' (or 'value')")
        out.append({"role": role, "content": _text(content, f"{key}[{i}].content")})
    return out


def _cell(rec: dict, key: str) -> str:
    value = rec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RecordError(f"'{key}' is empty")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _text(value, f"'{key}'")


def record_to_row(record: dict) -> tuple[dict, int]:
    """(chat_sft_v1 row, trailing user turns trimmed) for one record; RecordError when it cannot be converted."""
    rec = {str(k).strip().lower(): v for k, v in record.items()}
    if "messages" in rec:
        messages = _turns(rec["messages"], "messages")
    elif "conversations" in rec:
        messages = _turns(rec["conversations"], "conversations")
    elif "instruction" in rec and "output" in rec:
        prompt = _cell(rec, "instruction")
        extra = rec.get("input")
        if extra not in (None, "") and str(extra).strip():
            prompt += "\n\n" + _text(extra, "'input'")
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": _cell(rec, "output")}]
    elif "prompt" in rec and (reply := next((k for k in REPLY_KEYS if k in rec), None)):
        messages = [{"role": "user", "content": _cell(rec, "prompt")}, {"role": "assistant", "content": _cell(rec, reply)}]
    elif "question" in rec and "answer" in rec:
        messages = [{"role": "user", "content": _cell(rec, "question")}, {"role": "assistant", "content": _cell(rec, "answer")}]
    else:
        raise RecordError(f"no known columns (expected {', '.join(KNOWN_SHAPES)}); found: {', '.join(sorted(rec)) or 'none'}")
    if rec.get("system") not in (None, "") and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": _text(rec["system"], "'system'")})
    trimmed = 0
    while len(messages) > 1 and messages[-1]["role"] == "user":
        messages.pop()
        trimmed += 1
    row: dict = {"messages": messages}
    if isinstance(rec.get("id"), (str, int)) and not isinstance(rec.get("id"), bool):
        row["id"] = rec["id"]
    problems = row_problems(row)
    if problems:
        raise RecordError("; ".join(problems))
    return row, trimmed


def iter_records(path: Path, fmt: str) -> Iterator[tuple[int | None, str, Any]]:
    """(line or None, where-label, record) per record; a record that cannot be parsed is a RecordError instead."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ImportFailed([Problem(str(path), line, f"not UTF-8 at byte {exc.start + 1}; save the file as UTF-8", "encoding")]) from None
    if fmt in ("csv", "tsv"):
        csv.field_size_limit(64 * 1024 * 1024)
        reader = csv.DictReader(io.StringIO(text, newline=""), delimiter="\t" if fmt == "tsv" else ",")
        try:
            header = reader.fieldnames
        except csv.Error as exc:
            raise ImportFailed([Problem(str(path), 1, f"unreadable CSV header: {exc}", "csv")]) from None
        if not header:
            raise ImportFailed([Problem(str(path), 1, "no header row", "csv")])
        start = 2
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield reader.line_num, f"line {reader.line_num}", RecordError(f"unreadable CSV: {exc}")
                return
            if None in rec:
                yield start, f"line {start}", RecordError(f"{len(rec[None])} more field(s) than the header's {len(header)}")
            elif any(v is None for v in rec.values()):
                yield start, f"line {start}", RecordError(f"fewer fields than the header's {len(header)}")
            else:
                yield start, f"line {start}", rec
            start = reader.line_num + 1
    elif fmt == "jsonl":
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                yield lineno, f"line {lineno}", json.loads(line)
            except ValueError as exc:
                yield lineno, f"line {lineno}", RecordError(f"invalid JSON: {getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')}")
    else:
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise ImportFailed([Problem(str(path), getattr(exc, "lineno", None),
                                        f"invalid JSON: {getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')}", "json")]) from None
        if isinstance(doc, dict):
            lists = [k for k, v in doc.items() if isinstance(v, list)]
            if len(lists) != 1:
                raise ImportFailed([Problem(str(path), None, "a JSON file must hold a list of records "
                                                             "(or an object with exactly one list)", "json")])
            doc = doc[lists[0]]
        if not isinstance(doc, list):
            raise ImportFailed([Problem(str(path), None, f"a JSON file must hold a list of records, got {type(doc).__name__}", "json")])
        for i, rec in enumerate(doc):
            yield None, f"item {i}", rec


def import_generic(path: str | Path, fmt: str | None = None, *, skip_bad: bool = False) -> ImportResult:
    """chat_sft_v1 rows from one file; ImportFailed listing every bad record unless `skip_bad`."""
    path = Path(path)
    fmt = detect_format(path, fmt)
    rows, problems = [], []
    shapes: Counter = Counter()
    trimmed = records = 0
    for line, where, rec in iter_records(path, fmt):
        records += 1
        try:
            if isinstance(rec, RecordError):
                raise rec
            if not isinstance(rec, dict):
                raise RecordError(f"a record must be an object, got {type(rec).__name__}")
            row, cut = record_to_row(rec)
        except RecordError as exc:
            label = "" if line is not None else f"{where}: "
            problems.append(Problem(str(path), line, f"{label}{exc}", "import_record"))
            continue
        trimmed += cut
        shapes[next(k for k in ("messages", "conversations", "instruction", "prompt", "question")
                    if k in {str(x).strip().lower() for x in rec})] += 1
        rows.append(row)
    if records == 0:
        problems.append(Problem(str(path), None, "no records", "import_record"))
    if problems and not skip_bad:
        raise ImportFailed(problems)
    stats = {"format": fmt, "records": records, "examples": len(rows), "skipped": len(problems),
             "trimmed_trailing_user_turns": trimmed, "shapes": dict(shapes)}
    logger.info("%s: %s", path, stats)
    return ImportResult(rows, problems, stats)
