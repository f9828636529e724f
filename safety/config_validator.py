"""Guard the configuration: critical parameters frozen once checkpoints exist, writable paths, free disk.

Once a checkpoint exists, changing a critical parameter (model.base_model,
model.model_name, model.max_length, or the architecture/vocabulary of the base
model) is refused with a clear message, unless a new run is started explicitly
(`--start-new-run`, which moves the current checkpoints aside to
models/previous_runs/, never deleting them). Range checks are the config
model's own (pydantic); this adds the checks that need the disk.

Run as:
    cadence check-config [--json]          # check config.json against the run on disk
    cadence check-config --start-new-run   # archive current checkpoints; next training starts from base_model
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from core.atomic_io import read_json
from core.config import CadenceConfig
from core.state.lifecycle import ArchivedRun, write_archived_run
from trainer.checkpoint import latest_checkpoint
from core.state.trainer_state import TrainerState

ARCH_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def _latest_state(cfg: CadenceConfig) -> tuple[Path | None, TrainerState]:
    ckpt = latest_checkpoint(cfg.layout.current_model)
    return (ckpt.path, ckpt.trainer_state()) if ckpt else (None, TrainerState())


def critical_problems(cfg: CadenceConfig) -> list[str]:
    ckpt, state = _latest_state(cfg)
    if ckpt is None:
        return []
    problems = []
    old = state.critical or {}
    for key, value in cfg.critical_values().items():
        if key in old and old[key] != value:
            problems.append(f"{key}: checkpoints in {ckpt.parent} were trained with {old[key]!r}, config.json now says "
                            f"{value!r}. Restore it, or start a new run explicitly (safety/config_validator.py --start-new-run).")
    base = cfg.resolve(cfg.model.base_model) / "config.json"
    saved = read_json(ckpt / "config.json", {}) or {}
    current = read_json(base, None)
    if current is not None:
        for key in ARCH_KEYS:
            if key in saved and key in current and saved[key] != current[key]:
                problems.append(f"base model architecture changed: {key} {saved[key]!r} (checkpoints) != {current[key]!r} ({base.parent})")
    return problems


def path_problems(cfg: CadenceConfig) -> list[str]:
    problems = []
    layout = cfg.layout
    for d in (layout.base_dir, layout.inbox, layout.queue, layout.models, layout.status, layout.control, layout.logs):
        if d.exists() and not os.access(d, os.W_OK):
            problems.append(f"{d}: not writable")
    base = cfg.resolve(cfg.model.base_model)
    if not (base / "config.json").is_file() and _latest_state(cfg)[0] is None:
        problems.append(f"model.base_model: {base} has no config.json (build it with scripts/make_tiny_model.py, or download a model)")
    return problems


def disk_problems(cfg: CadenceConfig) -> tuple[list[str], list[str]]:
    """(errors, warnings) for free disk at base_dir."""
    free_gb = shutil.disk_usage(cfg.layout.base_dir).free / 1e9
    errors, warnings = [], []
    if free_gb < cfg.safety.min_free_disk_gb:
        errors.append(f"only {free_gb:.1f} GB free at {cfg.layout.base_dir} (< safety.min_free_disk_gb {cfg.safety.min_free_disk_gb})")
    elif free_gb < cfg.safety.warn_free_disk_gb:
        warnings.append(f"{free_gb:.1f} GB free at {cfg.layout.base_dir} (< safety.warn_free_disk_gb {cfg.safety.warn_free_disk_gb})")
    return errors, warnings


def validate(cfg: CadenceConfig) -> dict:
    errors = critical_problems(cfg) + path_problems(cfg)
    disk_errors, warnings = disk_problems(cfg)
    return {"ok": not errors and not disk_errors, "errors": errors + disk_errors, "warnings": warnings}


def start_new_run(cfg: CadenceConfig, reason: str = "new run") -> Path | None:
    """Move models/current_model aside (never deleted); the next training starts from model.base_model."""
    cur = cfg.layout.current_model
    if not cur.exists() or not any(cur.iterdir()):
        return None
    dest = cfg.layout.previous_runs / time.strftime("run_%Y%m%d_%H%M%S")
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.rename(cur, dest)
    write_archived_run(dest, ArchivedRun(reason=reason, archived_at=time.time()))
    return dest
