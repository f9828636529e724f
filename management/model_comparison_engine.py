"""Comparison engine: score every new checkpoint once, rank them, and decide the champion.

Each published checkpoint (trainer/checkpoint.py layout) is measured once by
management/scoring.py on the item sets of management/item_sets.py: the held-out
ladder of every skill up to its current level (fixed items per level, written
once: data_manager/ladder.py), the held-out rows of the files trained since the
deployed version, the user's validation and eval files, and the anchor set. Per
item it keeps the loss and, where there is an expected answer, exact match;
per set the accuracy and mean loss, by skill and level. It also keeps val_loss
on the fixed validation set (comparison.validation_file, else
training.fixed_validation_file, else `status/comparison_validation.jsonl`
frozen once) for the margin rule. The current level's ladder accuracy feeds the
curriculum (a level is mastered on its fixed items), the lower rungs' accuracy
its rehearsal (a forgotten level is rehearsed more). Results go to the
persistent ledger `status/comparisons.json`, keyed by checkpoint name and
content id: a restart never re-scores.

The deployed version is scored on the same sets: whenever a candidate was
scored on a set (id + digest) the deployed version has no result for, the
deployed model is scored on that set once and the result is kept in its ledger
entry, so it is reused for every later candidate (`fill_baseline`).

Champion rule (`champion_decision`), comparison.rule:
  * "paired" (default): management/paired_test.py. On every set both were
    scored on, a paired test per item (exact sign test on exact match, paired
    bootstrap on per-item loss) at comparison.confidence: promoted when better
    on at least one set, refused when any guarded set (every ladder rung's exact
    match, trained/validation/anchor loss, eval files) regresses beyond its
    tolerance, and refused on a tie. Newest candidate first.
  * "margin" (the old rule): the primary metric improves by comparison.margin
    AND anchor loss does not regress by more than comparison.guard_tolerance.
Without a deployed baseline the best-ranked (paired: the newest) checkpoint
wins. Both rules are evaluated for every candidate against the deployed version
and kept in the entry's `verdicts` (so a run under one rule shows what the other
would have done, and when a better checkpoint first existed).

comparisons.json:
    {"format": 1, "primary_metric": "val_loss", "rule": "paired"|"margin", "updated_at": ISO,
     "checkpoints": {"checkpoint-120": {"checkpoint", "step", "content_id", "status": "scored"|"failed",
                     "error", "scored_at", "score_seconds", "timings",
                     "metrics": {"val_loss", "val_rows", "anchor_loss", "accuracy_mean", "seconds_per_token",
                                 "accuracy:<skill>", ...},
                     "accuracy": {"<skill>": {"level", "accuracy", "correct", "total", "scorer", "example"}},
                     "sets": {"ladder:binary:L2": {"kind", "skill", "level", "digest", "n", "accuracy", "mean_loss",
                                                   "token_loss", "exact": "0110…", "loss": [...], "scorer"}, ...},
                     "baseline_scored": {"<set id>": ISO},   # sets scored later, as the deployed version
                     "verdicts": [{"baseline", "at", "paired": {"accepted", "reason"}, "margin": {...}}],
                     "training": {"files_done", "final_loss", "val_loss"}}},
     "ranking": [names, best first],
     "champion": {"checkpoint", "content_id", "step", "decided_at", "reason", "rule", "baseline"} | null}

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
    data["rule"] = cfg.comparison.rule
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
    rule: str = "margin"
    tests: list | None = None  # the paired rule's per-set tests

    def to_dict(self) -> dict:
        return asdict(self)


def improvement(candidate: float, baseline: float, metric: str) -> float:
    """Relative improvement for losses ((b - c) / b), absolute points for accuracies (c - b)."""
    if lower_is_better(metric):
        return (baseline - candidate) / abs(baseline) if baseline else baseline - candidate
    return candidate - baseline


def champion_decision(candidate: dict, baseline: dict | None, cc, rule: str | None = None) -> Decision:
    """Does `candidate` beat the deployed `baseline` (both ledger entries) under comparison.rule (or `rule`)?"""
    if (rule or cc.rule) == "paired":
        return paired_champion_decision(candidate, baseline, cc)
    return margin_decision(candidate, baseline, cc)


def paired_champion_decision(candidate: dict, baseline: dict | None, cc) -> Decision:
    from management.paired_test import paired_decision

    if candidate.get("status") != "scored" or not candidate.get("sets"):
        return Decision(False, f"no item-set results for {candidate.get('checkpoint')}", rule="paired")
    broken = [sid for sid, r in candidate["sets"].items() if r.get("nonfinite")]
    if broken:  # a NaN/Inf loss is no score at all: such a checkpoint can never win
        return Decision(False, f"non-finite loss on {', '.join(broken)}", rule="paired")
    if baseline is None:
        return Decision(True, "no deployed baseline", rule="paired")
    d = paired_decision(candidate["sets"], baseline.get("sets") or {}, cc)
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


def candidates(cfg, ledger: dict, baseline_content_id: str | None, exclude: set[str] = frozenset()) -> list[dict]:
    """Scored checkpoints newer than the deployed one, not tried yet, in the order the rule considers them."""
    baseline = entry_for_content(ledger, baseline_content_id)
    base_step = int(baseline.get("step") or 0) if baseline else -1
    if cfg.comparison.rule == "paired":
        ordered = sorted((e for e in ledger["checkpoints"].values() if e.get("status") == "scored"),
                         key=lambda e: -int(e.get("step") or 0))  # the newest that passes follows the learning
    else:
        ordered = rank(ledger["checkpoints"].values(), cfg.comparison.primary_metric)
    # never go back in training time automatically (that is an operator rollback)
    return [e for e in ordered if e.get("content_id") not in exclude and e.get("content_id") != baseline_content_id
            and int(e.get("step") or 0) > base_step]


def pick_champion(cfg, ledger: dict, baseline_content_id: str | None, exclude: set[str] = frozenset()) -> tuple[dict | None, Decision | None]:
    """The first candidate (see `candidates`) that beats the deployed one (content ids in `exclude` were tried already)."""
    baseline = entry_for_content(ledger, baseline_content_id)
    last = None
    for entry in candidates(cfg, ledger, baseline_content_id, exclude):
        decision = champion_decision(entry, baseline, cfg.comparison)
        if decision.accepted:
            return entry, decision
        last = last or (entry, decision)
    return (None, last[1]) if last else (None, None)


def record_verdicts(cfg, baseline_content_id: str | None, exclude: set[str] = frozenset(), keep: int = 8) -> int:
    """Judge every candidate against the deployed version under both rules, once per (candidate, deployed version,
    sets scored), and keep the verdicts in its entry: what either rule would do, and since when."""
    ledger = load_ledger(cfg)
    baseline = entry_for_content(ledger, baseline_content_id)
    changed = 0
    for entry in candidates(cfg, ledger, baseline_content_id, exclude):
        key = [baseline_content_id, sorted((baseline or {}).get("sets") or {})]
        verdicts = entry.setdefault("verdicts", [])
        if verdicts and verdicts[-1].get("key") == key:
            continue
        out = {"key": key, "baseline": baseline_content_id, "baseline_checkpoint": (baseline or {}).get("checkpoint"),
               "at": _now()}
        for rule in ("paired", "margin"):
            d = champion_decision(entry, baseline, cfg.comparison, rule)
            out[rule] = {"accepted": d.accepted, "reason": d.reason}
        entry["verdicts"] = (verdicts + [out])[-keep:]
        changed += 1
    if changed:
        save_ledger(cfg, ledger)
    return changed


# ------------------------------------------------------------------ scoring
class EvalSource:
    """What checkpoints are scored on (management/item_sets.py) and how: the data manager's ladder and scorers."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.dm = None
        if cfg.data_manager.enabled and cfg.data_manager.skills:
            from data_manager.manager import DataManager

            self.dm = DataManager(cfg)

    def sets(self, since_step: int | None, until_step: int | None = None) -> list:
        from management.item_sets import build_sets

        cc = self.cfg.comparison
        dm = self.dm if cc.eval_samples > 0 and cc.ladder_items > 0 else None
        return build_sets(self.cfg, dm, since_step, until_step)

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

    def score(self, item_set, answers: list[str]) -> tuple[list[bool], str]:
        """Per-item correctness of `answers` to the set's samples (the skill's scorer; exact match for eval files)."""
        if item_set.kind != "ladder" or self.dm is None:
            from data_manager.skill_api_client import local_score

            report = local_score(None, item_set.samples, answers)
            return [bool(r["correct"]) for r in report.results], report.scorer
        result = self.dm.evaluate_answers(item_set.skill, item_set.level, item_set.samples, answers)
        return [bool(r["correct"]) for r in result.results], result.scorer

    def record(self, entry: dict) -> dict:
        """Feed the curriculum: the current level's ladder accuracy (mastery), the lower rungs' (rehearsal)."""
        if self.dm is None or not self.cfg.comparison.feed_curriculum:
            return {}
        out = {}
        for skill, acc in (entry.get("accuracy") or {}).items():
            try:
                decision = self.dm.record_eval(skill, acc["level"], acc["accuracy"], step=entry["step"],
                                               checkpoint=entry["checkpoint"], n=acc["total"])
                lower = {r["level"]: r["accuracy"] for r in (entry.get("sets") or {}).values()
                         if r.get("kind") == "ladder" and r.get("skill") == skill and r.get("accuracy") is not None
                         and r["level"] < acc["level"]}
                if lower:
                    self.dm.curriculum.record_ladder(skill, lower, step=entry["step"], checkpoint=entry["checkpoint"])
            except ValueError as exc:
                logger.error("curriculum refused the eval of %s: %s", skill, exc)
                continue
            out[skill] = decision.reason
        return out


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


def current_level_accuracy(sets: dict) -> dict:
    """{skill: {level, accuracy, correct, total, scorer, example}} from each skill's highest ladder rung scored."""
    out = {}
    for res in sets.values():
        if res.get("kind") != "ladder" or res.get("accuracy") is None:
            continue
        if res["skill"] not in out or res["level"] > out[res["skill"]]["level"]:
            out[res["skill"]] = {"level": res["level"], "accuracy": res["accuracy"], "correct": res["exact"].count("1"),
                                 "total": len(res["exact"]), "scorer": res.get("scorer"), "example": res.get("example")}
    return out


def score_checkpoint(cfg, ckpt: CheckpointInfo, source: EvalSource | None = None, since_step: int | None = None,
                     sets: list | None = None) -> dict:
    """Measure one checkpoint and return its ledger entry (status scored, or failed with the error)."""
    from management.scoring import score_model

    source = source or EvalSource(cfg)
    state = ckpt.trainer_state()
    last = state.last_file
    entry = {"checkpoint": ckpt.path.name, "step": ckpt.step, "content_id": checkpoint_content_id(ckpt.path),
             "scored_at": _now(), "training": {"files_done": len(state.files_done),
                                               "final_loss": last.final_loss if last else None,
                                               "val_loss": last.val_loss if last else None}}
    t0 = time.perf_counter()
    try:
        sets = source.sets(since_step, ckpt.step) if sets is None else sets
        measured = score_model(cfg, ckpt.path, sets, source.score, source.validation_path())
    except Exception as exc:  # a checkpoint that cannot be scored must not stop the worker; it is recorded as failed
        logger.exception("scoring %s failed", ckpt.path.name)
        entry.update(status="failed", error=f"{type(exc).__name__}: {exc}", score_seconds=round(time.perf_counter() - t0, 3))
        return entry
    accuracy = current_level_accuracy(measured.sets)
    metrics = {"val_loss": measured.val_loss, "val_rows": measured.val_rows, "anchor_loss": measured.anchor_loss,
               "seconds_per_token": measured.seconds_per_token}
    for name, acc in accuracy.items():
        metrics[f"accuracy:{name}"] = acc["accuracy"]
    for set_id, res in measured.sets.items():
        if res["kind"] == "eval" and res.get("accuracy") is not None:
            metrics[f"accuracy:file:{set_id.split(':', 1)[1]}"] = res["accuracy"]
    accs = [a["accuracy"] for a in accuracy.values()]
    metrics["accuracy_mean"] = sum(accs) / len(accs) if accs else None
    entry.update(status="scored", error=None, metrics=metrics, accuracy=accuracy, sets=measured.sets,
                 timings=measured.timings, score_seconds=round(time.perf_counter() - t0, 3))
    return entry


def baseline_model_path(cfg, entry: dict) -> Path | None:
    """Where the deployed version's weights are: its checkpoint while on disk, else its consolidated version."""
    from management.model_versioner import find_version

    path = cfg.layout.current_model / entry["checkpoint"]
    if path.is_dir() and checkpoint_content_id(path) == entry.get("content_id"):
        return path
    version = find_version(cfg, entry["content_id"]) if entry.get("content_id") else None
    return Path(version["path"]) if version else None


def fill_baseline(cfg, source: EvalSource, sets: list, baseline_content_id: str | None) -> list[str]:
    """Score the deployed version on every set in `sets` it has no result for (same id and digest); cached in its
    ledger entry, so each set version costs the deployed model one scoring. Returns the set ids scored."""
    from management.scoring import CheckpointScorer, score_sets

    ledger = load_ledger(cfg)
    baseline = entry_for_content(ledger, baseline_content_id)
    if baseline is None:
        return []
    have = baseline.get("sets") or {}
    missing = [s for s in sets if (have.get(s.id) or {}).get("digest") != s.digest]
    if not missing:
        return []
    path = baseline_model_path(cfg, baseline)
    if path is None:
        logger.error("deployed version %s: weights not found; its missing sets (%s) stay unpaired",
                     baseline["checkpoint"], ", ".join(s.id for s in missing))
        return []
    t0 = time.perf_counter()
    scorer = CheckpointScorer(cfg, path)
    try:
        results, _ = score_sets(scorer, missing, source.score, cfg.comparison.max_new_tokens)
    finally:
        scorer.close()
    ledger = load_ledger(cfg)
    baseline = entry_for_content(ledger, baseline_content_id)
    baseline.setdefault("sets", {}).update(results)
    baseline.setdefault("baseline_scored", {}).update({sid: _now() for sid in results})
    save_ledger(cfg, ledger)
    logger.info("scored the deployed %s on %d new set(s) in %.1fs: %s", baseline["checkpoint"], len(results),
                time.perf_counter() - t0, ", ".join(results))
    return list(results)


def unscored(cfg, ledger: dict) -> list[CheckpointInfo]:
    """Published checkpoints without a ledger entry for their current content, oldest first."""
    out = []
    for ckpt in list_checkpoints(cfg.layout.current_model):
        known = ledger["checkpoints"].get(ckpt.path.name)
        if known and known.get("content_id") == checkpoint_content_id(ckpt.path):
            continue
        out.append(ckpt)
    return out


def _deployed_content_id(cfg) -> str | None:
    from management.deployment_state import active_content_id

    return active_content_id(cfg)


def score_new_checkpoints(cfg, limit: int | None = None, only: str | None = None) -> list[dict]:
    """Score every checkpoint not in the ledger yet (newest first, so a backlog reaches the latest quickly), and the
    deployed version on whatever new sets they were scored on; returns the new entries."""
    ledger = load_ledger(cfg)
    todo = [c for c in reversed(unscored(cfg, ledger)) if only is None or c.path.name == only]
    if limit is not None:
        todo = todo[:limit]
    if not todo:
        return []
    source = EvalSource(cfg)
    done = []
    for ckpt in todo:
        base_cid = _deployed_content_id(cfg)
        base = entry_for_content(load_ledger(cfg), base_cid)
        since = int(base["step"]) if base and base.get("step") is not None else None
        try:
            sets = source.sets(since, ckpt.step)
        except Exception:  # recorded as a failed scoring by score_checkpoint, which builds them again
            logger.exception("building the item sets for %s failed", ckpt.path.name)
            sets = None
        entry = score_checkpoint(cfg, ckpt, source, since, sets)
        ledger = load_ledger(cfg)
        ledger["checkpoints"][entry["checkpoint"]] = entry
        save_ledger(cfg, ledger)  # persisted before the curriculum hears of it: a restart never re-scores
        if entry["status"] == "scored":
            entry["curriculum"] = source.record(entry)
            if entry["curriculum"]:
                ledger = load_ledger(cfg)
                ledger["checkpoints"][entry["checkpoint"]]["curriculum"] = entry["curriculum"]
                save_ledger(cfg, ledger)
            if base is not None and base.get("content_id") != entry.get("content_id"):
                try:
                    fill_baseline(cfg, source, sets or [], base_cid)
                except Exception:  # the candidate's own scores stand; the pairing waits for the next pass
                    logger.exception("scoring the deployed version on %s's sets failed", ckpt.path.name)
        logger.info("scored %s: %s", ckpt.path.name, entry.get("metrics") or entry.get("error"))
        done.append(entry)
    return done


def record_champion(cfg, entry: dict, decision: Decision, baseline_content_id: str | None) -> dict:
    ledger = load_ledger(cfg)
    ledger["champion"] = {"checkpoint": entry["checkpoint"], "content_id": entry["content_id"], "step": entry["step"],
                          "decided_at": _now(), "reason": decision.reason, "rule": decision.rule,
                          "baseline": baseline_content_id}
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
