"""Comparison engine: score every new checkpoint once, rank them, and decide the champion.

Each published checkpoint (trainer/checkpoint.py layout) is measured once by
management/scoring.py: val_loss on the fixed validation set (supervised tokens
only; comparison.validation_file, else training.fixed_validation_file, else
`status/comparison_validation.jsonl` frozen once from the held-out eval
sets, so it exists without configuration and never moves), anchor_loss on the fixed anchor set (the forgetting guard), exact-match
accuracy by generation on each skill's held-out eval set at the skill's
current level (the data manager's sets and scorers; accuracy is fed back to
the curriculum) and on any extra JSONL eval set. Results go to the persistent
ledger `status/comparisons.json`, keyed by checkpoint name and content id: a
restart never re-scores.

Champion rule (`champion_decision`): a candidate beats the deployed version
when its primary metric improves by `comparison.margin` (relative for losses,
absolute points for accuracies) AND its anchor loss does not regress by more
than `comparison.guard_tolerance` (relative). Without a deployed baseline the
best-ranked checkpoint wins.

comparisons.json:
    {"format": 1, "primary_metric": "val_loss", "updated_at": ISO,
     "checkpoints": {"checkpoint-120": {"checkpoint", "step", "content_id", "status": "scored"|"failed",
                     "error", "scored_at", "score_seconds", "timings",
                     "metrics": {"val_loss", "val_rows", "anchor_loss", "accuracy_mean", "seconds_per_token",
                                 "accuracy:<skill>", ...},
                     "accuracy": {"<skill>": {"level", "accuracy", "correct", "total", "scorer", "example"}},
                     "training": {"files_done", "final_loss", "val_loss"}}},
     "ranking": [names, best first],
     "champion": {"checkpoint", "content_id", "step", "decided_at", "reason", "baseline"} | null}

Run as:
    python3 management/model_comparison_engine.py status [--json]
    python3 management/model_comparison_engine.py score [--checkpoint checkpoint-120] [--json]
    python3 management/model_comparison_engine.py champion [--json]
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.atomic_io import atomic_write_json, atomic_write_text, read_json
from core.manifest import MANIFEST_NAME, ManifestError, content_id
from trainer.checkpoint import CheckpointInfo, list_checkpoints

logger = logging.getLogger(__name__)

LOWER_IS_BETTER = ("val_loss", "anchor_loss", "seconds_per_token")
FROZEN_VALIDATION = "comparison_validation.jsonl"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------ ledger
def load_ledger(cfg) -> dict:
    data = read_json(cfg.layout.comparisons, None)
    if not isinstance(data, dict) or not isinstance(data.get("checkpoints"), dict):
        data = {"format": 1, "checkpoints": {}, "ranking": [], "champion": None}
    data["primary_metric"] = cfg.comparison.primary_metric
    return data


def save_ledger(cfg, ledger: dict) -> None:
    ledger["updated_at"] = _now()
    ledger["ranking"] = [e["checkpoint"] for e in rank(ledger["checkpoints"].values(), cfg.comparison.primary_metric)]
    atomic_write_json(cfg.layout.comparisons, ledger)


def checkpoint_content_id(path: Path) -> str | None:
    manifest = read_json(Path(path) / MANIFEST_NAME)
    if not (isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)):
        return None
    try:
        return content_id(manifest)
    except ManifestError:  # empty or partial: no id rather than one shared with every other such manifest
        return None


def entry_for_content(ledger: dict, cid: str | None) -> dict | None:
    if not cid:
        return None
    return next((e for e in ledger["checkpoints"].values() if e.get("content_id") == cid and e.get("status") == "scored"), None)


# ------------------------------------------------------------------ ranking and the champion rule
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

    def to_dict(self) -> dict:
        return asdict(self)


def improvement(candidate: float, baseline: float, metric: str) -> float:
    """Relative improvement for losses ((b - c) / b), absolute points for accuracies (c - b)."""
    if lower_is_better(metric):
        return (baseline - candidate) / abs(baseline) if baseline else baseline - candidate
    return candidate - baseline


def champion_decision(candidate: dict, baseline: dict | None, cc) -> Decision:
    """Does `candidate` beat the deployed `baseline` (both ledger entries) under the margin and the anchor guard?"""
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


def pick_champion(cfg, ledger: dict, baseline_content_id: str | None, exclude: set[str] = frozenset()) -> tuple[dict | None, Decision | None]:
    """The best-ranked scored checkpoint that beats the deployed one (content ids in `exclude` were tried already)."""
    baseline = entry_for_content(ledger, baseline_content_id)
    base_step = int(baseline.get("step") or 0) if baseline else -1
    last = None
    for entry in rank(ledger["checkpoints"].values(), cfg.comparison.primary_metric):
        if entry.get("content_id") in exclude or entry.get("content_id") == baseline_content_id:
            continue
        if int(entry.get("step") or 0) <= base_step:
            continue  # never go back in training time automatically; that is an operator rollback
        decision = champion_decision(entry, baseline, cfg.comparison)
        if decision.accepted:
            return entry, decision
        last = last or (entry, decision)
    return (None, last[1]) if last else (None, None)


# ------------------------------------------------------------------ scoring
class EvalSource:
    """Held-out eval sets and their scorers: the data manager's skills at their current levels, plus eval files."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.dm = None
        if cfg.data_manager.enabled and cfg.data_manager.skills:
            from data_manager.manager import DataManager

            self.dm = DataManager(cfg)

    def eval_sets(self) -> dict[str, tuple[int, list[dict]]]:
        sets: dict[str, tuple[int, list[dict]]] = {}
        if self.cfg.comparison.eval_samples <= 0:
            return sets
        if self.dm is not None:
            sets.update(self.dm.eval_sets())
        for rel in self.cfg.comparison.eval_files:
            path = self.cfg.resolve(rel)
            samples = _file_samples(path)
            if samples:
                sets[f"file:{path.stem}"] = (0, samples)
        return sets

    def validation_path(self) -> Path | None:
        """The validation set: comparison.validation_file, else training.fixed_validation_file, else a frozen set
        made once from the held-out eval sets (so val_loss exists, and stays comparable, without configuration)."""
        cfg = self.cfg
        configured = cfg.comparison.validation_file or cfg.training.fixed_validation_file
        if configured:
            return cfg.resolve(configured)
        frozen = cfg.layout.status / FROZEN_VALIDATION
        if frozen.is_file() or self.dm is None:
            return frozen if frozen.is_file() else None
        columns = [samples for _level, samples in self.dm.eval_sets().values() if samples]
        rows = [{"messages": [{"role": "user", "content": s["user_prompt"]},
                              {"role": "assistant", "content": s["assistant_response"]}]}
                for group in zip(*columns) for s in group][:max(cfg.comparison.validation_samples, 1)]
        if not rows:
            return None
        atomic_write_text(frozen, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        logger.info("no validation file configured: froze %d held-out eval rows into %s", len(rows), frozen)
        return frozen

    def score(self, name: str, level: int, samples: list[dict], answers: list[str]):
        if name.startswith("file:") or self.dm is None:
            from data_manager.skill_api_client import local_score

            report = local_score(None, samples, answers)
            return report.accuracy, report.correct, report.total, report.scorer
        result = self.dm.evaluate_answers(name, level, samples, answers)
        return result.accuracy, result.correct, result.total, result.scorer

    def record(self, name: str, level: int, accuracy: float, step: int, checkpoint: str, n: int) -> dict | None:
        if self.dm is None or name.startswith("file:") or not self.cfg.comparison.feed_curriculum:
            return None
        return self.dm.record_eval(name, level, accuracy, step=step, checkpoint=checkpoint, n=n).to_dict()


def _file_samples(path: Path) -> list[dict]:
    from trainer.data import DataError, chat_prompt_and_answer, read_jsonl

    try:
        rows = read_jsonl(path)
    except (OSError, DataError) as exc:
        logger.error("eval file %s unreadable: %s", path, exc)
        return []
    out = []
    for row in rows:
        split = chat_prompt_and_answer(row)
        if split and split[0] and split[0][-1].get("role") == "user":
            out.append({"user_prompt": split[0][-1]["content"], "assistant_response": split[1],
                        "metadata": {"skill": path.stem, "level": 0}})
    return out


def score_checkpoint(cfg, ckpt: CheckpointInfo, source: EvalSource | None = None) -> dict:
    """Measure one checkpoint and return its ledger entry (status scored, or failed with the error)."""
    from management.scoring import score_model

    source = source or EvalSource(cfg)
    state = ckpt.trainer_state()
    last = state.get("last_file") or {}
    entry = {"checkpoint": ckpt.path.name, "step": ckpt.step, "content_id": checkpoint_content_id(ckpt.path),
             "scored_at": _now(), "training": {"files_done": len(state.get("files_done") or []),
                                               "final_loss": last.get("final_loss"), "val_loss": last.get("val_loss")}}
    t0 = time.perf_counter()
    try:
        sets = source.eval_sets()
        measured = score_model(cfg, ckpt.path, sets, source.score, source.validation_path())
    except Exception as exc:  # a checkpoint that cannot be scored must not stop the worker; it is recorded as failed
        logger.exception("scoring %s failed", ckpt.path.name)
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", score_seconds=round(time.perf_counter() - t0, 3))
        return entry
    metrics = {"val_loss": measured.val_loss, "val_rows": measured.val_rows, "anchor_loss": measured.anchor_loss,
               "seconds_per_token": measured.seconds_per_token}
    for name, acc in measured.accuracy.items():
        metrics[f"accuracy:{name}"] = acc["accuracy"]
    accs = [a["accuracy"] for a in measured.accuracy.values()]
    metrics["accuracy_mean"] = sum(accs) / len(accs) if accs else None
    entry.update(status="scored", error=None, metrics=metrics, accuracy=measured.accuracy, timings=measured.timings,
                 score_seconds=round(time.perf_counter() - t0, 3))
    return entry


def unscored(cfg, ledger: dict) -> list[CheckpointInfo]:
    """Published checkpoints without a ledger entry for their current content, oldest first."""
    out = []
    for ckpt in list_checkpoints(cfg.layout.current_model):
        known = ledger["checkpoints"].get(ckpt.path.name)
        if known and known.get("content_id") == checkpoint_content_id(ckpt.path):
            continue
        out.append(ckpt)
    return out


def score_new_checkpoints(cfg, limit: int | None = None, only: str | None = None) -> list[dict]:
    """Score every checkpoint not in the ledger yet (newest first, so a backlog reaches the latest quickly); returns new entries."""
    ledger = load_ledger(cfg)
    todo = [c for c in reversed(unscored(cfg, ledger)) if only is None or c.path.name == only]
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        return []
    source = EvalSource(cfg)
    done = []
    for ckpt in todo:
        entry = score_checkpoint(cfg, ckpt, source)
        ledger = load_ledger(cfg)
        ledger["checkpoints"][entry["checkpoint"]] = entry
        save_ledger(cfg, ledger)  # persisted before the curriculum hears of it: a restart never re-scores
        if entry["status"] == "scored":
            entry["curriculum"] = {}
            for name, acc in (entry.get("accuracy") or {}).items():
                try:
                    decision = source.record(name, acc["level"], acc["accuracy"], ckpt.step, ckpt.path.name, acc["total"])
                except ValueError as exc:
                    logger.error("curriculum refused the eval of %s: %s", name, exc)
                    continue
                if decision:
                    entry["curriculum"][name] = decision.get("reason")
            if entry["curriculum"]:
                ledger = load_ledger(cfg)
                ledger["checkpoints"][entry["checkpoint"]] = entry
                save_ledger(cfg, ledger)
        logger.info("scored %s: %s", ckpt.path.name, entry.get("metrics") or entry.get("error"))
        done.append(entry)
    return done


def record_champion(cfg, entry: dict, decision: Decision, baseline_content_id: str | None) -> dict:
    ledger = load_ledger(cfg)
    ledger["champion"] = {"checkpoint": entry["checkpoint"], "content_id": entry["content_id"], "step": entry["step"],
                          "decided_at": _now(), "reason": decision.reason, "baseline": baseline_content_id}
    save_ledger(cfg, ledger)
    return ledger["champion"]


def best_checkpoints(cfg, k: int) -> list[str]:
    """Names of the k best-ranked scored checkpoints still on disk (the retention policy keeps them)."""
    if k <= 0:
        return []
    ledger = load_ledger(cfg)
    metric = cfg.comparison.primary_metric
    on_disk = {c.path.name for c in list_checkpoints(cfg.layout.current_model)}
    ranked = [e for e in rank(ledger["checkpoints"].values(), metric)
              if metric_value(e, metric) is not None and e["checkpoint"] in on_disk]
    return [e["checkpoint"] for e in ranked[:k]]


# ------------------------------------------------------------------ CLI
def _print_table(ledger: dict) -> None:
    names = ledger.get("ranking") or []
    entries = ledger["checkpoints"]
    print(f"primary metric: {ledger.get('primary_metric')}   champion: {(ledger.get('champion') or {}).get('checkpoint')}")
    print(f"{'rank':>4}  {'checkpoint':<22} {'val_loss':>9} {'anchor':>9} {'acc_mean':>8}  scored_at")
    for i, name in enumerate(names, 1):
        e = entries[name]
        m = e.get("metrics") or {}
        fmt = lambda v: f"{v:.4f}" if isinstance(v, (int, float)) else "-"  # noqa: E731
        print(f"{i:>4}  {name:<22} {fmt(m.get('val_loss')):>9} {fmt(m.get('anchor_loss')):>9} "
              f"{fmt(m.get('accuracy_mean')):>8}  {e.get('scored_at')}")
    failed = [n for n, e in entries.items() if e.get("status") == "failed"]
    for name in failed:
        print(f"   -  {name:<22} failed: {entries[name].get('error')}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    from core.config import add_config_args, config_or_exit

    parser = argparse.ArgumentParser(description="Score checkpoints, rank them and show the champion (status/comparisons.json).")
    add_config_args(parser)
    parser.add_argument("command", choices=["status", "score", "champion"], nargs="?", default="status")
    parser.add_argument("--checkpoint", help="score only this checkpoint (score)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    if args.command == "score":
        os.nice(cfg.comparison.nice) if cfg.comparison.nice else None
        entries = score_new_checkpoints(cfg, only=args.checkpoint)
        if args.json:
            print(json.dumps(entries, indent=2, default=str))
        else:
            print(f"scored {len(entries)} checkpoint(s)")
            _print_table(load_ledger(cfg))
        return 0
    ledger = load_ledger(cfg)
    if args.command == "champion":
        from management.deployment_orchestrator import active_content_id, tried_content_ids

        base = active_content_id(cfg)
        entry, decision = pick_champion(cfg, ledger, base, tried_content_ids(cfg))
        out = {"champion": entry and entry["checkpoint"], "decision": decision and decision.to_dict(), "deployed_content_id": base}
        print(json.dumps(out, indent=2) if args.json else
              f"champion: {out['champion'] or 'none'} ({decision.reason if decision else 'no scored checkpoints'})")
        return 0
    if args.json:
        print(json.dumps(ledger, indent=2, default=str))
    else:
        _print_table(ledger)
    return 0


if __name__ == "__main__":
    sys.exit(main())
