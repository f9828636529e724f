"""Files waiting in Cadence's queue, as the data manager sees them: how many, and which skill and level each holds.

The folders, suffixes and sidecars are the queue's own (core.queue_store, core.state.queue_records). The skill
and level of a queued file come from its tags (`skill:NAME`, `level:N`) in its job sidecar, else in its queue
sidecar (which keeps the job sidecar's tags), else from its first row's `metadata` (syllo_v1 rows carry
`metadata.skill` and `metadata.level`).

Run as: imported by data_manager.manager (no entry point).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from core.queue_store import PRIORITIES, data_file_names
from core.state.base import StateError
from core.state.queue_records import (DATA_SUFFIX, SIDECAR_SUFFIXES, QueueMeta, read_job_sidecar, read_queue_meta,
                                      sidecar_path)

logger = logging.getLogger(__name__)


def is_data_file(path: Path) -> bool:
    """A dropped data file, not a sidecar, hidden file or partial write."""
    name = path.name
    return (path.is_file() and not name.startswith(".") and not name.endswith((".tmp", ".part"))
            and not name.endswith(SIDECAR_SUFFIXES))


def queue_depth(layout) -> dict[str, int]:
    """Data files waiting per priority, plus those dropped in inbox/ and not yet ingested."""
    depth = {prio: len(data_file_names(layout.queue_dir(prio))) for prio in PRIORITIES}
    inbox = layout.inbox
    depth["inbox"] = sum(1 for p in inbox.iterdir() if is_data_file(p) and p.name.endswith(DATA_SUFFIX)) \
        if inbox.is_dir() else 0
    depth["total"] = sum(depth[k] for k in (*PRIORITIES, "inbox"))
    return depth


def _tags_level(tags: list[str]) -> tuple[str | None, int | None]:
    skill = level = None
    for tag in tags:
        if tag.startswith("skill:"):
            skill = tag[6:]
        elif tag.startswith("level:") and tag[6:].isdigit():
            level = int(tag[6:])
    return skill, level


def _sidecar_records(data_file: Path, meta: QueueMeta | None = None):
    """The file's job sidecar, then its queue sidecar (`meta` when the caller has it), each that exists and reads; a
    broken one is logged and does not hide the next."""
    readers = [lambda: read_job_sidecar(sidecar_path(data_file, "job")),
               lambda: meta if meta is not None else read_queue_meta(sidecar_path(data_file, "meta"))]
    for read in readers:
        try:
            record = read()
        except StateError as exc:
            logger.warning("%s", exc)
            continue
        if record is not None:
            yield record


def replay_levels(data_file: Path, meta: QueueMeta | None = None) -> dict[str, int]:
    """{skill: level} of the other skills' replay rows in a generated file (its `replay:SKILL:LEVEL` tags, job
    sidecar else queue sidecar); {} for a file without them."""
    for record in _sidecar_records(data_file, meta):
        out = {}
        for tag in record.tags:
            parts = tag.split(":")
            if len(parts) == 3 and parts[0] == "replay" and parts[2].isdigit():
                out[parts[1]] = int(parts[2])
        return out
    return {}


def queued_skill_level(data_file: Path, meta: QueueMeta | None = None) -> tuple[str | None, int | None]:
    """(skill, level) of a queued file: job sidecar tags, else the queue sidecar's (`meta` when the caller has it),
    else its first row's metadata."""
    for record in _sidecar_records(data_file, meta):
        skill, level = _tags_level(record.tags)
        if skill and level:
            return skill, level
    try:
        with open(data_file, encoding="utf-8") as fh:
            first = json.loads(fh.readline()).get("metadata") or {}
        if isinstance(first.get("skill"), str) and isinstance(first.get("level"), int):
            return first["skill"], first["level"]
    except (OSError, ValueError, AttributeError):
        pass
    return None, None
