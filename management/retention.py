"""Checkpoint retention: latest N + best K + deployed (+ champion), optimizer state only on the latest M; versions and backups by count.

`protected_checkpoints(cfg)` is the one answer to "what must never be
deleted"; `write_protected(cfg)` publishes it as
`models/current_model/protected.json` ({"deployed": [names], "champion":
name, "best": [names], "newest": name}), which the trainer's own rolling
retention honours (trainer/checkpoint.py prune_checkpoints). `apply_retention`
removes what the policy does not keep; checkpoints younger than
retention.min_age_hours are kept too.

Stripping optimizer state rewrites the checkpoint's manifest without those
files *before* deleting them, so a crash in between leaves a checkpoint that
still verifies (an extra file is harmless, a missing listed one is not). The
trainer resumes from such a checkpoint with fresh AdamW moments.

Run as:
    cadence retention [--dry-run] [--json]
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from core.manifest import TRAINING_STATE_DIR, read_manifest, save_manifest
from core.state.base import StateError
from core.state.ledger import read_ledger
from core.state.lifecycle import ProtectedCheckpoints, read_protected
from core.state.lifecycle import write_protected as write_protected_record
from trainer.checkpoint import CheckpointInfo, list_checkpoints, optimizer_state_files, protected_names
from management.backup_manager import prune_backups
from management.deployment_orchestrator import deployed_checkpoints
from management.model_comparison_engine import best_checkpoints
from management.model_versioner import prune_versions

logger = logging.getLogger(__name__)

OPTIMIZER_FILES = ("scheduler.pt",)  # besides the optimizer state itself (trainer.checkpoint.optimizer_state_files)


def dir_size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def protected_checkpoints(cfg) -> dict:
    """{"deployed": [...], "champion": name|None, "best": [...], "newest": name|None} of checkpoint names."""
    ckpts = list_checkpoints(cfg.layout.current_model)
    ledger = read_ledger(cfg.layout)
    champion = ledger.champion.checkpoint if ledger and ledger.champion else None
    return {"deployed": sorted(set(deployed_checkpoints(cfg))), "champion": champion,
            "best": best_checkpoints(cfg, cfg.retention.keep_best), "newest": ckpts[-1].path.name if ckpts else None}


def write_protected(cfg) -> dict:
    protected = protected_checkpoints(cfg)
    record = ProtectedCheckpoints(**{k: v for k, v in protected.items() if v})
    try:
        on_disk = read_protected(cfg.layout.current_model)
        unchanged = on_disk is not None and on_disk.to_json() == record.to_json()
    except StateError:
        unchanged = False  # a torn or hand-broken file is replaced by the current answer
    if not unchanged:
        write_protected_record(cfg.layout.current_model, record)
    return protected


def all_protected_names(cfg) -> set[str]:
    protected = write_protected(cfg)
    names = set(protected_names(cfg.layout.current_model))
    for value in protected.values():
        names.update([value] if isinstance(value, str) else (value or []))
    return names


def strip_optimizer_state(ckpt: CheckpointInfo, dry_run: bool = False) -> int:
    """Remove optimizer files from one checkpoint (manifest first); returns bytes freed."""
    files = optimizer_state_files(ckpt.state_dir) + [ckpt.state_dir / n for n in OPTIMIZER_FILES
                                                     if (ckpt.state_dir / n).is_file()]
    if not files:
        return 0
    freed = sum(f.stat().st_size for f in files)
    if dry_run:
        return freed
    manifest = read_manifest(ckpt.path)
    if manifest is not None:
        for f in files:
            manifest["files"].pop(f"{TRAINING_STATE_DIR}/{f.name}", None)
        manifest["optimizer_state_removed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        save_manifest(ckpt.path, manifest)
    for f in files:
        f.unlink(missing_ok=True)
    logger.info("removed optimizer state of %s (%.1f MB)", ckpt.path.name, freed / 1e6)
    return freed


def delete_checkpoint(ckpt: CheckpointInfo, dry_run: bool = False) -> int:
    size = dir_size(ckpt.path)
    if not dry_run:
        trash = ckpt.path.with_name(f".tmp-checkpoint-delete-{ckpt.step}")
        os.rename(ckpt.path, trash)  # unpublished first: never a half checkpoint listed
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("retention: removed %s (%.1f MB)", ckpt.path.name, size / 1e6)
    return size


def checkpoint_time(ckpt: CheckpointInfo) -> float:
    """When the checkpoint was saved (its trainer state says; the folder's mtime changes when optimizer state is stripped)."""
    saved = ckpt.trainer_state().saved_at
    return float(saved) if saved is not None else ckpt.path.stat().st_mtime


def checkpoints_beyond_retention(cfg, now: float | None = None) -> list[CheckpointInfo]:
    """Checkpoints the policy does not keep, oldest first."""
    now = time.time() if now is None else now
    rc = cfg.retention
    ckpts = list_checkpoints(cfg.layout.current_model)
    keep = {c.path.name for c in ckpts[-rc.keep_latest:]} | all_protected_names(cfg)
    if ckpts:
        keep.add(ckpts[-1].path.name)  # the newest complete checkpoint, always
    out = []
    for c in ckpts:
        if c.path.name in keep:
            continue
        if rc.min_age_hours > 0 and now - checkpoint_time(c) < rc.min_age_hours * 3600:
            continue
        out.append(c)
    return out


def optimizer_candidates(cfg, keep_latest: int | None = None) -> list[CheckpointInfo]:
    ckpts = list_checkpoints(cfg.layout.current_model)
    m = cfg.retention.keep_optimizer_latest if keep_latest is None else keep_latest
    return [c for c in ckpts[:-max(1, m)] if optimizer_state_files(c.state_dir)]


def apply_retention(cfg, dry_run: bool = False, now: float | None = None) -> dict:
    """Run the policy once: strip optimizer state beyond the latest M, delete checkpoints beyond the policy."""
    actions = []
    for c in optimizer_candidates(cfg):
        actions.append({"action": "strip_optimizer", "path": str(c.path), "bytes": strip_optimizer_state(c, dry_run)})
    for c in checkpoints_beyond_retention(cfg, now):
        actions.append({"action": "delete_checkpoint", "path": str(c.path), "bytes": delete_checkpoint(c, dry_run)})
    for name in prune_versions(cfg, dry_run):  # keep_versions, never a deployed, previous or the newest one
        actions.append({"action": "delete_version", "path": str(cfg.layout.versions / name), "bytes": 0})
    for path in prune_backups(cfg, dry_run, now):
        actions.append({"action": "delete_backup", "path": path, "bytes": 0})
    return {"dry_run": dry_run, "actions": actions, "freed_bytes": sum(a["bytes"] for a in actions),
            "protected": protected_checkpoints(cfg)}
