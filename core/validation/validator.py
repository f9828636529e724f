"""DataValidator: QUICK on arrival, STANDARD before training, DEEP on request.

* QUICK reads every byte once (and hashes it: the sha256 is the queue id):
  encoding, line and file size, JSON, nesting depth, the dataset spec for
  every row, role order, empty content, control characters.
* STANDARD encodes every example with the model's own tokenizer and chat
  template through `trainer.data.encode_examples` (the same masking and
  truncation as training) and checks token lengths against model.max_length.
* DEEP (core.validation.deep) looks for duplicates, leakage and degenerate data.

Each level returns a `ValidationReport` (core.validation.report); a report
with errors rejects the file. Nothing here raises on bad input: every problem
becomes a rule with a line number.

Run as:
    cadence validate FILE [--schema chat_sft_v1] [--level quick|standard|deep] [--json]
"""
from __future__ import annotations

from pathlib import Path

import hashlib
import json
import logging
import math
import os
import re
import stat
from typing import Any, Iterator

from core.validation.report import Policies, ValidationReport
from core.validation.spec import DatasetSpec, UnknownSchemaError, get_spec
from core.validation.deep import run_deep
from core.validation.standard import run_standard
from trainer.data import load_tokenizer

logger = logging.getLogger(__name__)

UTF8_BOM = b"\xef\xbb\xbf"
# C0 controls except tab, LF, CR; DEL; and unpaired surrogates (json.loads lets "\ud800" through).
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")
_STRING_OR_BRACKET = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
READ_BUFFER = 1 << 20


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


# one decoder for every line (json.loads with arguments builds a new one per call)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)
# JSON escapes that can decode to a control character or an unpaired surrogate, and a raw DEL:
# only lines holding one of these get the per-string character check
_SUSPECT_ESCAPE = re.compile(r"\\u00[01][0-9a-fA-F]|\\u007[fF]|\\[bf]|\x7f|\\u[dD][89a-fA-F]")
_ROLES = frozenset(("system", "user", "assistant"))


def _fast_messages(msgs) -> bool:
    """True only when a messages list is certainly valid: {role, content} dicts, non-blank strings, roles in order."""
    if type(msgs) is not list or not msgs:
        return False
    expected, turns = "user", 0
    for i, m in enumerate(msgs):
        if type(m) is not dict or len(m) != 2:
            return False
        content = m.get("content")
        if type(content) is not str or not content.strip():
            return False
        role = m.get("role")
        if i == 0 and role == "system":
            continue
        if role != expected:
            return False
        expected = "assistant" if expected == "user" else "user"
        turns += 1
    return turns > 0 and expected == "user"


def _fast_chat(row: dict) -> bool:
    return len(row) == 1 and _fast_messages(row.get("messages"))


def _fast_syllo(row: dict) -> bool:
    md = row.get("metadata")
    return (len(row) == 2 and type(md) is dict and type(md.get("skill")) is str and type(md.get("level")) is int
            and _fast_messages(row.get("messages")))


def _fast_completion(row: dict) -> bool:
    if len(row) == 1:
        text = row.get("text")
        return type(text) is str and bool(text.strip())
    p, c = row.get("prompt"), row.get("completion")
    return len(row) == 2 and type(p) is str and type(c) is str and bool(p.strip()) and bool(c.strip())


# Rows of the common shape skip pydantic; anything else (or anything wrong) takes the full path for its messages.
FAST_PATHS = {"chat_sft_v1": _fast_chat, "syllo_v1": _fast_syllo, "completion_v1": _fast_completion}


def json_depth(text: str) -> int:
    """Deepest [ / { nesting of a JSON text, ignoring brackets inside strings."""
    depth = best = 0
    for m in _STRING_OR_BRACKET.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            best = max(best, depth)
        elif tok in "]}":
            depth -= 1
    return best


def open_regular(path: str | os.PathLike) -> int:
    """fd of a regular file, never following a symlink and never blocking on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise IsADirectoryError(f"{path}: not a regular file")
    os.set_blocking(fd, True)
    return fd


class DataValidator:
    """Validates one file at a level; one instance per process (it caches the tokenizer)."""

    def __init__(self, cfg, tokenizer=None):
        self.cfg = cfg
        self.vcfg = cfg.validation
        self.policies = Policies(self.vcfg.policies)
        self._tokenizer = tokenizer

    def new_report(self, name: str, level: str, schema_id: str | None = None, validator: str = "DataValidator") -> ValidationReport:
        return ValidationReport(name, level, validator=validator, schema_id=schema_id, policies=self.policies,
                                lines_per_rule=self.vcfg.report_lines_per_rule)

    # ------------------------------------------------------------------ QUICK
    def quick(self, path: str | os.PathLike, schema_id: str, name: str | None = None) -> ValidationReport:
        """Every line of the file against the spec; stats carry sha256, bytes, lines, examples."""
        path = Path(path)
        rep = self.new_report(name or path.name, "quick", schema_id)
        try:
            spec = get_spec(schema_id)
        except UnknownSchemaError as exc:
            rep.validator = "SpecValidator"
            rep.add("unknown_schema", str(exc))
            return rep
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            rep.add("file_vanished", "file disappeared before it could be read")
            return rep
        except IsADirectoryError:
            rep.add("not_regular_file", "not a regular file")
            return rep
        except OSError as exc:
            rule = "not_regular_file" if exc.errno == 40 else "file_unreadable"  # 40 = ELOOP: a symlink
            rep.add(rule, f"cannot open: {exc.strerror}")
            return rep
        with os.fdopen(fd, "rb", buffering=READ_BUFFER) as fh:
            self._quick_stream(fh, os.fstat(fd).st_size, spec, rep)
        return rep

    def _quick_stream(self, fh, size: int, spec: DatasetSpec, rep: ValidationReport) -> None:
        v = self.vcfg
        rep.stats.update(bytes=size, lines=0, examples=0, blank_lines=0)
        if size > v.max_file_bytes:
            rep.add("file_too_large", f"{size} bytes > validation.max_file_bytes {v.max_file_bytes}")
            return
        if size == 0:
            rep.add("empty_file", "the file is empty")
            return
        head = fh.peek(8192)[:8192]
        if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
            rep.add("encoding", "file is UTF-32; save it as UTF-8", line=1)
            return
        if head.startswith((b"\xff\xfe", b"\xfe\xff")) or (len(head) > 3 and head[1] == 0 and head[3] == 0 and head[0] != 0):
            rep.add("encoding", "file is UTF-16; save it as UTF-8", line=1)
            return
        if b"\x00" in head:
            rep.add("binary", f"NUL byte at offset {head.index(0)}: this is a binary file, not JSONL", line=1)
            return
        sha = hashlib.sha256()
        limit = v.max_line_bytes
        max_depth = v.max_json_depth
        lineno = examples = blank = 0
        check_row = spec.check_row
        row_checks = self._chat_checks if spec.kind == "chat" else self._completion_checks
        fast = FAST_PATHS.get(spec.id, lambda row: False)
        decode = _DECODER.decode
        suspect = _SUSPECT_ESCAPE.search
        while True:
            raw = fh.readline(limit + 1)
            if not raw:
                break
            lineno += 1
            sha.update(raw)
            if len(raw) > limit and not raw.endswith(b"\n"):
                total = len(raw)
                while True:
                    chunk = fh.readline(READ_BUFFER)
                    sha.update(chunk)
                    total += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        break
                rep.add("line_too_long", f"{total} bytes > validation.max_line_bytes {limit}", lineno)
                continue
            last = not raw.endswith(b"\n")
            if lineno == 1 and raw.startswith(UTF8_BOM):
                rep.add("bom", "UTF-8 byte order mark at the start of the file; save without BOM", 1)
                raw = raw[3:]
            body = raw.strip()
            if not body:
                blank += 1
                rep.add("blank_line", "blank line", lineno)
                continue
            if b"\x00" in body:
                rep.add("binary", f"NUL byte at column {body.index(0) + 1}", lineno)
                continue
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as exc:
                rep.add("utf8", f"invalid UTF-8 at byte {exc.start + 1}: {exc.reason}", lineno)
                continue
            if body.count(b"[") + body.count(b"{") > max_depth and (d := json_depth(text)) > max_depth:
                rep.add("json_too_deep", f"nesting depth {d} > validation.max_json_depth {max_depth}", lineno)
                continue
            try:
                row = decode(text)
            except RecursionError:
                rep.add("json_too_deep", "nesting too deep to parse", lineno)
                continue
            except ValueError as exc:
                msg = f"{getattr(exc, 'msg', exc)} at column {getattr(exc, 'colno', '?')}"
                if last:
                    rep.add("truncated_last_line", f"last line has no newline and is cut short ({msg})", lineno)
                else:
                    rep.add("invalid_json", msg, lineno)
                continue
            if not isinstance(row, dict):
                rep.add("not_object", f"a row must be a JSON object, got {type(row).__name__}", lineno)
                continue
            if not fast(row):
                problems = check_row(row)
                if problems:
                    for loc, msg in problems:
                        rep.add("schema", f"{loc or '(row)'}: {msg}" if loc else msg, lineno)
                    continue
                row_checks(rep, spec, row, lineno)
            if suspect(text):
                self._char_checks(rep, spec, row, lineno)
            examples += 1
        rep.stats.update(lines=lineno, examples=examples, blank_lines=blank, sha256=sha.hexdigest())
        if examples == 0 and rep.error_count == 0:
            rep.add("no_examples", "no example lines (only whitespace)")

    def _strings(self, rep: ValidationReport, spec: DatasetSpec, row: dict, lineno: int) -> None:
        for where, s in spec.strings(row):
            if not s.strip():
                rep.add("empty_content", f"{where} is empty", lineno)

    def _char_checks(self, rep: ValidationReport, spec: DatasetSpec, row: dict, lineno: int) -> None:
        for where, s in spec.strings(row):
            m = _BAD_CHARS.search(s)
            if m:
                ch = m.group()
                if "\ud800" <= ch <= "\udfff":
                    rep.add("lone_surrogate", f"{where}: unpaired surrogate U+{ord(ch):04X} at char {m.start()}", lineno)
                else:
                    rep.add("control_chars", f"{where}: control character U+{ord(ch):04X} at char {m.start()}", lineno)

    def _chat_checks(self, rep: ValidationReport, spec: DatasetSpec, row: dict, lineno: int) -> None:
        roles = [m["role"] for m in row["messages"]]
        problem = role_order_problem(roles)
        if problem:
            rep.add("role_order", problem, lineno)
        self._strings(rep, spec, row, lineno)

    def _completion_checks(self, rep: ValidationReport, spec: DatasetSpec, row: dict, lineno: int) -> None:
        self._strings(rep, spec, row, lineno)

    # --------------------------------------------------------------- STANDARD
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg.resolve(self.cfg.model.base_model),
                                             trust_remote_code=self.cfg.model.trust_remote_code)
        return self._tokenizer

    def standard(self, path: str | os.PathLike, schema_id: str, name: str | None = None,
                 batch_size: int = 1024) -> ValidationReport:
        """Every example through the trainer's encoder; token-length statistics and thresholds."""
        path = Path(path)
        rep = self.new_report(name or path.name, "standard", schema_id)
        try:
            get_spec(schema_id)
        except UnknownSchemaError as exc:
            rep.add("unknown_schema", str(exc))
            return rep
        try:
            rows = iter_rows(path)
            run_standard(rep, rows, self.tokenizer, schema_id, self.cfg.model.max_length,
                         self.cfg.training.truncation, self.vcfg.max_truncated_share, batch_size)
        except FileNotFoundError:
            rep.add("file_vanished", "file disappeared before it could be read")
        except OSError as exc:
            rep.add("file_unreadable", f"cannot read: {exc.strerror or exc}")
        return rep

    # ------------------------------------------------------------------- DEEP
    def deep(self, path: str | os.PathLike, schema_id: str, name: str | None = None) -> ValidationReport:
        path = Path(path)
        rep = self.new_report(name or path.name, "deep", schema_id)
        try:
            spec = get_spec(schema_id)
        except UnknownSchemaError as exc:
            rep.add("unknown_schema", str(exc))
            return rep
        try:
            run_deep(rep, iter_rows(path, spec), spec)
        except FileNotFoundError:
            rep.add("file_vanished", "file disappeared before it could be read")
        except OSError as exc:
            rep.add("file_unreadable", f"cannot read: {exc.strerror or exc}")
        return rep


def role_order_problem(roles: list[str]) -> str | None:
    """Optional system first, then user/assistant alternating from user, ending with assistant."""
    start = 1 if roles and roles[0] == "system" else 0
    expected = "user"
    for i in range(start, len(roles)):
        if roles[i] != expected:
            if roles[i] == "system":
                return f"messages[{i}] is 'system': only the first message may be system"
            return f"messages[{i}] is {roles[i]!r}, expected {expected!r} (user and assistant alternate, user first)"
        expected = "assistant" if expected == "user" else "user"
    if len(roles) == start:
        return "no user/assistant turns"
    if roles[-1] != "assistant":
        return f"conversation ends with {roles[-1]!r}: the last message must be the assistant reply"
    return None


def iter_rows(path: Path, spec: DatasetSpec | None = None) -> Iterator[tuple[int, Any]]:
    """(line number, row) for every parseable object line; lines QUICK would reject are skipped
    (STANDARD and DEEP run on files QUICK already accepted)."""
    fd = open_regular(path)
    with os.fdopen(fd, "rb", buffering=READ_BUFFER) as fh:
        for lineno, raw in enumerate(fh, 1):
            if lineno == 1 and raw.startswith(UTF8_BOM):
                raw = raw[3:]
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (ValueError, RecursionError):
                continue
            if isinstance(row, dict) and (spec is None or not spec.check_row(row)):
                yield lineno, row


def percentile(sorted_values, q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (q in 0..100)."""
    if not len(sorted_values):
        return 0.0
    k = max(0, min(len(sorted_values) - 1, math.ceil(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[k])
