"""The champion rule: rank scored checkpoints and decide whether a candidate beats the deployed version.

Pure decisions over ledger entries (dicts as management/model_comparison_engine.py keeps them; the model is
core/state/ledger.py's LedgerEntry): `rank` orders by the primary metric, `champion_decision` applies
comparison.rule ("paired": management/paired_test.py's per-item tests on every set both were scored on;
"margin": the primary metric improves by comparison.margin and the anchor loss stays within
comparison.guard_tolerance), `candidates` / `pick_champion` choose among the checkpoints newer than the deployed
one. The rules themselves are described in management/model_comparison_engine.py's docstring.

Run as: imported by management.model_comparison_engine (no entry point).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

LOWER_IS_BETTER = ("val_loss", "anchor_loss", "seconds_per_token")


def entry_for_content(ledger: dict, cid: str | None) -> dict | None:
    if not cid:
        return None
    return next((e for e in ledger["checkpoints"].values() if e.get("content_id") == cid and e.get("status") == "scored"), None)


def metric_value(entry: dict, metric: str) -> float | None:
    value = (entry.get("metrics") or {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None  # NaN/Inf loss is no score at all: such a checkpoint can never win
    return float(value)


def lower_is_better(metric: str) -> bool:
    return metric in LOWER_IS_BETTER or metric.endswith("_loss")


def rank(entries, metric: str) -> list[dict]:
    """Scored entries, best first by `metric` (ties: the newer step first); entries without the metric last."""
    scored = [e for e in entries if e.get("status") == "scored"]
    sign = 1.0 if lower_is_better(metric) else -1.0

    def key(e):
        v = metric_value(e, metric)
        return (v is None, sign * v if v is not None else 0.0, -int(e.get("step") or 0))

    return sorted(scored, key=key)


@dataclass
class Decision:
    accepted: bool
    reason: str
    primary: float | None = None
    baseline_primary: float | None = None
    improvement: float | None = None
    anchor_regression: float | None = None
    rule: str = "margin"
    tests: list | None = None  # the paired rule's per-set tests

    def to_dict(self) -> dict:
        return asdict(self)


def improvement(candidate: float, baseline: float, metric: str) -> float:
    """Relative improvement for losses ((b - c) / b), absolute points for accuracies (c - b)."""
    if lower_is_better(metric):
        return (baseline - candidate) / abs(baseline) if baseline else baseline - candidate
    return candidate - baseline


def mastery_floor(cfg) -> float | None:
    """The bar a passed level the deployed version holds must stay at under the paired rule (None: not guarded)."""
    return cfg.data_manager.threshold if cfg.comparison.keep_mastered else None


def champion_decision(candidate: dict, baseline: dict | None, cc, rule: str | None = None,
                      floor: float | None = None) -> Decision:
    """Does `candidate` beat the deployed `baseline` (both ledger entries) under comparison.rule (or `rule`)?
    `floor`: the paired rule's mastery guard (`mastery_floor`)."""
    if (rule or cc.rule) == "paired":
        return paired_champion_decision(candidate, baseline, cc, floor)
    return margin_decision(candidate, baseline, cc)


def paired_champion_decision(candidate: dict, baseline: dict | None, cc, floor: float | None = None) -> Decision:
    from management.paired_test import paired_decision

    if candidate.get("status") != "scored" or not candidate.get("sets"):
        return Decision(False, f"no item-set results for {candidate.get('checkpoint')}", rule="paired")
    broken = [sid for sid, r in candidate["sets"].items() if r.get("nonfinite")]
    if broken:  # a NaN/Inf loss is no score at all: such a checkpoint can never win
        return Decision(False, f"non-finite loss on {', '.join(broken)}", rule="paired")
    if baseline is None:
        return Decision(True, "no deployed baseline", rule="paired")
    d = paired_decision(candidate["sets"], baseline.get("sets") or {}, cc, floor)
    tests = [{k: (round(v, 6) if isinstance(v, float) else v) for k, v in t.__dict__.items()} for t in d.tests]
    return Decision(d.accepted, d.reason, rule="paired", tests=tests)


def margin_decision(candidate: dict, baseline: dict | None, cc) -> Decision:
    """The old rule: the primary metric improves by the margin and the anchor loss stays within its tolerance."""
    metric = cc.primary_metric
    value = metric_value(candidate, metric)
    if candidate.get("status") != "scored" or value is None:
        return Decision(False, f"no {metric} for {candidate.get('checkpoint')}")
    if baseline is None:
        return Decision(True, f"no deployed baseline; {metric} {value:.4g}", primary=value)
    base = metric_value(baseline, metric)
    if base is None:
        return Decision(True, f"deployed version has no {metric}; {metric} {value:.4g}", primary=value)
    gain = improvement(value, base, metric)
    decision = Decision(False, "", value, base, gain)
    if gain < cc.margin:
        decision.reason = f"{metric} {value:.4g} vs deployed {base:.4g}: improvement {gain:+.4f} < margin {cc.margin}"
        return decision
    cand_anchor, base_anchor = metric_value(candidate, "anchor_loss"), metric_value(baseline, "anchor_loss")
    if cand_anchor is not None and base_anchor is not None:
        regression = (cand_anchor - base_anchor) / abs(base_anchor) if base_anchor else cand_anchor - base_anchor
        decision.anchor_regression = regression
        if regression > cc.guard_tolerance:
            decision.reason = (f"{metric} improves {gain:+.4f} but anchor loss regresses {regression:+.2%} "
                               f"({base_anchor:.4g} -> {cand_anchor:.4g}) > tolerance {cc.guard_tolerance:.0%}: forgetting guard")
            return decision
    elif cc.anchor_file:
        decision.reason = "anchor set configured but anchor_loss missing: refusing without the forgetting guard"
        return decision
    decision.accepted = True
    decision.reason = f"{metric} {value:.4g} vs deployed {base:.4g}: improvement {gain:+.4f} >= margin {cc.margin}"
    return decision


def candidates(cfg, ledger: dict, baseline_content_id: str | None, exclude: set[str] = frozenset(),
               published: set[str] | None = None) -> list[dict]:
    """Scored checkpoints newer than the deployed one, not tried yet (and, given `published`, still on disk under
    those names: rolling retention removes checkpoints the scorer has judged), in the order the rule considers them."""
    baseline = entry_for_content(ledger, baseline_content_id)
    base_step = int(baseline.get("step") or 0) if baseline else -1
    if cfg.comparison.rule == "paired":
        ordered = sorted((e for e in ledger["checkpoints"].values() if e.get("status") == "scored"),
                         key=lambda e: -int(e.get("step") or 0))  # the newest that passes follows the learning
    else:
        ordered = rank(ledger["checkpoints"].values(), cfg.comparison.primary_metric)
    # never go back in training time automatically (that is an operator rollback)
    return [e for e in ordered if e.get("content_id") not in exclude and e.get("content_id") != baseline_content_id
            and int(e.get("step") or 0) > base_step and (published is None or e.get("checkpoint") in published)]


def pick_champion(cfg, ledger: dict, baseline_content_id: str | None, exclude: set[str] = frozenset(),
                  published: set[str] | None = None) -> tuple[dict | None, Decision | None]:
    """The first candidate (see `candidates`) that beats the deployed one (content ids in `exclude` were tried already;
    `published`: the checkpoint names on disk, when only those can be deployed)."""
    baseline = entry_for_content(ledger, baseline_content_id)
    last = None
    for entry in candidates(cfg, ledger, baseline_content_id, exclude, published):
        decision = champion_decision(entry, baseline, cfg.comparison, floor=mastery_floor(cfg))
        if decision.accepted:
            return entry, decision
        last = last or (entry, decision)
    return (None, last[1]) if last else (None, None)
