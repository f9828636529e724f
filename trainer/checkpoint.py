"""Checkpoints on disk: atomic publish, blake3 manifest, verified load with fallback, rolling retention.

Layout (DESIGN.md): `<current_model>/checkpoint-<global_step>/` holds the
`save_pretrained` model and tokenizer (loadable by AutoModelForCausalLM as is),
`training_state/` (optimizer.safetensors, rng.pt, trainer_state.json) and
`manifest.json` (blake3 + size per file). A checkpoint is written into a hidden temp folder beside it,
every file fsynced, then renamed: a checkpoint on disk is complete or absent.

Each file is hashed and fsynced on a background thread as soon as the writer
seals it (`write_fn(tmp, seal)`), so the model's hash and flush overlap with
writing the optimizer state instead of following the whole write.
"""
from __future__ import annotations

import errno
import inspect
import logging
import os
import re
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from core.atomic_io import fsync_dir, fsync_file
from core.manifest import MANIFEST_NAME, ManifestCheck, ManifestError, TRAINING_STATE_DIR, file_entry, write_manifest
from core.state.base import StateError
from core.state.lifecycle import read_protected
from core.state.trainer_state import TrainerState, read_trainer_state

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
# optimizer state files under training_state/ (trainer.optim_state): one file, ~1 GB shards, or a legacy torch.save
OPTIMIZER_STATE_RE = re.compile(r"^optimizer(-\d{5}-of-\d{5})?\.safetensors$|^optimizer\.pt$")


def optimizer_state_files(state_dir: str | Path) -> list[Path]:
    """A checkpoint's optimizer state files, sorted; empty when retention stripped them."""
    state_dir = Path(state_dir)
    return sorted(p for p in state_dir.iterdir() if OPTIMIZER_STATE_RE.match(p.name)) if state_dir.is_dir() else []


class DiskFullError(OSError):
    """Not enough disk to write a checkpoint; nothing partial was left behind."""


class CheckpointError(RuntimeError):
    """No usable checkpoint could be loaded."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int

    @property
    def state_dir(self) -> Path:
        return self.path / TRAINING_STATE_DIR

    def trainer_state(self) -> TrainerState:
        """The checkpoint's resume record (core/state/trainer_state.py); a fresh state when it has none."""
        return read_trainer_state(self.state_dir) or TrainerState()


def list_checkpoints(root: str | Path) -> list[CheckpointInfo]:
    """Published checkpoints (with a manifest), oldest first. Temp folders are never listed."""
    root = Path(root)
    out = []
    if root.is_dir():
        for p in root.iterdir():
            m = CHECKPOINT_RE.match(p.name)
            if m and p.is_dir() and (p / MANIFEST_NAME).is_file():
                out.append(CheckpointInfo(p, int(m.group(1))))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(root: str | Path) -> CheckpointInfo | None:
    ckpts = list_checkpoints(root)
    return ckpts[-1] if ckpts else None


def warn_corrupt(ckpt: CheckpointInfo, exc: Exception) -> None:
    logger.warning("checkpoint %s is corrupt, falling back to the previous one: %s", ckpt.path.name, exc)


def checked_checkpoints(root: str | Path, skip: set[str] = frozenset()):
    """Newest first: (checkpoint, its ManifestCheck). The small files (configs, trainer state) are verified
    already, so the caller may read them; the large ones are being hashed in the background and the caller
    must call `check.result()` before trusting what it loaded. A checkpoint whose small files fail is skipped
    with a warning here."""
    for ckpt in reversed(list_checkpoints(root)):
        if ckpt.path.name in skip:
            continue
        try:
            check = ManifestCheck(ckpt.path, workers=1)  # one hashing thread: the load runs on the other core
            if not check.small_files_ok:
                check.result()
        except ManifestError as exc:
            warn_corrupt(ckpt, exc)
            continue
        yield ckpt, check


def verified_checkpoints(root: str | Path):
    """Newest first, each fully verified against its manifest; a corrupt one is skipped with a warning."""
    for ckpt, check in checked_checkpoints(root):
        try:
            check.result()
        except ManifestError as exc:
            warn_corrupt(ckpt, exc)
            continue
        yield ckpt


def clean_temp_dirs(root: str | Path) -> int:
    """Remove leftovers of checkpoints whose writer died mid-save."""
    root = Path(root)
    n = 0
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".tmp-checkpoint-"):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def free_bytes(path: str | Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _fsync_dirs(folder: Path) -> None:
    for dirpath, _dirs, _files in os.walk(folder):
        fsync_dir(dirpath)


class _Sealer:
    """Hash + fsync finished files of a checkpoint being written, on one background thread."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="seal")
        self._futures: dict[str, Future] = {}

    def seal(self, *paths: str | Path) -> None:
        """Mark files (default: every file written so far) complete: no more writes may follow."""
        targets = [Path(p) for p in paths] or [p for p in sorted(self.folder.rglob("*")) if p.is_file()]
        for p in targets:
            rel = p.relative_to(self.folder).as_posix()
            if rel != MANIFEST_NAME and rel not in self._futures:
                self._futures[rel] = self._pool.submit(self._finish, p)

    @staticmethod
    def _finish(p: Path) -> dict:
        entry = file_entry(p)
        fsync_file(p)
        return entry

    def entries(self) -> dict:
        return {rel: f.result() for rel, f in self._futures.items()}

    def close(self) -> None:
        for f in self._futures.values():
            f.cancel()
        self._pool.shutdown(wait=True)


class Publication:
    """A checkpoint whose files are written into its temp dir; `finish()` (on any thread) waits for the
    sealer's hashes and fsyncs, writes the manifest and renames the folder into place. Until then nothing
    is published: a crash leaves only a temp dir, removed at the next start."""

    def __init__(self, root: Path, step: int, tmp: Path | None, sealer: "_Sealer | None"):
        self.root, self.step, self.tmp, self.sealer = root, step, tmp, sealer
        self.final = root / f"checkpoint-{step}"

    def finish(self) -> CheckpointInfo:
        if self.tmp is None:  # already published earlier
            return CheckpointInfo(self.final, self.step)
        try:
            write_manifest(self.tmp, known=self.sealer.entries(), global_step=self.step)  # files fsynced by the sealer
            _fsync_dirs(self.tmp)
            if self.final.exists():  # an unmanifested leftover: never complete, safe to replace
                shutil.rmtree(self.final)
            os.rename(self.tmp, self.final)
            fsync_dir(self.root)
        except BaseException as exc:
            self.abort(exc)
        finally:
            self.sealer.close()
        return CheckpointInfo(self.final, self.step)

    def abort(self, exc: BaseException):
        """Remove the temp dir and re-raise `exc` (ENOSPC as DiskFullError)."""
        if self.sealer is not None:
            self.sealer.close()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC and not isinstance(exc, DiskFullError):
            raise DiskFullError(errno.ENOSPC, f"disk full while writing checkpoint-{self.step}: {exc}") from exc
        raise exc


def begin_checkpoint(root: str | Path, step: int, write_fn, min_free_bytes: int = 0,
                     expected_bytes: int = 0) -> Publication:
    """Write a checkpoint's files via `write_fn(tmp_dir)` or `write_fn(tmp_dir, seal)` into a temp dir; the
    returned Publication's `finish()` makes it durable and visible. `seal(*paths)` (no paths: everything written
    so far) tells that files are complete, so their hashing and fsync start while the writer goes on.

    Raises DiskFullError before writing anything when free space is below
    `min_free_bytes + expected_bytes`, and after cleaning up on ENOSPC.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    if (final / MANIFEST_NAME).is_file():
        logger.info("checkpoint-%d already published", step)
        return Publication(root, step, None, None)
    available = free_bytes(root)
    if available < min_free_bytes + expected_bytes:
        raise DiskFullError(errno.ENOSPC, f"{available / 1e9:.2f} GB free at {root}, need "
                            f"{(min_free_bytes + expected_bytes) / 1e9:.2f} GB for checkpoint-{step}")
    tmp = root / f".tmp-checkpoint-{step}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    publication = Publication(root, step, tmp, _Sealer(tmp))
    try:
        tmp.mkdir()
        if len(inspect.signature(write_fn).parameters) >= 2:
            write_fn(tmp, publication.sealer.seal)
        else:
            write_fn(tmp)
        publication.sealer.seal()
    except BaseException as exc:
        publication.abort(exc)
    return publication


def publish_checkpoint(root: str | Path, step: int, write_fn, min_free_bytes: int = 0,
                       expected_bytes: int = 0) -> CheckpointInfo:
    """Write, manifest, fsync and rename a checkpoint into place before returning (see begin_checkpoint)."""
    return begin_checkpoint(root, step, write_fn, min_free_bytes, expected_bytes).finish()


def protected_names(root: str | Path) -> set[str]:
    """Checkpoint names other parts pinned (deployed, champion, best) in `<root>/protected.json`
    (core/state/lifecycle.py); StateError when that file is torn or invalid."""
    protected = read_protected(root)
    return protected.names() if protected else set()


def prune_checkpoints(root: str | Path, keep: int, protected: set[str] | None = None) -> list[Path]:
    """Keep the newest `keep` checkpoints and every protected one; never the newest complete one."""
    ckpts = list_checkpoints(root)
    try:
        protected = (protected or set()) | protected_names(root)
    except StateError as exc:  # what must be kept is unknown: delete nothing until retention rewrites the file
        logger.error("rolling retention skipped: %s", exc)
        return []
    doomed = [c for c in ckpts[:-max(1, keep)] if c.path.name not in protected]
    for c in doomed:
        trash = c.path.with_name(f".tmp-checkpoint-delete-{c.step}")
        os.rename(c.path, trash)  # unpublish first: a crash mid-delete never leaves a half checkpoint listed
        shutil.rmtree(trash, ignore_errors=True)
        logger.info("retention: removed %s", c.path.name)
    return [c.path for c in doomed]


