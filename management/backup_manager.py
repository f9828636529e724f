"""Hash-verified backups of model folders, taken before any destructive operation, kept by count and age.

A backup is `models/backups/<UTC time>_<label>/`: the folder's files copied
(hard-linked when the source is immutable and on the same filesystem: a
checkpoint's files are never rewritten in place), a fresh manifest (blake3 per file)
written over the copy, and the copy verified against the source's manifest
when it has one. Only a verified backup counts; a failed one is removed and
the caller's destructive step must not run (BackupError).

Run as:
    cadence backup list [--json]
    cadence backup create PATH [--label NAME] [--json]
    cadence backup prune [--json]
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from core.atomic_io import fsync_dir
from core.manifest import ManifestError, read_manifest, verify_manifest, write_manifest
from core.state.base import StateError
from core.state.lifecycle import BackupInfo, read_backup_info, write_backup_info

logger = logging.getLogger(__name__)


class BackupError(RuntimeError):
    """The backup could not be made or verified; nothing destructive may follow."""


def backups_dir(cfg) -> Path:
    return cfg.layout.backups


def link_or_copy_tree(src: Path, dst: Path, skip_top: tuple[str, ...] = ()) -> None:
    """Copy `src` into the new folder `dst`, hard-linking files where possible."""
    dst.mkdir(parents=True)
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if rel.parts[0] in skip_top:
            continue
        target = dst / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def create_backup(cfg, source: str | Path, label: str | None = None) -> Path:
    """Back up `source` (a model folder); returns the verified backup folder or raises BackupError."""
    source = Path(source)
    if not source.is_dir():
        raise BackupError(f"{source}: nothing to back up")
    root = backups_dir(cfg)
    root.mkdir(parents=True, exist_ok=True)
    name = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}_{label or source.name}"
    final, tmp = root / name, root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        link_or_copy_tree(source, tmp)
        if read_manifest(source) is not None:
            verify_manifest(tmp)  # the copy matches the source's own hashes
        else:
            write_manifest(tmp)
        write_backup_info(tmp, BackupInfo(source=str(source), label=label, created_at=time.time()))
        os.rename(tmp, final)
        fsync_dir(root)
    except (OSError, ManifestError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BackupError(f"backup of {source} failed: {exc}") from exc
    logger.info("backed up %s to %s", source, final)
    return final


def list_backups(cfg) -> list[dict]:
    root = backups_dir(cfg)
    out = []
    if root.is_dir():
        for p in sorted(root.iterdir()):
            if p.is_dir() and not p.name.startswith("."):
                try:
                    info = read_backup_info(p)
                except StateError as exc:  # still listed (and pruned by age) by its folder's time
                    logger.warning("%s", exc)
                    info = None
                out.append({"name": p.name, "path": str(p), "source": info.source if info else None,
                            "created_at": info.created_at if info else p.stat().st_mtime})
    return sorted(out, key=lambda b: b["created_at"])


def prune_backups(cfg, dry_run: bool = False, now: float | None = None) -> list[str]:
    """Remove backups beyond `retention.backup_keep` (oldest first) and older than backup_max_age_days; the newest stays."""
    now = time.time() if now is None else now
    rc = cfg.retention
    items = list_backups(cfg)
    doomed = []
    for i, b in enumerate(items):
        newest_n = i >= len(items) - rc.backup_keep
        too_old = now - b["created_at"] > rc.backup_max_age_days * 86400
        if i == len(items) - 1:
            continue
        if not newest_n or too_old:
            doomed.append(b)
    for b in doomed:
        if not dry_run:
            shutil.rmtree(b["path"], ignore_errors=True)
            logger.info("removed backup %s", b["name"])
    return [b["path"] for b in doomed]
