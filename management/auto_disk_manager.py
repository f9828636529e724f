"""Free disk space in a safe order when it runs low; never touch what Cadence cannot lose.

Below `safety.warn_free_disk_gb` free at base_dir, `free_space(cfg)` frees
until that much is free again (or nothing safe is left), in this order:

  1. optimizer state of every checkpoint but the newest (resume keeps the weights, loses AdamW moments)
  2. checkpoints beyond retention (latest N + best K + deployed + champion kept; younger than
     retention.min_age_hours kept)
  3. versions beyond retention.keep_versions (never a deployed, previous or the newest one) and
     backups beyond retention.backup_keep
  4. completed queue files older than queue.completed_retention_days (with their sidecars)
  5. logs not written for retention.log_retention_days (rotated ones: *.log.N, *.gz, and idle *.log)

Never: the newest checkpoint, a deployed, champion or best-ranked checkpoint,
anything in protected.json, the deployed versions. The original system's
cleanup deleted the only copies of a model; here every candidate is checked
against `management/retention.py` protected names at the moment it is removed.

The training daemon calls `free_space(cfg)` when a file is refused for lack of
disk; the lifecycle worker calls `check(cfg)` every retention.disk_check_interval.

Run as:
    cadence disk status [--json]
    cadence disk free [--dry-run] [--json]
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Callable

from management import retention
from trainer.checkpoint import list_checkpoints
from management.backup_manager import list_backups, prune_backups
from management.model_versioner import list_versions, prune_versions

logger = logging.getLogger(__name__)

GB = 1e9


def disk_free(cfg) -> int:
    return shutil.disk_usage(cfg.layout.base_dir).free


def _old_files(folder: Path, max_age_s: float, now: float, patterns: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    out = set()
    for pattern in patterns:
        for p in folder.glob(pattern):
            if p.is_file() and now - p.stat().st_mtime > max_age_s:
                out.add(p)
    return sorted(out, key=lambda p: p.stat().st_mtime)


def free_space(cfg, dry_run: bool = False, free_bytes: Callable[[], int] | None = None,
               target_free_gb: float | None = None, now: float | None = None) -> dict:
    """Free space (in the safe order) until `target_free_gb` (default safety.warn_free_disk_gb) is free.

    Returns {"free_before_gb", "free_after_gb", "target_gb", "freed_bytes", "dry_run", "actions": [{step, path, bytes}],
    "protected": [names], "enough": bool}. `free_bytes` injects the free-space reading (tests).
    """
    now = time.time() if now is None else now
    read_free = free_bytes or (lambda: disk_free(cfg))
    target = (cfg.safety.warn_free_disk_gb if target_free_gb is None else target_free_gb) * GB
    before = read_free()
    actions: list[dict] = []
    freed = 0

    def enough() -> bool:
        # In a dry run nothing is freed on disk, so count what would go.
        return (before + freed if dry_run or free_bytes is not None else read_free()) >= target

    def take(step: str, path: Path, size: int) -> None:
        nonlocal freed
        actions.append({"step": step, "path": str(path), "bytes": size})
        freed += size

    protected = retention.all_protected_names(cfg)
    layout = cfg.layout
    if not enough():
        ckpts = list_checkpoints(layout.current_model)
        for c in ckpts[:-1]:  # step 1: optimizer state, every checkpoint but the newest
            if enough():
                break
            size = retention.strip_optimizer_state(c, dry_run)
            if size:
                take("optimizer_state", c.state_dir, size)
    if not enough():  # step 2: checkpoints beyond retention
        for c in retention.checkpoints_beyond_retention(cfg, now):
            if enough():
                break
            if c.path.name in retention.all_protected_names(cfg):  # re-read at the moment of deletion
                continue
            take("checkpoint", c.path, retention.delete_checkpoint(c, dry_run))
    if not enough():  # step 3: versions and backups beyond keep
        sizes = {v["name"]: (Path(v["path"]), retention.dir_size(Path(v["path"]))) for v in list_versions(cfg)}
        for name in prune_versions(cfg, dry_run):
            take("version", sizes[name][0], sizes[name][1])
        if not enough():
            bsizes = {b["path"]: retention.dir_size(Path(b["path"])) for b in list_backups(cfg)}
            for path in prune_backups(cfg, dry_run, now):
                take("backup", Path(path), bsizes.get(path, 0))
    if not enough():  # step 4: old completed queue files
        from core.queue_store import QueueError, TrainingQueue
        from core.state.queue_records import SIDECAR_KINDS, sidecar_path

        queue = TrainingQueue(cfg)
        for p in _old_files(queue.dir("recently_completed"), cfg.queue.completed_retention_days * 86400, now, ("*.jsonl",)):
            if enough():
                break
            group = [p] + [sidecar_path(p, kind) for kind in SIDECAR_KINDS]
            size = sum(f.stat().st_size for f in group if f.exists())
            if not dry_run:
                try:
                    queue.remove(p.name)  # the file and its sidecars, with the queue's event
                except QueueError:
                    continue  # retried or removed meanwhile
            take("queue_completed", p, size)
    if not enough():  # step 5: old logs
        for p in _old_files(layout.logs, cfg.retention.log_retention_days * 86400, now, ("*.log.*", "*.gz", "*.log")):
            if enough():
                break
            size = p.stat().st_size
            if not dry_run:
                p.unlink(missing_ok=True)
            take("log", p, size)
    after = before + freed if (dry_run or free_bytes is not None) else read_free()
    result = {"free_before_gb": round(before / GB, 3), "free_after_gb": round(after / GB, 3),
              "target_gb": round(target / GB, 3), "freed_bytes": freed, "dry_run": dry_run, "actions": actions,
              "protected": sorted(protected), "enough": after >= target}
    if actions and not dry_run:
        logger.warning("disk manager freed %.2f GB (%d item(s)); %.1f GB free now", freed / GB, len(actions), after / GB)
    return result


def check(cfg, free_bytes: Callable[[], int] | None = None) -> dict | None:
    """Scheduled check: free space only when below safety.warn_free_disk_gb."""
    free = (free_bytes or (lambda: disk_free(cfg)))()
    if free >= cfg.safety.warn_free_disk_gb * GB:
        return None
    return free_space(cfg, free_bytes=free_bytes)
