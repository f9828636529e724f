"""Files waiting in Cadence's queue folders, as the data manager sees them.

A data file is any non-hidden file that is not a sidecar (NAME.meta.json,
NAME.job.json, NAME.reason.json) or a partial write (*.tmp, *.part). The
skill and level of a queued file come from its job sidecar tags
(`skill:NAME`, `level:N`), else its queue sidecar, else its first row's
`metadata` (syllo_v1 rows carry `metadata.skill` and `metadata.level`).

Run as: imported by data_manager.manager (no entry point).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from core.atomic_io import read_json

logger = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".meta.json", ".job.json", ".reason.json")
QUEUE_PRIORITIES = ("high", "normal", "low")


def is_data_file(path: Path) -> bool:
    """A queued/dropped data file, not a sidecar, hidden file or partial write."""
    name = path.name
    return (path.is_file() and not name.startswith(".") and not name.endswith((".tmp", ".part"))
            and not name.endswith(SIDECAR_SUFFIXES))


def queue_depth(layout) -> dict[str, int]:
    """Data files waiting per priority, plus those dropped in inbox/ and not yet ingested."""
    depth = {}
    for prio in QUEUE_PRIORITIES:
        folder = layout.queue_dir(prio)
        depth[prio] = sum(1 for p in folder.iterdir() if is_data_file(p)) if folder.is_dir() else 0
    inbox = layout.inbox
    depth["inbox"] = sum(1 for p in inbox.iterdir() if is_data_file(p) and p.suffix == ".jsonl") if inbox.is_dir() else 0
    depth["total"] = sum(depth[k] for k in (*QUEUE_PRIORITIES, "inbox"))
    return depth


def sidecars_of(data_file: Path) -> list[Path]:
    """NAME.meta.json / NAME.job.json / NAME.reason.json beside NAME.jsonl (also NAME.jsonl.meta.json)."""
    out = []
    for stem in dict.fromkeys((data_file.stem, data_file.name)):
        for suffix in SIDECAR_SUFFIXES:
            p = data_file.with_name(stem + suffix)
            if p.exists():
                out.append(p)
    return out


def _tags_level(tags: Any) -> tuple[str | None, int | None]:
    skill = level = None
    for tag in tags if isinstance(tags, list) else []:
        if isinstance(tag, str) and tag.startswith("skill:"):
            skill = tag[6:]
        elif isinstance(tag, str) and tag.startswith("level:") and tag[6:].isdigit():
            level = int(tag[6:])
    return skill, level


def queued_skill_level(data_file: Path) -> tuple[str | None, int | None]:
    """(skill, level) of a queued file: job sidecar tags, else the meta sidecar, else its first row's metadata."""
    for side in sidecars_of(data_file):
        doc = read_json(side, None)
        if not isinstance(doc, dict):
            continue
        for tags in (doc.get("tags"), (doc.get("job") or {}).get("tags") if isinstance(doc.get("job"), dict) else None):
            skill, level = _tags_level(tags)
            if skill and level:
                return skill, level
        if isinstance(doc.get("skill"), str) and isinstance(doc.get("level"), int):
            return doc["skill"], doc["level"]
    try:
        with open(data_file, encoding="utf-8") as fh:
            meta = json.loads(fh.readline()).get("metadata") or {}
        if isinstance(meta.get("skill"), str) and isinstance(meta.get("level"), int):
            return meta["skill"], meta["level"]
    except (OSError, ValueError, AttributeError):
        pass
    return None, None
