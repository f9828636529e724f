"""Retention, the disk manager, versions and backups never delete a protected item (free space is injected)."""
from __future__ import annotations

import json
import os
import time

import pytest

from core.atomic_io import atomic_write_json
from core.manifest import content_id, verify_manifest
from management import auto_disk_manager, retention
from management.backup_manager import BackupError, create_backup, list_backups, prune_backups
from management.deployment_orchestrator import state_path
from management.model_comparison_engine import load_ledger, save_ledger
from management.model_versioner import (VersionError, create_version, delete_version, list_versions, restore_version)
from tests.management_support import entry, make_checkpoint
from trainer.checkpoint import list_checkpoints, prune_checkpoints, verified_checkpoints

STEPS = (10, 20, 30, 40, 50, 60, 70, 80)


@pytest.fixture
def estate(make_config, micro_model_dir):
    """8 checkpoints; best = 20, deployed = 30 (previous 10), champion = 40, newest = 80."""
    cfg = make_config({"retention.keep_latest": 2, "retention.keep_best": 1, "retention.keep_optimizer_latest": 1,
                       "retention.min_age_hours": 0, "retention.keep_versions": 1, "safety.warn_free_disk_gb": 1000,
                       "queue.completed_retention_days": 1, "retention.log_retention_days": 1})
    for step in STEPS:
        make_checkpoint(cfg, micro_model_dir, step, seed=step)
    ledger = load_ledger(cfg)
    for step in STEPS:
        e = entry(f"checkpoint-{step}", step, val_loss=1.0 if step == 20 else 2.0 + step / 100)
        e["content_id"] = content_id(json.loads((cfg.layout.current_model / f"checkpoint-{step}" / "manifest.json").read_text()))
        ledger["checkpoints"][e["checkpoint"]] = e
    ledger["champion"] = {"checkpoint": "checkpoint-40"}
    save_ledger(cfg, ledger)
    v_prev = create_version(cfg, "checkpoint-10")
    v_active = create_version(cfg, "checkpoint-30")
    atomic_write_json(state_path(cfg), {"targets": {"local": {
        "active": {"version": v_active["name"], "content_id": v_active["content_id"], "checkpoint": "checkpoint-30"},
        "previous": {"version": v_prev["name"], "content_id": v_prev["content_id"], "checkpoint": "checkpoint-10"}}},
        "in_progress": None})
    return cfg


PROTECTED = {"checkpoint-10", "checkpoint-20", "checkpoint-30", "checkpoint-40", "checkpoint-80"}


def _names(cfg):
    return {c.path.name for c in list_checkpoints(cfg.layout.current_model)}


def test_protected_json_names_deployed_champion_best_and_newest(estate):
    protected = retention.write_protected(estate)
    assert protected == {"deployed": ["checkpoint-10", "checkpoint-30"], "champion": "checkpoint-40",
                         "best": ["checkpoint-20"], "newest": "checkpoint-80"}
    # the trainer's own rolling retention honours it
    prune_checkpoints(estate.layout.current_model, keep=1)
    assert _names(estate) == PROTECTED


def test_retention_keeps_latest_best_deployed_and_strips_optimizer_state_safely(estate):
    result = retention.apply_retention(estate)
    assert _names(estate) == PROTECTED | {"checkpoint-70"}           # latest 2 = 70, 80
    ckpts = list_checkpoints(estate.layout.current_model)
    with_opt = [c.path.name for c in ckpts if (c.state_dir / "optimizer.safetensors").exists()]
    assert with_opt == ["checkpoint-80"]                                 # optimizer state only on the latest M=1
    for c in ckpts:
        verify_manifest(c.path)                                          # every stripped checkpoint still verifies
    assert len(list(verified_checkpoints(estate.layout.current_model))) == len(ckpts)
    assert {a["action"] for a in result["actions"]} == {"strip_optimizer", "delete_checkpoint"}


def test_disk_manager_frees_in_safe_order_and_never_touches_protected(estate):
    layout = estate.layout
    old = time.time() - 3 * 86400
    done = layout.queue_dir("recently_completed")
    (done / "old.jsonl").write_text("{}\n")
    (done / "old.meta.json").write_text("{}")
    (done / "new.jsonl").write_text("{}\n")
    os.utime(done / "old.jsonl", (old, old))
    (layout.logs / "trainer.log.1").write_text("x" * 1000)
    os.utime(layout.logs / "trainer.log.1", (old, old))
    (layout.logs / "daemon.log").write_text("live")
    before_versions = {v["name"] for v in list_versions(estate)}

    dry = auto_disk_manager.free_space(estate, dry_run=True, free_bytes=lambda: 0)
    assert _names(estate) == {f"checkpoint-{s}" for s in STEPS}      # dry run: nothing removed
    assert (done / "old.jsonl").exists()

    result = auto_disk_manager.free_space(estate, free_bytes=lambda: 0)  # "disk full": free everything that is safe
    steps = [a["step"] for a in result["actions"]]
    order = ["optimizer_state", "checkpoint", "version", "backup", "queue_completed", "log"]
    assert steps == sorted(steps, key=order.index)                      # the safe order
    assert [a["step"] for a in dry["actions"]] == steps
    assert _names(estate) == PROTECTED | {"checkpoint-70"}
    assert (layout.current_model / "checkpoint-80" / "training_state" / "optimizer.safetensors").exists()  # newest keeps it
    assert {v["name"] for v in list_versions(estate)} == before_versions   # both versions are deployed ones
    assert not (done / "old.jsonl").exists() and not (done / "old.meta.json").exists() and (done / "new.jsonl").exists()
    assert not (layout.logs / "trainer.log.1").exists() and (layout.logs / "daemon.log").exists()
    assert result["freed_bytes"] > 0 and result["enough"] is False


def test_disk_manager_stops_once_enough_is_free(estate):
    target = 1000 * 1e9
    result = auto_disk_manager.free_space(estate, free_bytes=lambda: int(target) - 5000)
    assert [a["step"] for a in result["actions"]] == ["optimizer_state", "optimizer_state"]  # 2 x 4096 bytes
    assert _names(estate) == {f"checkpoint-{s}" for s in STEPS} and result["enough"]
    assert auto_disk_manager.check(estate, free_bytes=lambda: int(target) + 1) is None


def test_the_daemon_entry_point_takes_only_cfg(make_config):
    cfg = make_config({"safety.warn_free_disk_gb": 0})
    result = auto_disk_manager.free_space(cfg)
    assert result["actions"] == [] and result["enough"]


def test_versions_are_idempotent_restorable_and_guarded(estate, micro_model_dir):
    cfg = estate
    v = create_version(cfg, "checkpoint-50", desc="nightly run")
    assert v["name"].startswith("v003_") and v["name"].endswith("_nightly-run")
    assert create_version(cfg, "checkpoint-50")["name"] == v["name"]        # same content: same version
    folder = cfg.layout.versions / v["name"]
    verify_manifest(folder, model_only=True)
    ckpt_manifest = json.loads((cfg.layout.current_model / "checkpoint-50" / "manifest.json").read_text())
    assert v["content_id"] == content_id(ckpt_manifest)                     # the server will report the same id
    assert not (folder / "training_state").exists()
    meta = json.loads((folder / "training_metadata.json").read_text())
    assert meta["step"] == 50 and meta["examples_trained"] == 500 and meta["final_loss"] == 1.0

    with pytest.raises(VersionError):
        delete_version(cfg, list_versions(cfg)[1]["name"])                  # deployed (active)
    with pytest.raises(VersionError):
        delete_version(cfg, v["name"])                                      # the newest
    restored = restore_version(cfg, v["name"])
    assert restored["checkpoint"] == "checkpoint-81"                          # the global step only moves forward
    assert restored["backup"] and list_backups(cfg)                          # backed up first, verified
    new = cfg.layout.current_model / "checkpoint-81"
    assert (new / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()
    state = json.loads((new / "training_state" / "trainer_state.json").read_text())
    assert state["global_step"] == 81 and state["restored_from"] == v["name"]
    assert not (new / "training_state" / "optimizer.safetensors").exists()
    verify_manifest(new)


def test_backups_are_verified_and_pruned_by_count(estate, tmp_path):
    cfg = estate
    src = cfg.layout.current_model / "checkpoint-80"
    backups = [create_backup(cfg, src, label=f"b{i}") for i in range(5)]
    for b in backups:
        verify_manifest(b)
    (src / "model.safetensors").write_bytes(b"corrupted")                   # a source that no longer matches
    with pytest.raises(BackupError):
        create_backup(cfg, src, label="bad")
    removed = prune_backups(cfg)
    assert len(list_backups(cfg)) == cfg.retention.backup_keep and len(removed) == 2

