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

from pydantic import Field

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

    deployed: list[str] | None = Field(None, description="active, previous and in-progress checkpoints of every target")
    champion: str | None = Field(None, description="The champion checkpoint.")
    best: list[str] | None = Field(None, description="the retention.keep_best best-ranked")
    newest: str | None = Field(None, description="The newest complete checkpoint.")

    def names(self) -> set[str]:
        return set(self.deployed or []) | set(self.best or []) | {n for n in (self.champion, self.newest) if n}


def read_protected(checkpoint_root: str | os.PathLike) -> ProtectedCheckpoints | None:
    return read_record(ProtectedCheckpoints, Path(checkpoint_root) / PROTECTED_NAME)


def write_protected(checkpoint_root: str | os.PathLike, protected: ProtectedCheckpoints) -> None:
    write_record(Path(checkpoint_root) / PROTECTED_NAME, protected)


# ------------------------------------------------------------------ versions
class Hyperparameters(RecordPart):
    mode: str | None = Field(None, description="training.mode.")
    learning_rate: float | None = Field(None, description="training.learning_rate.")
    lr_schedule: str | None = Field(None, description="training.lr_schedule.")
    warmup_steps: int | None = Field(None, description="training.warmup_steps.")
    weight_decay: float | None = Field(None, description="training.weight_decay.")
    micro_batch_tokens: int | None = Field(None, description="training.micro_batch_tokens.")
    gradient_accumulation_steps: int | None = Field(None, description="training.gradient_accumulation_steps.")
    epochs: int | float | None = Field(None, description="training.epochs.")
    max_length: int | None = Field(None, description="model.max_length.")
    seed: int | None = Field(None, description="training.seed.")


class VersionMetadata(SparseRecord):
    """What a consolidated version was trained on and how (its content id matches its manifest's)."""

    base_model: str | None = Field(None, description="model.base_model.")
    model_name: str | None = Field(None, description="model.model_name.")
    checkpoint: str | None = Field(None, description="The checkpoint consolidated.")
    step: int | None = Field(None, description="Its global step.")
    files_trained: int | None = Field(None, description="Files trained up to it.")
    files: list[str] | None = Field(None, description="the last 50 trained files")
    examples_trained: int | None = Field(None, description="Examples trained up to it.")
    tokens_trained: int | None = Field(None, description="Tokens trained up to it.")
    final_loss: float | None = Field(None, description="Training loss at the end of the last file.")
    val_loss: float | None = Field(None, description="Validation loss of the last file.")
    hyperparameters: Hyperparameters | None = Field(None, description="The training settings.")
    training_time_s: float | None = Field(None, description="Seconds from the run's start to the checkpoint.")
    config_hash: str | None = Field(None, description="Hash of the critical config keys it was trained with.")
    trained_at: str | None = Field(None, description="When the checkpoint was saved (ISO time).")
    consolidated_at: str | None = Field(None, description="When the version was made (ISO time).")
    content_id: str | None = Field(None, description="Hash of its model files (equals its manifest's content id).")
    file_digests: dict[str, str] | None = Field(None, description="Per model file: its digest.")


def read_version_metadata(version_dir: str | os.PathLike) -> VersionMetadata | None:
    return read_record(VersionMetadata, Path(version_dir) / VERSION_METADATA_NAME)


def write_version_metadata(version_dir: str | os.PathLike, meta: VersionMetadata) -> None:
    write_record(Path(version_dir) / VERSION_METADATA_NAME, meta)


class AdapterMetadata(SparseRecord):
    """A LoRA checkpoint's adapter/training_metadata.json."""

    base_model: str = Field(description="The base model the adapter applies to.")
    model_name: str | None = Field(None, description="model.model_name.")
    lora_r: int = Field(description="training.lora.rank.")
    lora_alpha: int | float = Field(description="training.lora.alpha.")
    lora_dropout: float = Field(description="training.lora.dropout.")
    target_modules: list[str] = Field(description="training.lora.target_modules.")
    learning_rate: float = Field(description="training.learning_rate.")
    epochs: int | float = Field(description="training.epochs.")
    global_step: int | None = Field(None, description="The checkpoint's global step.")
    training_examples: int | None = Field(None, description="Examples trained.")
    files_trained: int | None = Field(None, description="Files trained.")
    final_loss: float | None = Field(None, description="Training loss at the end of the last file.")
    val_loss: float | None = Field(None, description="Validation loss of the last file.")
    training_time_s: float | None = Field(None, description="Seconds since the run started.")
    trained_at: str | None = Field(None, description="When (ISO time).")


def read_adapter_metadata(adapter_dir: str | os.PathLike) -> AdapterMetadata | None:
    return read_record(AdapterMetadata, Path(adapter_dir) / VERSION_METADATA_NAME)


def write_adapter_metadata(adapter_dir: str | os.PathLike, meta: AdapterMetadata) -> None:
    write_record(Path(adapter_dir) / VERSION_METADATA_NAME, meta)


# ------------------------------------------------------------------ backups, archived runs
class BackupInfo(SparseRecord):
    source: str = Field(description="the folder that was backed up")
    label: str | None = Field(None, description="The label given (else the source folder's name is in the backup's name).")
    created_at: float = Field(description="When (epoch seconds).")


def read_backup_info(backup_dir: str | os.PathLike) -> BackupInfo | None:
    return read_record(BackupInfo, Path(backup_dir) / BACKUP_INFO_NAME)


def write_backup_info(backup_dir: str | os.PathLike, info: BackupInfo) -> None:
    write_record(Path(backup_dir) / BACKUP_INFO_NAME, info)


class ArchivedRun(SparseRecord):
    """Why models/current_model was moved aside (critical settings changed: a new run starts from the base model)."""

    reason: str = Field(description="Why the run was archived.")
    archived_at: float = Field(description="When (epoch seconds).")


def read_archived_run(run_dir: str | os.PathLike) -> ArchivedRun | None:
    return read_record(ArchivedRun, Path(run_dir) / ARCHIVED_NAME)


def write_archived_run(run_dir: str | os.PathLike, archived: ArchivedRun) -> None:
    write_record(Path(run_dir) / ARCHIVED_NAME, archived)


# ------------------------------------------------------------------ frozen validation set
class ChatMessage(RecordPart):
    role: str = Field(description="user or assistant.")
    content: str = Field(description="The text.")


class ValidationRow(SparseRecord):
    """One row of the frozen validation set. The file is training data in chat format (the scorer reads it like any
    validation file), so its rows carry no schema_version: a row is a chat_sft_v1 example, versioned by that schema."""

    messages: list[ChatMessage] = Field(description="A held-out prompt and its expected answer.")

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
    blake3: str | None = Field(None, description="BLAKE3 digest (new manifests).")
    sha256: str | None = Field(None, description="manifests written before blake3")
    size: int = Field(description="Bytes.")


class ModelManifest(SparseRecord):
    """The shape core/manifest.py writes (and verifies): this model only lets the shared-file checks validate it;
    reading, writing and verifying manifests stays in core/manifest.py."""

    format: int = Field(1, description="The manifest format (1).")
    created_at: str | None = Field(None, description="When (ISO time).")
    files: dict[str, ManifestFile] = Field(description="Per relative path: digest and size.")
    global_step: int | None = Field(None, description="checkpoints and versions")
    version: str | None = Field(None, description="versions: the served label")
    exported_from: str | None = Field(None, description="exports")
    optimizer_state_removed_at: str | None = Field(None, description="retention stripped the optimizer state")


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
