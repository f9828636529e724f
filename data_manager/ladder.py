"""The held-out ladder: fixed eval items per skill and level, written once, never rewritten.

One rung per (skill, level): `status/evals/<skill>/level_<n>.jsonl` (Skill API
samples, generated with a seed no training batch uses). The first time a rung
is needed it is generated, written atomically and its sha256 recorded in
`status/evals/ladder.json`; from then on the file is only read, and a file
whose bytes no longer match the recorded digest is refused (LadderError), never
regenerated: scores of two checkpoints are comparable only when they were taken
on the same items. The ladder grows as skills reach new levels; lower rungs stay
as they were, so a checkpoint can be tested for forgetting on exactly the items
its predecessors were tested on.

`items(rung, k)` is the deterministic sample the comparison engine scores (the
first k items of the fixed file) and `set_digest(rung, k)` names that sample's
version: two results with the same set digest are results on the same items.

ladder.json: core/state/curriculum.py's LadderIndex ({"rungs": {"<skill>/<level>": RungRecord}}), read and written there.

Run as: imported by data_manager.manager (no entry point).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from core.atomic_io import atomic_write_text
from core.state.base import StateError, parse_record
from core.state.curriculum import LADDER_INDEX_NAME, LadderIndex, read_ladder_index, write_ladder_index

logger = logging.getLogger(__name__)



class LadderError(RuntimeError):
    """A rung that cannot be used as it is (changed since written, unreadable, or of another skill/level)."""


@dataclass(frozen=True)
class Rung:
    skill: str
    level: int
    path: Path
    sha256: str
    samples: tuple  # the fixed items, in file order

    def items(self, k: int) -> list[dict[str, Any]]:
        return list(self.samples[:k])

    def set_digest(self, k: int) -> str:
        return hashlib.sha256(f"{self.sha256}:{min(k, len(self.samples))}".encode()).hexdigest()[:16]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Ladder:
    """The rungs under `root` (status/evals/)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.index_path = self.root / LADDER_INDEX_NAME

    def path(self, skill: str, level: int) -> Path:
        return self.root / skill / f"level_{level}.jsonl"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f".{LADDER_INDEX_NAME}.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def index(self) -> dict[str, Any]:
        """The index as a dict, checked against LadderIndex (core/state/curriculum.py). A torn or invalid index is
        rebuilt: the rung files present are adopted as they are (logged)."""
        try:
            record = read_ladder_index(self.index_path)
        except StateError as exc:
            logger.warning("%s: the rungs on disk are adopted again", exc)
            record = None
        index = record.to_json() if record else {"format": 1, "rungs": {}}
        index.setdefault("rungs", {})
        return index

    def recorded(self, skill: str, level: int) -> dict | None:
        return self.index()["rungs"].get(f"{skill}/{level}")

    def rung(self, skill: str, level: int, make: Callable[[], list[dict[str, Any]]] | None = None, seed: int | None = None) -> Rung:
        """The rung, read and checked against its recorded digest; made with `make()` (then recorded) when absent."""
        path = self.path(skill, level)
        with self._locked():
            index = self.index()
            key = f"{skill}/{level}"
            known = index["rungs"].get(key)
            if path.is_file():
                data = path.read_bytes()
                digest = hashlib.sha256(data).hexdigest()
                if known and known.get("sha256") != digest:
                    raise LadderError(f"{path}: contents changed since the rung was written (sha256 {digest[:12]} != "
                                      f"recorded {str(known.get('sha256'))[:12]}); the ladder is never rewritten: "
                                      f"restore the file or delete it together with its entry in {self.index_path}")
                samples = self._parse(path, data, skill, level)
                if not known:  # a held-out set written before the ladder had an index: adopted as it is
                    self._record(index, key, skill, level, path, digest, len(samples), seed)
                return Rung(skill, level, path, digest, tuple(samples))
            if known:
                raise LadderError(f"{path}: the rung recorded in {self.index_path} is missing; refusing to make "
                                  f"different items under the same name")
            if make is None:
                raise LadderError(f"{path}: no such rung")
            samples = make()
            wrong = [s for s in samples if (s.get("metadata") or {}).get("level") != level
                     or (s.get("metadata") or {}).get("skill") != skill]
            if wrong or not samples:
                raise LadderError(f"{skill}: the items made for level {level} include {len(wrong)} of another "
                                  f"skill/level (or none at all); refusing to write the rung")
            text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
            atomic_write_text(path, text)
            digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
            self._record(index, key, skill, level, path, digest, len(samples), seed)
            logger.info("ladder: wrote %s (%d items, sha256 %s)", path, len(samples), digest[:12])
            return Rung(skill, level, path, digest, tuple(samples))

    def _record(self, index: dict, key: str, skill: str, level: int, path: Path, digest: str, n: int, seed: int | None) -> None:
        index["rungs"][key] = {"skill": skill, "level": level, "file": str(path.relative_to(self.root)), "sha256": digest,
                               "items": n, "seed": seed, "written_at": _now()}
        write_ladder_index(self.index_path, parse_record(LadderIndex, index, str(self.index_path)))

    @staticmethod
    def _parse(path: Path, data: bytes, skill: str, level: int) -> list[dict[str, Any]]:
        try:
            samples = [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()]
        except ValueError as exc:
            raise LadderError(f"{path}: not JSONL ({exc})") from exc
        for i, s in enumerate(samples, 1):
            meta = s.get("metadata") if isinstance(s, dict) else None
            if not isinstance(meta, dict) or meta.get("level") != level or meta.get("skill") != skill:
                raise LadderError(f"{path}:{i}: item is not {skill} level {level}; the rung is not used")
        if not samples:
            raise LadderError(f"{path}: empty rung")
        return samples
