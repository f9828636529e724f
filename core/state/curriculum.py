"""Curriculum records: each skill's level and eval history (`status/curriculum.json`), the held-out ladder's index
(`status/evals/ladder.json`, write-once rungs with their sha256) and the data manager's own state
(`status/data_manager.json`: rotation, cooldown, last batch, last error).

Writers: data_manager/curriculum_manager.py (Curriculum, under its flock), data_manager/ladder.py (Ladder, under
its flock: a rung's digest is recorded once and never rewritten) and data_manager/manager.py (DataManager). The
comparison engine feeds the curriculum through those classes; the monitor and `cadence follow` (core/cli/follow.py) read here.

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

    seq: int = Field(description="Order of the eval among all evals of every skill.")
    level: int = Field(description="The level tested.")
    accuracy: float = Field(description="Share of the level's items answered right.")
    step: int | None = Field(None, description="The checkpoint's global step.")
    checkpoint: str | None = Field(None, description="The checkpoint evaluated.")
    n: int | None = Field(None, description="Items scored.")
    at: str = Field(description="When (ISO time).")


class LevelChange(RecordPart):
    """A promotion by the rule (with the mean and the evals that decided it) or an operator override (`reason`)."""

    from_level: int = Field(alias="from", description="The level before (key `from` on disk).")
    to: int = Field(description="The level after.")
    at: str = Field(description="When (ISO time).")
    step: int | None = Field(None, description="The global step of the eval that decided it.")
    mean: float | None = Field(None, description="Mean accuracy over the window that decided it.")
    evals: list[int] | None = Field(None, description="The seqs of those evals.")
    reason: str | None = Field(None, description="An operator override's reason.")


class RungAccuracy(RecordPart):
    """The newest accuracies on a lower ladder rung (rehearsal: a level whose recent mean is below the bar is forgotten)."""

    accuracy: float = Field(description="The newest accuracy on the rung.")
    step: int | None = Field(None, description="The checkpoint's global step.")
    checkpoint: str | None = Field(None, description="The checkpoint.")
    at: str | None = Field(None, description="When (ISO time).")
    recent: list[float] = Field([], description="The last data_manager.window accuracies on the rung, newest last: their mean decides forgetting and rehearsal (one reading of 24 items moves 4 points per item).")


class SkillProgress(RecordPart):
    level: int = Field(1, description="the level trained and evaluated (mastered + 1)")
    entered_seq: int = Field(0, description="evals with a higher seq count toward this level")
    entered_at: str | None = Field(None, description="When the skill reached its level (ISO time).")
    history: list[CurriculumEval] = Field([], description="the last 100")
    promotions: list[LevelChange] = Field([], description="Level changes: by the rule, or an operator override.")
    ladder: dict[str, RungAccuracy] | None = Field(None, description="str(level) -> newest accuracy on that rung")


class CurriculumState(SparseRecord):
    version: int = Field(1, description="the format number the file had before schema_version")
    seq: int = Field(0, description="The last eval's seq.")
    skills: dict[str, SkillProgress] = Field({}, description="Per skill: its level, history, promotions, lower-rung accuracies.")
    threshold: float | None = Field(None, description="data_manager.threshold when last written.")
    window: int | None = Field(None, description="data_manager.window when last written.")
    updated_at: str | None = Field(None, description="When the file was last written (ISO time).")


def read_curriculum(path: str | os.PathLike) -> CurriculumState | None:
    return read_record(CurriculumState, path)


def write_curriculum(path: str | os.PathLike, state: CurriculumState) -> None:
    write_record(path, state)


# ------------------------------------------------------------------ status/evals/ladder.json
class RungRecord(RecordPart):
    """A rung as first written: its file's sha256 is fixed from then on (a changed file is refused, never remade)."""

    skill: str = Field(description="The skill.")
    level: int = Field(description="The level.")
    file: str = Field(description="relative to status/evals/")
    sha256: str = Field(description="Digest of the rung file's bytes when written: a file that no longer matches is refused.")
    items: int = Field(description="Items in the rung.")
    seed: int | None = Field(None, description="The Skill API seed the items were generated with (never a training seed).")
    written_at: str = Field(description="When (ISO time).")


class LadderIndex(SparseRecord):
    format: int = Field(1, description="The format number the file had before schema_version.")
    rungs: dict[str, RungRecord] = Field({}, description="\"<skill>/<level>\" -> rung")


LADDER_INDEX_NAME = "ladder.json"  # inside a ladder's root folder (cfg.layout.evals in a base_dir)


def read_ladder_index(path: str | os.PathLike) -> LadderIndex | None:
    return read_record(LadderIndex, path)


def write_ladder_index(path: str | os.PathLike, index: LadderIndex) -> None:
    write_record(path, index)


class RungItemMeta(RecordPart):
    """A Skill API sample's metadata: skill and level (the ladder checks both), plus whatever the skill adds
    (seed, index, op, bits, ...: SKILL_API.md leaves those to the skill)."""

    model_config = ConfigDict(extra="allow")

    skill: str = Field(description="The skill (the ladder refuses an item of another one).")
    level: int = Field(description="The level (the ladder refuses an item of another one).")


class RungItem(SparseRecord):
    """One line of a rung file `status/evals/<skill>/level_<n>.jsonl`: a Skill API sample. Its bytes are fixed by the
    sha256 in ladder.json, so the lines carry no schema_version (they are the Skill API's format, written once by
    data_manager/ladder.py and read back only there)."""

    user_prompt: str = Field(description="The prompt.")
    assistant_response: str = Field(description="The expected answer.")
    metadata: RungItemMeta = Field(description="skill, level and the skill's own fields.")

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_unset=True, by_alias=True, exclude={"schema_version"})


# ------------------------------------------------------------------ status/data_manager.json
class BatchSizing(RecordPart):
    examples_per_second: float = Field(description="Training rate measured on the last completed generated files.")
    file_seconds: float = Field(description="data_manager.file_seconds.")
    count: int = Field(description="Samples of the batch's own skill.")


class LastBatch(RecordPart):
    skill: str = Field(description="The skill generated.")
    level: int = Field(description="At this level.")
    seed: int = Field(description="With this training seed.")
    count: int = Field(description="Samples in the file (with rehearsal and replay).")
    replayed: dict[str, int] = Field({}, description="other skill -> samples mixed in at its current level")
    carried: int = Field(0, ge=0, description="samples of the batch's own skill at the level just below (data_manager.carry_fraction)")
    rehearsed: dict[str, int] = Field({}, description="\"skill:level\" -> samples of a lower level mixed in")
    sized: BatchSizing | None = Field(None, description="None: batch_size (nothing measured yet, or sizing off)")
    file: str = Field(description="The file written to inbox/.")
    at: str = Field(description="When (ISO time).")


class LastError(RecordPart):
    message: str = Field(description="What failed (skill server, quality check).")
    at: str = Field(description="When (ISO time).")


class DataManagerState(SparseRecord):
    rotation_index: int = Field(0, description="Which skill is next in rotation (modulo the number of skills).")
    last_attempt_at: float | None = Field(None, description="cooldown is measured from here")
    last_generation_at: float | None = Field(None, description="When the last batch was written (epoch seconds).")
    batches_generated: int = Field(0, description="Batches written so far.")
    last_batch: LastBatch | None = Field(None, description="The last batch written.")
    last_error: LastError | None = Field(None, description="The last generation failure (None after a success).")
    updated_at: str | None = Field(None, description="When the file was last written (ISO time).")


def read_data_manager_state(path: str | os.PathLike) -> DataManagerState | None:
    return read_record(DataManagerState, path)


def write_data_manager_state(path: str | os.PathLike, state: DataManagerState) -> None:
    write_record(path, state)


FILES = [
    StateFile(pattern="status/curriculum.json", model=CurriculumState,
              writers=("data_manager.curriculum_manager",),
              readers=("data_manager.curriculum_manager", "monitoring.sources", "core.cli.follow",
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
