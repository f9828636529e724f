"""sha256 manifests of model folders: written with every checkpoint and version, verified before any load or deploy.

`manifest.json` = {"format": 1, "created_at": ISO time, "files": {relpath: {"sha256": hex, "size": bytes}}, **extra}.
It lists every file of the folder except itself and anything under `training_state/`
when `model_only` is set (deployments copy model files only).
"""
from __future__ import annotations

import hashlib
import time
from pathlib import Path

from core.atomic_io import atomic_write_json, read_json

MANIFEST_NAME = "manifest.json"
TRAINING_STATE_DIR = "training_state"


class ManifestError(Exception):
    """A folder that does not match its manifest; the message names the file and the problem."""


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _files(folder: Path, model_only: bool):
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name == MANIFEST_NAME:
            continue
        rel = p.relative_to(folder).as_posix()
        if model_only and rel.split("/", 1)[0] == TRAINING_STATE_DIR:
            continue
        yield rel, p


def build_manifest(folder: str | Path, model_only: bool = False, **extra) -> dict:
    folder = Path(folder)
    files = {rel: {"sha256": sha256_file(p), "size": p.stat().st_size} for rel, p in _files(folder, model_only)}
    return {"format": 1, "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "files": files, **extra}


def write_manifest(folder: str | Path, model_only: bool = False, **extra) -> dict:
    manifest = build_manifest(folder, model_only, **extra)
    atomic_write_json(Path(folder) / MANIFEST_NAME, manifest)
    return manifest


def verify_manifest(folder: str | Path, model_only: bool = False) -> dict:
    """Check every listed file's size and sha256; raise ManifestError naming the first bad file(s)."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST_NAME)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{folder}: {MANIFEST_NAME} missing or unreadable")
    problems = []
    for rel, meta in manifest["files"].items():
        if model_only and rel.split("/", 1)[0] == TRAINING_STATE_DIR:
            continue
        p = folder / rel
        if not p.is_file():
            problems.append(f"{rel}: missing")
        elif p.stat().st_size != meta.get("size"):
            problems.append(f"{rel}: size {p.stat().st_size} != {meta.get('size')} (truncated or changed)")
        elif sha256_file(p) != meta.get("sha256"):
            problems.append(f"{rel}: sha256 mismatch")
    if problems:
        raise ManifestError(f"{folder}: " + "; ".join(problems))
    return manifest


def content_id(manifest: dict, model_only: bool = True) -> str:
    """One hash for a model's content (same weights + tokenizer = same id, wherever they live)."""
    h = hashlib.sha256()
    for rel in sorted(manifest["files"]):
        if model_only and rel.split("/", 1)[0] == TRAINING_STATE_DIR:
            continue
        h.update(rel.encode() + b"\0" + manifest["files"][rel]["sha256"].encode() + b"\n")
    return h.hexdigest()
