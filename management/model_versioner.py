"""Model versions: consolidate a checkpoint into `models/versions/vNNN_YYYYMMDD_<desc>/`, list, restore, roll back, delete.

A version holds the checkpoint's model files only (hard-linked: checkpoints
are immutable, so a version costs no extra disk until the checkpoint is
pruned, and survives that pruning), a `manifest.json` listing exactly those
files with the checkpoint's digests (so its content id equals the
checkpoint's and the inference server verifies it as is), and
`training_metadata.json`: base model, step, files and examples trained, final
loss, val loss, hyperparameters, training time, config hash, trained_at,
file digests. Consolidating the same content twice returns the existing version.

Restore puts a version's weights back in training: it backs up the newest
checkpoint first (hash-verified, management/backup_manager.py), then
publishes `checkpoint-<latest step + 1>` with the version's weights, the
training state of the newest checkpoint (the global step never goes back)
and fresh optimizer moments. Nothing is deleted. Delete refuses the deployed
and previous versions and the newest one.

Run as:
    cadence versions list [--json]
    cadence versions create [--checkpoint checkpoint-120] [--desc NAME] [--json]
    cadence versions restore VERSION [--json]
    cadence versions rollback [--json]          # restore the version before the newest
    cadence versions delete VERSION --yes [--json]
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import time
from pathlib import Path

from core.atomic_io import fsync_dir
from core.manifest import (METADATA_FILE, MANIFEST_NAME, TRAINING_STATE_DIR, ManifestError, content_id, entry_digest,
                           read_manifest, save_manifest)
from core.state.base import StateError
from core.state.lifecycle import VersionMetadata, read_version_metadata, write_version_metadata
from core.state.trainer_state import LastFile, TrainerState, write_trainer_state
from core.version_label import check_label
from trainer.checkpoint import CheckpointInfo, latest_checkpoint, publish_checkpoint
from management.backup_manager import create_backup
from management.deployment_state import deployed_versions

logger = logging.getLogger(__name__)

VERSION_RE = re.compile(r"^v(\d{3,})_(\d{8})_([A-Za-z0-9._-]+)$")


class VersionError(RuntimeError):
    """A version operation that must not happen (message says why)."""


def _desc(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:40] or "model"


def list_versions(cfg) -> list[dict]:
    """Versions, oldest first: name, number, path, content_id, step, created_at."""
    root = cfg.layout.versions
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = VERSION_RE.match(p.name)
            if not m or not p.is_dir() or not (p / MANIFEST_NAME).is_file():
                continue
            try:
                meta = read_version_metadata(p) or VersionMetadata()
            except StateError as exc:  # the version is still listed (its manifest names its content)
                logger.warning("%s", exc)
                meta = VersionMetadata()
            manifest = read_manifest(p) or {}
            try:
                cid = meta.content_id or content_id(manifest)
            except (ManifestError, KeyError, TypeError, AttributeError):  # an empty or partial manifest has no id
                cid = None
            out.append({"name": p.name, "number": int(m.group(1)), "path": str(p), "step": meta.step,
                        "content_id": cid,
                        "created_at": meta.consolidated_at, "checkpoint": meta.checkpoint,
                        "val_loss": meta.val_loss, "final_loss": meta.final_loss})
    return sorted(out, key=lambda v: v["number"])


def find_version(cfg, name_or_cid: str) -> dict | None:
    return next((v for v in list_versions(cfg) if name_or_cid in (v["name"], v["content_id"])), None)


def training_metadata(cfg, ckpt: CheckpointInfo, manifest: dict, cid: str) -> dict:
    state = ckpt.trainer_state()
    last = state.last_file or LastFile()
    t = cfg.training
    started = state.run_started_at
    files = state.files_done
    return {
        "base_model": cfg.model.base_model, "model_name": cfg.model.model_name, "checkpoint": ckpt.path.name,
        "step": ckpt.step, "files_trained": len(files), "files": files[-50:],
        "examples_trained": state.examples_seen, "tokens_trained": state.tokens_seen,
        "final_loss": last.final_loss, "val_loss": last.val_loss,
        "hyperparameters": {"mode": t.mode, "learning_rate": t.learning_rate, "lr_schedule": t.lr_schedule,
                            "warmup_steps": t.warmup_steps, "weight_decay": t.weight_decay,
                            "micro_batch_tokens": t.micro_batch_tokens,
                            "gradient_accumulation_steps": t.gradient_accumulation_steps, "epochs": t.epochs,
                            "max_length": cfg.model.max_length, "seed": t.seed},
        "training_time_s": state.saved_at - started if started is not None and state.saved_at is not None else None,
        "config_hash": state.config_hash or cfg.critical_hash(),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.saved_at)) if state.saved_at is not None else None,
        "consolidated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "content_id": cid,
        "file_digests": {rel: entry_digest(meta) for rel, meta in manifest["files"].items()},
    }


def create_version(cfg, checkpoint: str | Path | None = None, desc: str | None = None) -> dict:
    """Consolidate a checkpoint (default: the newest) into a version; the existing one if its content is already versioned."""
    if checkpoint is None:
        ckpt = latest_checkpoint(cfg.layout.current_model)
        if ckpt is None:
            raise VersionError(f"no checkpoint under {cfg.layout.current_model}")
    else:
        path = Path(checkpoint)
        path = path if path.is_absolute() else cfg.layout.current_model / path
        m = re.search(r"checkpoint-(\d+)$", path.name)
        if not (path / MANIFEST_NAME).is_file() or not m:
            raise VersionError(f"{path}: not a published checkpoint")
        ckpt = CheckpointInfo(path, int(m.group(1)))
    src_manifest = read_manifest(ckpt.path)
    if src_manifest is None:
        raise VersionError(f"{ckpt.path}: manifest unreadable")
    model_files = {rel: meta for rel, meta in src_manifest["files"].items() if rel.split("/", 1)[0] != TRAINING_STATE_DIR}
    cid = content_id(src_manifest)
    existing = find_version(cfg, cid)
    if existing:
        return existing
    root = cfg.layout.versions
    root.mkdir(parents=True, exist_ok=True)
    number = max((v["number"] for v in list_versions(cfg)), default=0) + 1
    name = check_label(f"v{number:03d}_{time.strftime('%Y%m%d', time.gmtime())}_{_desc(desc or f'step{ckpt.step}')}",
                       "version name")  # it becomes the served label (X-Model-Version) and a folder on each target
    tmp = root / f".tmp-{name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        for rel in model_files:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(ckpt.path / rel, target)
            except OSError:
                shutil.copy2(ckpt.path / rel, target)
        manifest = {**{k: v for k, v in src_manifest.items() if k != "files"}, "files": model_files,
                    "version": name, "global_step": ckpt.step}
        save_manifest(tmp, manifest)
        write_version_metadata(tmp, VersionMetadata.model_validate(training_metadata(cfg, ckpt, manifest, cid)))
        os.rename(tmp, root / name)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("version %s from %s", name, ckpt.path.name)
    return find_version(cfg, name)


def restore_version(cfg, name: str) -> dict:
    """Put a version's weights back into training as a new checkpoint (after backing up the newest one)."""
    version = find_version(cfg, name)
    if version is None:
        raise VersionError(f"no version {name}")
    src = Path(version["path"])
    latest = latest_checkpoint(cfg.layout.current_model)
    backup = None
    if latest is not None:
        backup = create_backup(cfg, latest.path, label=f"before-restore-{version['name']}")
    step = (latest.step if latest else 0) + 1
    state = latest.trainer_state() if latest else TrainerState()
    state = state.model_copy(update={"global_step": step, "restored_from": version["name"], "restored_at": time.time(),
                                     "current_file": None})

    def write(tmp: Path) -> None:
        for p in src.iterdir():
            if p.name in (MANIFEST_NAME, METADATA_FILE) or p.is_dir():
                continue
            shutil.copy2(p, tmp / p.name)
        (tmp / TRAINING_STATE_DIR).mkdir()
        write_trainer_state(tmp / TRAINING_STATE_DIR, state)

    info = publish_checkpoint(cfg.layout.current_model, step, write)
    logger.info("restored %s as %s (backup %s)", version["name"], info.path.name, backup)
    return {"version": version["name"], "checkpoint": info.path.name, "backup": str(backup) if backup else None}


def rollback_version(cfg) -> dict:
    """Restore the version before the newest one."""
    versions = list_versions(cfg)
    if len(versions) < 2:
        raise VersionError("no earlier version to roll back to")
    return restore_version(cfg, versions[-2]["name"])


def protected_versions(cfg) -> set[str]:
    """Version names that must stay: the deployed and previous ones on any target, and the newest."""
    names = set(deployed_versions(cfg))
    versions = list_versions(cfg)
    if versions:
        names.add(versions[-1]["name"])
    return names


def delete_version(cfg, name: str) -> str:
    version = find_version(cfg, name)
    if version is None:
        raise VersionError(f"no version {name}")
    if version["name"] in protected_versions(cfg):
        raise VersionError(f"{version['name']} is deployed, the rollback target or the newest version: refusing to delete")
    path = Path(version["path"])
    trash = path.with_name(f".tmp-delete-{path.name}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)
    logger.info("deleted version %s", version["name"])
    return version["name"]


def prune_versions(cfg, dry_run: bool = False) -> list[str]:
    """Versions beyond retention.keep_versions, oldest first, never a protected one."""
    versions = list_versions(cfg)
    keep = cfg.retention.keep_versions
    protected = protected_versions(cfg)
    doomed = [v["name"] for v in versions[:-keep] if v["name"] not in protected] if len(versions) > keep else []
    if not dry_run:
        for name in doomed:
            delete_version(cfg, name)
    return doomed
