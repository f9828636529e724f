"""How a training child ended: its exit code (ExitCode, the one table of them) and `status/child_result.json`.

The child (trainer/child.py) exits with an ExitCode and writes the details beside it: the category, a message, a
traceback, and what it trained (TrainedFile). Rank r of a distributed group writes `child_result.rank<r>.json`.
The daemon (core/daemon.py, through core/launch.py) reads the result of the rank whose exit is the group's, and
the crash detector (safety/crash_detector.py) classifies by the code and the category.
"""
from __future__ import annotations

import enum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator

from core.state.base import StateFile, StateRecord, read_record, write_record


class ExitCode(enum.IntEnum):
    """The training child's exit codes; the lower-case name is the category written in the result file."""

    COMPLETED = 0
    UNKNOWN = 1  # an exception the child could not classify (traceback in the result)
    INTERRUPTED = 3  # stopped at a step boundary (pause releasing the model, stop, skip, SIGTERM): progress saved
    DATA_ERROR = 10
    NAN_LOSS = 11
    DISK_FULL = 12
    CONFIG_ERROR = 13
    OOM = 14
    REJECTED = 15  # the file failed STANDARD validation before training (moved to queue/rejected/)

    @property
    def category(self) -> str:
        return self.name.lower()


CLEAN_EXITS = (ExitCode.COMPLETED, ExitCode.INTERRUPTED)  # a rank that exits so waits for its peers


def exit_kind(code: int) -> str:
    """The category of a child's process exit code: an ExitCode's, "signal" for a death by signal (negative),
    "unknown" for any other code (e.g. os._exit(99))."""
    if code < 0:
        return "signal"
    try:
        return ExitCode(code).category
    except ValueError:
        return "unknown"


class TrainedFile(BaseModel):
    """What the engine did with the file (trainer.engine.FileResult, as the child reports it)."""

    model_config = ConfigDict(extra="forbid")

    file_id: str
    status: str  # completed | interrupted | already_done
    global_step_start: int  # the global step before the file's first step
    global_step_end: int
    steps: int  # steps of this file done so far
    total_steps: int
    examples: int = 0
    tokens: int = 0
    truncated: int = 0
    dropped: list[str] = []
    final_loss: float | None = None
    val_loss: float | None = None
    reason: str | None = None


class ChildResult(StateRecord):
    """The details of one training child's exit."""

    pid: int
    exit_code: ExitCode
    category: str  # exit_code's category, kept in the file for people and older readers
    message: str
    traceback: str | None = None
    result: TrainedFile | None = None  # set when the engine finished or stopped the file
    finished_at: float

    @model_validator(mode="after")
    def _category_matches(self) -> "ChildResult":
        if self.category != self.exit_code.category:
            raise ValueError(f"category {self.category!r} does not match exit_code {int(self.exit_code)} "
                             f"({self.exit_code.category})")
        return self


def child_result_path(layout, rank: int = 0) -> Path:
    return layout.status / ("child_result.json" if rank == 0 else f"child_result.rank{rank}.json")


def write_child_result(layout, result: ChildResult, rank: int = 0) -> None:
    write_record(child_result_path(layout, rank), result)


def read_child_result(layout, rank: int = 0) -> ChildResult | None:
    return read_record(ChildResult, child_result_path(layout, rank))


def clear_child_result(layout, rank: int = 0) -> None:
    """Before a child starts: a result left by an earlier child must never be taken for its own."""
    child_result_path(layout, rank).unlink(missing_ok=True)


FILES = [
    StateFile(pattern="status/child_result.json", model=ChildResult, writers=("trainer.child",),
              readers=("core.launch", "core.daemon"),
              description="How the last training child ended (rank 0 of a group): exit code, category, message."),
    StateFile(pattern="status/child_result.rank*.json", model=ChildResult, writers=("trainer.child",),
              readers=("core.launch", "core.daemon"),
              description="How rank r > 0 of the last distributed training child ended."),
]
