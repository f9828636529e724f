"""Model-lifecycle records under models/ and the comparison engine's frozen validation set.

    models/current_model/protected.json        ProtectedCheckpoints  management/retention.py writes; the trainer's
                                                                     rolling retention (trainer/checkpoint.py) honours it
    models/versions/*/training_metadata.json   VersionMetadata       management/model_versioner.py, beside the manifest
    models/current_model/checkpoint-*/adapter/training_metadata.json
                                               AdapterMetadata       trainer/engine.py (LoRA mode), as the original
                                                                     system's LoRA pipeline kept it
    models/backups/*/backup.json               BackupInfo            management/backup_manager.py
    models/previous_runs/*/ARCHIVED.json       ArchivedRun           safety/config_validator.py (start a new run)
    status/comparison_validation.jsonl         ValidationRow         management/model_comparison_engine.py freezes it
                                                                     once when no validation file is configured
    */manifest.json                            ModelManifest         core/manifest.py owns the format (written with
                                                                     every checkpoint, version, backup and export);
                                                                     listed here so every shared file has a model

Each has its read/write functions here; a missing file reads as None.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from core.atomic_io import atomic_write_bytes
from core.manifest import METADATA_FILE
from core.state.base import RecordPart, SparseRecord, StateFile, read_record, read_records, write_record

PROTECTED_NAME = "protected.json"
VERSION_METADATA_NAME = METADATA_FILE  # beside the manifest; the manifest's coverage check skips it
BACKUP_INFO_NAME = "backup.json"
ARCHIVED_NAME = "ARCHIVED.json"


# ------------------------------------------------------------------ protected.json
class ProtectedCheckpoints(SparseRecord):
    """Checkpoint names nothing may delete: only the keys with a value are written."""

    deployed: list[str] | None = None  # active, previous and in-progress checkpoints of every target
    champion: str | None = None
    best: list[str] | None = None  # the retention.keep_best best-ranked
    newest: str | None = None

    def names(self) -> set[str]:
        return set(self.deployed or []) | set(self.best or []) | {n for n in (self.champion, self.newest) if n}


def read_protected(checkpoint_root: str | os.PathLike) -> ProtectedCheckpoints | None:
    return read_record(ProtectedCheckpoints, Path(checkpoint_root) / PROTECTED_NAME)


def write_protected(checkpoint_root: str | os.PathLike, protected: ProtectedCheckpoints) -> None:
    write_record(Path(checkpoint_root) / PROTECTED_NAME, protected)


# ------------------------------------------------------------------ versions
class Hyperparameters(RecordPart):
    mode: str | None = None
    learning_rate: float | None = None
    lr_schedule: str | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    micro_batch_tokens: int | None = None
    gradient_accumulation_steps: int | None = None
    epochs: int | float | None = None
    max_length: int | None = None
    seed: int | None = None


class VersionMetadata(SparseRecord):
    """What a consolidated version was trained on and how (its content id matches its manifest's)."""

    base_model: str | None = None
    model_name: str | None = None
    checkpoint: str | None = None
    step: int | None = None
    files_trained: int | None = None
    files: list[str] | None = None  # the last 50 trained files
    examples_trained: int | None = None
    tokens_trained: int | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    hyperparameters: Hyperparameters | None = None
    training_time_s: float | None = None
    config_hash: str | None = None
    trained_at: str | None = None
    consolidated_at: str | None = None
    content_id: str | None = None
    file_digests: dict[str, str] | None = None


def read_version_metadata(version_dir: str | os.PathLike) -> VersionMetadata | None:
    return read_record(VersionMetadata, Path(version_dir) / VERSION_METADATA_NAME)


def write_version_metadata(version_dir: str | os.PathLike, meta: VersionMetadata) -> None:
    write_record(Path(version_dir) / VERSION_METADATA_NAME, meta)


class AdapterMetadata(SparseRecord):
    """A LoRA checkpoint's adapter/training_metadata.json."""

    base_model: str
    model_name: str | None = None
    lora_r: int
    lora_alpha: int | float
    lora_dropout: float
    target_modules: list[str]
    learning_rate: float
    epochs: int | float
    global_step: int | None = None
    training_examples: int | None = None
    files_trained: int | None = None
    final_loss: float | None = None
    val_loss: float | None = None
    training_time_s: float | None = None
    trained_at: str | None = None


def read_adapter_metadata(adapter_dir: str | os.PathLike) -> AdapterMetadata | None:
    return read_record(AdapterMetadata, Path(adapter_dir) / VERSION_METADATA_NAME)


def write_adapter_metadata(adapter_dir: str | os.PathLike, meta: AdapterMetadata) -> None:
    write_record(Path(adapter_dir) / VERSION_METADATA_NAME, meta)


# ------------------------------------------------------------------ backups, archived runs
class BackupInfo(SparseRecord):
    source: str  # the folder that was backed up
    label: str | None = None
    created_at: float


def read_backup_info(backup_dir: str | os.PathLike) -> BackupInfo | None:
    return read_record(BackupInfo, Path(backup_dir) / BACKUP_INFO_NAME)


def write_backup_info(backup_dir: str | os.PathLike, info: BackupInfo) -> None:
    write_record(Path(backup_dir) / BACKUP_INFO_NAME, info)


class ArchivedRun(SparseRecord):
    """Why models/current_model was moved aside (critical settings changed: a new run starts from the base model)."""

    reason: str
    archived_at: float


def read_archived_run(run_dir: str | os.PathLike) -> ArchivedRun | None:
    return read_record(ArchivedRun, Path(run_dir) / ARCHIVED_NAME)


def write_archived_run(run_dir: str | os.PathLike, archived: ArchivedRun) -> None:
    write_record(Path(run_dir) / ARCHIVED_NAME, archived)


# ------------------------------------------------------------------ frozen validation set
class ChatMessage(RecordPart):
    role: str
    content: str


class ValidationRow(SparseRecord):
    """One row of the frozen validation set. The file is training data in chat format (the scorer reads it like any
    validation file), so its rows carry no schema_version: a row is a chat_sft_v1 example, versioned by that schema."""

    messages: list[ChatMessage]

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude={"schema_version"})


def freeze_validation_rows(layout, rows: list[ValidationRow]) -> None:
    """Write the frozen validation set once, atomically (the whole file appears or nothing)."""
    text = "".join(json.dumps(r.to_json(), ensure_ascii=False) + "\n" for r in rows)
    atomic_write_bytes(layout.comparison_validation, text.encode("utf-8"))


def read_validation_rows(layout) -> list[ValidationRow]:
    return list(read_records(ValidationRow, layout.comparison_validation))


# ------------------------------------------------------------------ manifest.json (owner: core/manifest.py)
class ManifestFile(RecordPart):
    blake3: str | None = None
    sha256: str | None = None  # manifests written before blake3
    size: int


class ModelManifest(SparseRecord):
    """The shape core/manifest.py writes (and verifies): this model only lets the shared-file checks validate it;
    reading, writing and verifying manifests stays in core/manifest.py."""

    format: int = 1
    created_at: str | None = None
    files: dict[str, ManifestFile]
    global_step: int | None = None  # checkpoints and versions
    version: str | None = None  # versions: the served label
    exported_from: str | None = None  # exports
    optimizer_state_removed_at: str | None = None  # retention stripped the optimizer state


# Order matters where patterns overlap (fnmatch's `*` crosses folders): the adapter's metadata before the versions'.
FILES = [
    StateFile(pattern="models/**/protected.json", model=ProtectedCheckpoints,
              writers=("management.retention",), readers=("management.retention", "trainer.checkpoint"),
              description="Checkpoint names retention must keep: deployed, champion, best, newest (in "
                          "models/current_model/, and in an archived run that took it along)."),
    StateFile(pattern="models/**/adapter/training_metadata.json", model=AdapterMetadata,
              writers=("trainer.engine",), readers=(),
              description="A LoRA checkpoint's adapter metadata (rank, alpha, base model, losses)."),
    StateFile(pattern="models/**/training_metadata.json", model=VersionMetadata,
              writers=("management.model_versioner",), readers=("management.model_versioner",),
              description="What a consolidated version (models/versions/*/) was trained on and how, with its "
                          "content id."),
    StateFile(pattern="models/backups/*/backup.json", model=BackupInfo,
              writers=("management.backup_manager",), readers=("management.backup_manager",),
              description="Where a hash-verified backup came from and when it was taken."),
    StateFile(pattern="models/previous_runs/*/ARCHIVED.json", model=ArchivedRun,
              writers=("safety.config_validator",), readers=(),
              description="Why and when models/current_model was moved aside for a new run."),
    StateFile(pattern="status/comparison_validation.jsonl", model=ValidationRow, kind="jsonl",
              writers=("management.model_comparison_engine",), readers=("management.scoring",),
              description="The frozen validation set (chat rows) made once from held-out eval items when no "
                          "validation file is configured."),
    StateFile(pattern="models/**/manifest.json", model=ModelManifest,
              writers=("core.manifest",), readers=("core.manifest", "inference.loader"),
              description="Content manifest (blake3 + size per file) of every checkpoint, version and backup; "
                          "format, reading and writing: core/manifest.py (read_manifest, save_manifest, "
                          "write_manifest)."),
]
