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

from pydantic import Field

from core.state.base import RecordPart, SparseRecord, StateFile, read_record, write_record


class SetResult(RecordPart):
    """One item set scored on one model (management/scoring.py): per-item losses and exact matches."""

    kind: str = Field(description="ladder | trained | validation | eval | anchor")
    skill: str | None = Field(None, description="ladder sets: the skill.")
    level: int | None = Field(None, description="ladder sets: the level.")
    digest: str | None = Field(None, description="the set's version: results with the same id and digest were taken on the same items")
    n: int | None = Field(None, description="Items in the set.")
    loss: list[float | None] | None = Field(None, description="per item (None: not scorable)")
    mean_loss: float | None = Field(None, description="Mean of the per-item losses.")
    token_loss: float | None = Field(None, description="Token-weighted loss over the set.")
    nonfinite: int | None = Field(None, description="items whose loss was NaN/Inf (such a model never wins)")
    exact: str | None = Field(None, description="\"0110…\": exact match per item, where there is an expected answer")
    accuracy: float | None = Field(None, description="Share of exact matches (sets with expected answers).")
    scorer: str | None = Field(None, description="The scorer that judged the answers.")
    example: dict[str, str] | None = Field(None, description="{\"expected\", \"answer\"} of the first item")


class SkillAccuracy(RecordPart):
    """A skill's accuracy on its current ladder rung (what the curriculum is fed)."""

    level: int = Field(description="The rung's level (the skill's current level when scored).")
    accuracy: float = Field(description="Share of the rung's items answered right.")
    correct: int | None = Field(None, description="Items answered right.")
    total: int | None = Field(None, description="Items scored.")
    scorer: str | None = Field(None, description="The scorer that judged the answers.")
    example: dict[str, str] | None = Field(None, description="{\"expected\", \"answer\"} of the first item.")


class RuleVerdict(RecordPart):
    accepted: bool = Field(description="Would the rule promote the candidate.")
    reason: str = Field(description="Why (the rule's own sentence).")


class Verdict(RecordPart):
    """A candidate judged against the deployed version under both rules (once per baseline and set list)."""

    key: list = Field(description="[baseline content id, sorted set ids of the baseline]: judged again only when it changes")
    baseline: str | None = Field(None, description="Content id of the deployed version judged against.")
    baseline_checkpoint: str | None = Field(None, description="Its checkpoint.")
    at: str = Field(description="When (ISO time).")
    paired: RuleVerdict = Field(description="The paired rule's verdict.")
    margin: RuleVerdict = Field(description="The margin rule's verdict.")


class TrainingSummary(RecordPart):
    files_done: int | None = Field(None, description="Files trained up to this checkpoint.")
    final_loss: float | None = Field(None, description="Training loss at the end of the last file.")
    val_loss: float | None = Field(None, description="Validation loss of the last file.")


class ScoreStatus(StrEnum):
    scored = "scored"
    failed = "failed"


class LedgerEntry(RecordPart):
    """One checkpoint's scores (`status` failed: `error` says why; such an entry is listed, never ranked)."""

    checkpoint: str = Field(description="The checkpoint's folder name.")
    step: int = Field(description="Its global step.")
    content_id: str | None = Field(None, description="Hash of its model files (None when its manifest has no model).")
    status: ScoreStatus = Field(description="scored, or failed (then `error` says why).")
    error: str | None = Field(None, description="Why scoring failed.")
    scored_at: str | None = Field(None, description="When (ISO time).")
    score_seconds: float | None = Field(None, description="How long scoring took.")
    timings: dict[str, float] | None = Field(None, description="Seconds per scoring phase (load_s, loss_s, sets_s).")
    metrics: dict[str, int | float | None] | None = Field(None, description="val_loss, val_rows, anchor_loss, accuracy_mean, accuracy:<skill>, ...")
    accuracy: dict[str, SkillAccuracy] | None = Field(None, description="Per skill: accuracy on its current ladder rung.")
    sets: dict[str, SetResult] | None = Field(None, description="Per item set id: the per-item results.")
    baseline_scored: dict[str, str] | None = Field(None, description="set id -> when it was scored later, as the deployed version")
    verdicts: list[Verdict] | None = Field(None, description="Judgements against the deployed version under both rules (newest last).")
    training: TrainingSummary | None = Field(None, description="What the checkpoint's trainer state says about its training.")
    curriculum: dict[str, str] | None = Field(None, description="skill -> what the curriculum decided on this eval")

    def metric(self, name: str) -> float | None:
        value = (self.metrics or {}).get(name)
        return float(value) if isinstance(value, (int, float)) else None


class Champion(RecordPart):
    checkpoint: str = Field(description="The champion checkpoint.")
    content_id: str | None = Field(None, description="Its content id.")
    step: int | None = Field(None, description="Its global step.")
    decided_at: str | None = Field(None, description="When (ISO time).")
    reason: str | None = Field(None, description="The rule's sentence.")
    rule: str | None = Field(None, description="paired or margin.")
    baseline: str | None = Field(None, description="the deployed content id it was judged against")


class Ledger(SparseRecord):
    format: int = Field(1, description="The format number the file had before schema_version.")
    primary_metric: str | None = Field(None, description="comparison.primary_metric when last written.")
    rule: str | None = Field(None, description="paired | margin")
    updated_at: str | None = Field(None, description="When the ledger was last written (ISO time).")
    checkpoints: dict[str, LedgerEntry] = Field({}, description="Per checkpoint name: its scores.")
    ranking: list[str] = Field([], description="scored checkpoint names, best first")
    champion: Champion | None = Field(None, description="The last champion decided (None: none yet).")


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
