"""Validation rules, their policies and the grouped report every validator writes.

Each check has a rule name, a level and a default severity; `validation.policies`
in config.json sets any rule to error / warning / off. Rules marked `required`
guard things the trainer cannot read at all (bad UTF-8, invalid JSON, rows that
do not fit the spec): they stay errors whatever the policy says.

A report groups problems by rule: the first `validation.report_lines_per_rule`
occurrences keep their line number and message, the rest are counted, so a
million-line file still gives a readable `NAME.reason.json`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from core.state.queue_records import RejectReport, write_reject_report

Severity = Literal["error", "warning", "off"]


@dataclass(frozen=True)
class Rule:
    name: str
    level: Literal["arrival", "quick", "standard", "deep"]
    default: Literal["error", "warning"]
    description: str
    required: bool = False


def _rules(level: str, *specs: tuple) -> list[Rule]:
    return [Rule(name, level, default, desc, required) for name, default, required, desc in specs]


RULES: dict[str, Rule] = {r.name: r for r in [
    *_rules("arrival",
            ("not_regular_file", "error", True, "symlinks, directories, FIFOs and devices are never followed or read"),
            ("unsafe_name", "error", True, "file name with control characters, shell metacharacters or '..'"),
            ("unsupported_extension", "error", True, "only *.jsonl files (and their NAME.job.json sidecars) are ingested"),
            ("job_sidecar", "error", True, "NAME.job.json is not valid JSON or has unknown/invalid keys"),
            ("orphan_sidecar", "error", True, "a NAME.job.json whose NAME.jsonl never arrived"),
            ("unknown_schema", "error", True, "schema_id not in DATASET_SPECS"),
            ("file_vanished", "error", True, "the file disappeared while it was being ingested"),
            ("file_unreadable", "error", True, "the file could not be opened or read"),
            ("duplicate", "error", True, "the same content is already queued, training, trained or failed"),
            ("ingest_error", "error", True, "an unexpected error while ingesting (see the message)")),
    *_rules("quick",
            ("file_too_large", "error", True, "file larger than validation.max_file_bytes"),
            ("empty_file", "error", True, "file has no bytes"),
            ("no_examples", "error", True, "file has no example lines (only whitespace)"),
            ("encoding", "error", True, "file is not UTF-8 (UTF-16/UTF-32 detected)"),
            ("binary", "error", True, "NUL bytes: a binary file, not JSONL"),
            ("bom", "error", False, "UTF-8 byte order mark at the start of the file"),
            ("utf8", "error", True, "line is not valid UTF-8"),
            ("line_too_long", "error", True, "line longer than validation.max_line_bytes"),
            ("invalid_json", "error", True, "line is not valid JSON"),
            ("truncated_last_line", "error", True, "last line has no newline and is not valid JSON (file cut short)"),
            ("json_too_deep", "error", True, "JSON nested deeper than validation.max_json_depth"),
            ("not_object", "error", True, "line is valid JSON but not an object"),
            ("schema", "error", True, "row does not fit the dataset spec"),
            ("lone_surrogate", "error", True, "string holds an unpaired UTF-16 surrogate (cannot be encoded)"),
            ("role_order", "error", False, "roles must be: optional system, then user/assistant alternating, ending with assistant"),
            ("empty_content", "error", False, "message content or completion is empty or whitespace"),
            ("control_chars", "error", False, "string holds control characters (other than tab/newline/CR)"),
            ("blank_line", "warning", False, "blank line between examples")),
    *_rules("standard",
            ("encode_error", "error", True, "the trainer's encoder cannot turn the row into an example"),
            ("zero_supervised", "error", False, "no supervised tokens left after truncation to max_length"),
            ("too_long_p95", "error", False, "95th percentile of example length exceeds model.max_length"),
            ("reply_too_long", "error", False, "a single assistant reply alone exceeds model.max_length"),
            ("truncated_share", "error", False, "share of examples over max_length exceeds validation.max_truncated_share"),
            ("over_max_length", "warning", False, "example longer than max_length (truncated/dropped per training.truncation)"),
            ("reply_p95_high", "warning", False, "reply length p95 above 80% of max_length"),
            ("reply_p99_high", "warning", False, "reply length p99 above 90% of max_length"),
            ("max_length_oversized", "warning", False, "max_length is over 1.5x the p99 example length (a smaller one trains faster)")),
    *_rules("deep",
            ("exact_duplicate", "warning", False, "row identical to an earlier row"),
            ("near_duplicate", "warning", False, "row nearly identical to an earlier row (MinHash)"),
            ("answer_leakage", "warning", False, "the reply appears verbatim in the prompt"),
            ("repetition", "warning", False, "a word repeated 5+ times in a row"),
            ("single_letter", "warning", False, "one letter is over 40% of the reply's letters"),
            ("short_reply", "warning", False, "reply shorter than 5 characters"),
            ("mojibake", "warning", False, "encoding junk such as 'Ã©', 'â€™' or U+FFFD"),
            ("invalid_json_reply", "warning", False, "reply looks like JSON but does not parse"),
            ("length_ratio", "warning", False, "prompt over 20x the reply, or reply over 50x the prompt"),
            ("flow_anomaly", "warning", False, "echoed or repeated turns in a conversation"),
            ("role_marker", "warning", False, "chat markup or 'user:'/'assistant:' prefixes inside content"),
            ("emoji_share", "warning", False, "share of emoji-thinking replies outside 30-70%")),
]}


class PolicyError(ValueError):
    """validation.policies names an unknown rule or tries to relax a required one."""


class Policies:
    def __init__(self, overrides: dict[str, str] | None = None):
        problems = []
        for name, sev in (overrides or {}).items():
            if name not in RULES:
                problems.append(f"validation.policies.{name}: unknown rule (known: {', '.join(sorted(RULES))})")
            elif RULES[name].required and sev != "error":
                problems.append(f"validation.policies.{name}: required rule, cannot be set to {sev!r}")
        if problems:
            raise PolicyError("; ".join(problems))
        self.overrides = dict(overrides or {})

    def severity(self, rule: str, default: Severity | None = None) -> Severity:
        if rule in self.overrides:
            return self.overrides[rule]  # type: ignore[return-value]
        return default or RULES[rule].default


@dataclass
class RuleProblems:
    rule: str
    severity: Severity
    count: int = 0
    lines: list[dict] = field(default_factory=list)


class ValidationReport:
    """Every problem of one file at one level, grouped by rule."""

    def __init__(self, file: str, level: str, *, validator: str = "DataValidator", schema_id: str | None = None,
                 policies: Policies | None = None, lines_per_rule: int = 20):
        self.file = file
        self.level = level
        self.validator = validator
        self.schema_id = schema_id
        self.policies = policies or Policies()
        self.lines_per_rule = lines_per_rule
        self.problems: dict[str, RuleProblems] = {}
        self.stats: dict[str, Any] = {}
        self.created_at = time.time()

    def add(self, rule: str, message: str, line: int | None = None, severity: Severity | None = None) -> None:
        """Record one problem; `severity` replaces the rule's default (an explicit policy still wins)."""
        sev = self.policies.severity(rule, severity)
        if sev == "off":
            return
        group = self.problems.get(rule)
        if group is None:
            group = self.problems[rule] = RuleProblems(rule, sev)
        group.count += 1
        if len(group.lines) < self.lines_per_rule:
            group.lines.append({"line": line, "message": message})

    def merge(self, other: "ValidationReport") -> None:
        for rule, g in other.problems.items():
            mine = self.problems.setdefault(rule, RuleProblems(rule, g.severity))
            mine.count += g.count
            mine.lines.extend(g.lines[: max(0, self.lines_per_rule - len(mine.lines))])
        self.stats.update(other.stats)

    @property
    def error_count(self) -> int:
        return sum(g.count for g in self.problems.values() if g.severity == "error")

    @property
    def warning_count(self) -> int:
        return sum(g.count for g in self.problems.values() if g.severity == "warning")

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def rules(self, severity: Severity | None = None) -> list[str]:
        return [r for r, g in self.problems.items() if severity is None or g.severity == severity]

    def summary(self) -> str:
        """One human line: verdict, counts, and the first occurrence of each rule."""
        verdict = "ok" if self.ok else "rejected"
        parts = []
        for g in sorted(self.problems.values(), key=lambda g: (g.severity != "error", -g.count)):
            first = g.lines[0] if g.lines else {}
            where = f" first at line {first['line']}" if first.get("line") else ""
            msg = f": {first['message']}" if first.get("message") else ""
            msg = msg if len(msg) <= 160 else msg[:157] + "..."
            parts.append(f"{g.rule} x{g.count} ({g.severity}){where}{msg}")
        head = f"{self.file}: {self.level} {verdict}, {self.error_count} error(s), {self.warning_count} warning(s)"
        text = head + ("; " + "; ".join(parts) if parts else "")
        return text if len(text) <= 1000 else text[:997] + "..."

    def to_dict(self) -> dict:
        return {
            "validator": self.validator,
            "level": self.level,
            "file": self.file,
            "schema_id": self.schema_id,
            "verdict": "ok" if self.ok else "rejected",
            "summary": self.summary(),
            "errors": self.error_count,
            "warnings": self.warning_count,
            "problems": [
                {"rule": g.rule, "severity": g.severity, "count": g.count,
                 "description": RULES[g.rule].description if g.rule in RULES else "",
                 "lines": g.lines, "more": g.count - len(g.lines)}
                for g in sorted(self.problems.values(), key=lambda g: (g.severity != "error", g.rule))
            ],
            "stats": self.stats,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created_at)),
        }

    def to_record(self) -> RejectReport:
        return RejectReport.model_validate(self.to_dict())

    def write(self, path: str | Path) -> None:
        """NAME.reason.json (core.state.queue_records.RejectReport)."""
        write_reject_report(path, self.to_record())
