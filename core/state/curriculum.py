"""Curriculum records: each skill's level and eval history (`status/curriculum.json`), the held-out ladder's index
(`status/evals/ladder.json`, write-once rungs with their sha256) and the data manager's own state
(`status/data_manager.json`: rotation, cooldown, last batch, last error).

Writers: data_manager/curriculum_manager.py (Curriculum, under its flock), data_manager/ladder.py (Ladder, under
its flock: a rung's digest is recorded once and never rewritten) and data_manager/manager.py (DataManager). The
comparison engine feeds the curriculum through those classes; the monitor and scripts/follow.py read here.

The functions take the file's path (the classes are built on a path; `cfg.layout.curriculum`,
`cfg.layout.ladder_index` and `cfg.layout.data_manager_state` are where a Cadence base_dir keeps them).
"""
from __future__ import annotations

import os

from pydantic import ConfigDict, Field

from core.state.base import RecordPart, SparseRecord, StateFile, read_record, write_record


# ------------------------------------------------------------------ curriculum.json
class CurriculumEval(RecordPart):
    """One recorded eval, tagged with the level actually tested (only evals of the current level count)."""

    seq: int
    level: int
    accuracy: float
    step: int | None = None
    checkpoint: str | None = None
    n: int | None = None
    at: str


class LevelChange(RecordPart):
    """A promotion by the rule (with the mean and the evals that decided it) or an operator override (`reason`)."""

    from_level: int = Field(alias="from")
    to: int
    at: str
    step: int | None = None
    mean: float | None = None
    evals: list[int] | None = None
    reason: str | None = None


class RungAccuracy(RecordPart):
    """The newest accuracy on a lower ladder rung (rehearsal: a level below the bar is forgotten)."""

    accuracy: float
    step: int | None = None
    checkpoint: str | None = None
    at: str | None = None


class SkillProgress(RecordPart):
    level: int = 1  # the level trained and evaluated (mastered + 1)
    entered_seq: int = 0  # evals with a higher seq count toward this level
    entered_at: str | None = None
    history: list[CurriculumEval] = []  # the last 100
    promotions: list[LevelChange] = []
    ladder: dict[str, RungAccuracy] | None = None  # str(level) -> newest accuracy on that rung


class CurriculumState(SparseRecord):
    version: int = 1  # the format number the file had before schema_version
    seq: int = 0
    skills: dict[str, SkillProgress] = {}
    threshold: float | None = None
    window: int | None = None
    updated_at: str | None = None


def read_curriculum(path: str | os.PathLike) -> CurriculumState | None:
    return read_record(CurriculumState, path)


def write_curriculum(path: str | os.PathLike, state: CurriculumState) -> None:
    write_record(path, state)


# ------------------------------------------------------------------ status/evals/ladder.json
class RungRecord(RecordPart):
    """A rung as first written: its file's sha256 is fixed from then on (a changed file is refused, never remade)."""

    skill: str
    level: int
    file: str  # relative to status/evals/
    sha256: str
    items: int
    seed: int | None = None
    written_at: str


class LadderIndex(SparseRecord):
    format: int = 1
    rungs: dict[str, RungRecord] = {}  # "<skill>/<level>" -> rung


def read_ladder_index(path: str | os.PathLike) -> LadderIndex | None:
    return read_record(LadderIndex, path)


def write_ladder_index(path: str | os.PathLike, index: LadderIndex) -> None:
    write_record(path, index)


class RungItemMeta(RecordPart):
    """A Skill API sample's metadata: skill and level (the ladder checks both), plus whatever the skill adds
    (seed, index, op, bits, ...: SKILL_API.md leaves those to the skill)."""

    model_config = ConfigDict(extra="allow")

    skill: str
    level: int


class RungItem(SparseRecord):
    """One line of a rung file `status/evals/<skill>/level_<n>.jsonl`: a Skill API sample. Its bytes are fixed by the
    sha256 in ladder.json, so the lines carry no schema_version (they are the Skill API's format, written once by
    data_manager/ladder.py and read back only there)."""

    user_prompt: str
    assistant_response: str
    metadata: RungItemMeta

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude={"schema_version"})


# ------------------------------------------------------------------ status/data_manager.json
class BatchSizing(RecordPart):
    examples_per_second: float
    file_seconds: float
    count: int


class LastBatch(RecordPart):
    skill: str
    level: int
    seed: int
    count: int
    replayed: dict[str, int] = {}  # other skill -> samples mixed in at its current level
    rehearsed: dict[str, int] = {}  # "skill:level" -> samples of a lower level mixed in
    sized: BatchSizing | None = None  # None: batch_size (nothing measured yet, or sizing off)
    file: str
    at: str


class LastError(RecordPart):
    message: str
    at: str


class DataManagerState(SparseRecord):
    rotation_index: int = 0
    last_attempt_at: float | None = None  # cooldown is measured from here
    last_generation_at: float | None = None
    batches_generated: int = 0
    last_batch: LastBatch | None = None
    last_error: LastError | None = None
    updated_at: str | None = None


def read_data_manager_state(path: str | os.PathLike) -> DataManagerState | None:
    return read_record(DataManagerState, path)


def write_data_manager_state(path: str | os.PathLike, state: DataManagerState) -> None:
    write_record(path, state)


FILES = [
    StateFile(pattern="status/curriculum.json", model=CurriculumState,
              writers=("data_manager.curriculum_manager",),
              readers=("data_manager.curriculum_manager", "monitoring.sources", "scripts.follow",
                       "benchmarks.curriculum"),
              description="Each skill's training level, its last 100 evals, promotions and lower-rung accuracies."),
    StateFile(pattern="status/evals/ladder.json", model=LadderIndex,
              writers=("data_manager.ladder",), readers=("data_manager.ladder",),
              description="The held-out ladder's rungs with the sha256 each file was written with (write-once)."),
    StateFile(pattern="status/evals/*/level_*.jsonl", model=RungItem, kind="jsonl",
              writers=("data_manager.ladder",), readers=("data_manager.ladder",),
              description="A held-out ladder rung: fixed Skill API items of one skill and level, never rewritten."),
    StateFile(pattern="status/data_manager.json", model=DataManagerState,
              writers=("data_manager.manager",), readers=("data_manager.manager",),
              description="The data manager's rotation, cooldown clock, last batch and last error."),
]
