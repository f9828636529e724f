"""The ranking ledger `status/comparisons.json`: every scored checkpoint, the ranking and the champion.

management/model_comparison_engine.py is the only writer (it scores each checkpoint once, keyed by checkpoint name
and content id, so a restart never re-scores); retention, the monitor and the benchmarks read it here. One shape:
`{"checkpoints": {name: entry}, "ranking": [names], "champion": ...}`; older files (before `schema_version`, or
before the paired rule added `rule`, `sets`, `baseline_scored` and `verdicts`) read as they are.

    read_ledger(layout) -> Ledger | None
    write_ledger(layout, ledger)
"""
from __future__ import annotations

from enum import StrEnum

from core.state.base import RecordPart, SparseRecord, StateFile, read_record, write_record


class SetResult(RecordPart):
    """One item set scored on one model (management/scoring.py): per-item losses and exact matches."""

    kind: str  # ladder | trained | validation | eval | anchor
    skill: str | None = None
    level: int | None = None
    digest: str | None = None  # the set's version: results with the same id and digest were taken on the same items
    n: int | None = None
    loss: list[float | None] | None = None  # per item (None: not scorable)
    mean_loss: float | None = None
    token_loss: float | None = None
    nonfinite: int | None = None  # items whose loss was NaN/Inf (such a model never wins)
    exact: str | None = None  # "0110…": exact match per item, where there is an expected answer
    accuracy: float | None = None
    scorer: str | None = None
    example: dict[str, str] | None = None  # {"expected", "answer"} of the first item


class SkillAccuracy(RecordPart):
    """A skill's accuracy on its current ladder rung (what the curriculum is fed)."""

    level: int
    accuracy: float
    correct: int | None = None
    total: int | None = None
    scorer: str | None = None
    example: dict[str, str] | None = None


class RuleVerdict(RecordPart):
    accepted: bool
    reason: str


class Verdict(RecordPart):
    """A candidate judged against the deployed version under both rules (once per baseline and set list)."""

    key: list  # [baseline content id, sorted set ids of the baseline]: judged again only when it changes
    baseline: str | None = None
    baseline_checkpoint: str | None = None
    at: str
    paired: RuleVerdict
    margin: RuleVerdict


class TrainingSummary(RecordPart):
    files_done: int | None = None
    final_loss: float | None = None
    val_loss: float | None = None


class ScoreStatus(StrEnum):
    scored = "scored"
    failed = "failed"


class LedgerEntry(RecordPart):
    """One checkpoint's scores (`status` failed: `error` says why; such an entry is listed, never ranked)."""

    checkpoint: str
    step: int
    content_id: str | None = None
    status: ScoreStatus
    error: str | None = None
    scored_at: str | None = None
    score_seconds: float | None = None
    timings: dict[str, float] | None = None
    metrics: dict[str, int | float | None] | None = None  # val_loss, val_rows, anchor_loss, accuracy_mean, accuracy:<skill>, ...
    accuracy: dict[str, SkillAccuracy] | None = None
    sets: dict[str, SetResult] | None = None
    baseline_scored: dict[str, str] | None = None  # set id -> when it was scored later, as the deployed version
    verdicts: list[Verdict] | None = None
    training: TrainingSummary | None = None
    curriculum: dict[str, str] | None = None  # skill -> what the curriculum decided on this eval

    def metric(self, name: str) -> float | None:
        value = (self.metrics or {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None


class Champion(RecordPart):
    checkpoint: str
    content_id: str | None = None
    step: int | None = None
    decided_at: str | None = None
    reason: str | None = None
    rule: str | None = None
    baseline: str | None = None  # the deployed content id it was judged against


class Ledger(SparseRecord):
    format: int = 1
    primary_metric: str | None = None
    rule: str | None = None  # paired | margin
    updated_at: str | None = None
    checkpoints: dict[str, LedgerEntry] = {}
    ranking: list[str] = []  # scored checkpoint names, best first
    champion: Champion | None = None


def read_ledger(layout) -> Ledger | None:
    """The ledger, None when nothing was scored yet; StateError when the file is torn or invalid."""
    return read_record(Ledger, layout.comparisons)


def write_ledger(layout, ledger: Ledger) -> None:
    write_record(layout.comparisons, ledger)


FILES = [
    StateFile(pattern="status/comparisons.json", model=Ledger,
              writers=("management.model_comparison_engine",),
              readers=("management.model_comparison_engine", "management.retention", "monitoring.sources",
                       "benchmarks.curriculum"),
              description="The ranking ledger: per checkpoint its scores (metrics, per-set results, verdicts), "
                          "the ranking and the champion."),
]
