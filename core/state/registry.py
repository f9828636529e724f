"""Every shared file Cadence knows, gathered from the topic modules' `FILES`, and a check of a base dir against it.

`validate_tree(base_dir)` is what the closed-loop test (and `cadence`'s state check) runs: every JSON/JSONL file
under status/, control/, queue/ and models/ either matches a StateFile and validates against its model, or is
one of the files that are not Cadence's records (NOT_RECORDS: users' data, HF model folders), named with why.
"""
from __future__ import annotations

import fnmatch
import importlib
import json
import pkgutil
from pathlib import Path

import core.state
from core.state.base import StateError, StateFile, read_record, read_records

ROOTS = ("status", "control", "queue", "models")

# Files under ROOTS that are not Cadence's shared records, with why.
NOT_RECORDS: tuple[tuple[str, str], ...] = (
    ("queue/*/*.jsonl", "a user's training data (validated by core/validation, not a record)"),
    ("queue/*/.*", "a queue move's temp file"),
    ("models/**/config.json", "a Hugging Face model folder's own file (transformers writes and reads it)"),
    ("models/**/generation_config.json", "a Hugging Face model folder's own file"),
    ("models/**/tokenizer.json", "a Hugging Face tokenizer file"),
    ("models/**/tokenizer_config.json", "a Hugging Face tokenizer file"),
    ("models/**/special_tokens_map.json", "a Hugging Face tokenizer file"),
    ("models/**/vocab.json", "a Hugging Face tokenizer file"),
    ("models/**/adapter_config.json", "a PEFT adapter folder's own file"),
    ("models/**/*.safetensors.index.json", "a sharded safetensors index (transformers)"),
    ("status/.monitor-index/*", "the monitor's private, rebuildable metrics index: one process writes and reads it"),
    ("queue/rejected/*.job.json", "a refused file's job sidecar kept as the user wrote it (it may be why it was refused)"),
    ("queue/.ingest/*.job.json", "a job sidecar being validated with its file, as the user wrote it"),
)


def all_files() -> list[StateFile]:
    """The FILES of every module in core/state/, in module order."""
    out: list[StateFile] = []
    for info in sorted(pkgutil.iter_modules(core.state.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"core.state.{info.name}")
        out.extend(getattr(module, "FILES", ()))
    return out


def _matches(rel: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(rel, pattern):
        return True
    # "**/" also matches no folder at all (models/**/config.json covers models/base/config.json)
    return "**/" in pattern and fnmatch.fnmatchcase(rel, pattern.replace("**/", ""))


def owner_of(rel: str, files: list[StateFile] | None = None) -> StateFile | None:
    for spec in files if files is not None else all_files():
        if _matches(rel, spec.pattern):
            return spec
    return None


def validate_tree(base_dir: str | Path) -> list[str]:
    """Problems found under base_dir's ROOTS: a record that does not validate, or a JSON/JSONL file nobody owns."""
    base = Path(base_dir)
    files = all_files()
    problems: list[str] = []
    for root in ROOTS:
        for path in sorted((base / root).rglob("*")):
            if not path.is_file() or path.suffix not in (".json", ".jsonl"):
                continue
            rel = path.relative_to(base).as_posix()
            spec = owner_of(rel, files)
            if spec is None:
                if not any(_matches(rel, pattern) for pattern, _ in NOT_RECORDS):
                    problems.append(f"{rel}: no state model owns this file")
                continue
            try:
                if spec.kind == "jsonl":
                    for _ in read_records(spec.model, path, strict=True):
                        pass
                else:
                    read_record(spec.model, path)
            except (StateError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                problems.append(f"{rel}: {exc}")
    return problems
