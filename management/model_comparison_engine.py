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

Champion rule (`champion_decision` in management/champion_rule.py; what is scored and how, EvalSource, in
management/eval_source.py), comparison.rule:
  * "paired" (default): management/paired_test.py. On every set both were
    scored on, a paired test per item (exact sign test on exact match, paired
    bootstrap on per-item loss) at comparison.confidence: promoted when better
    on at least one set, refused when any guarded set (every ladder rung's exact
    match, trained/validation/anchor loss, eval files) regresses beyond its
    tolerance, refused when it reads under both the mastery bar and the deployed
    version on a passed level (comparison.keep_mastered), and refused on a tie.
    Newest candidate first.
  * "margin" (the old rule): the primary metric improves by comparison.margin
    AND anchor loss does not regress by more than comparison.guard_tolerance.
Without a deployed baseline the best-ranked (paired: the newest) checkpoint
wins. Both rules are evaluated for every candidate against the deployed version
and kept in the entry's `verdicts` (so a run under one rule shows what the other
would have done, and when a better checkpoint first existed).

comparisons.json: one record, core/state/ledger.py's Ledger ({"checkpoints": {name: LedgerEntry}, "ranking",
"champion"}); this engine edits it as a dict that the model checks on every load and save.

Run as:
    cadence compare status [--json]
    cadence compare score [--checkpoint checkpoint-120] [--json]
    cadence compare champion [--json]
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from core.manifest import ManifestError, content_id, read_manifest
from core.state.base import StateError, parse_record
from core.state.ledger import Ledger, read_ledger, write_ledger
from management.champion_rule import (Decision, candidates, champion_decision, entry_for_content, mastery_floor,
                                     metric_value, rank)
from management.eval_source import EvalSource
from trainer.checkpoint import CheckpointInfo, list_checkpoints
from management.deployment_state import active_content_id
from management.model_versioner import find_version

logger = logging.getLogger(__name__)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ------------------------------------------------------------------ ledger
def load_ledger(cfg) -> dict:
    """The ledger as this engine edits it: a dict checked against core/state/ledger.py's Ledger on every load and
    save (a new one when nothing was scored yet, or when the file is torn or invalid: logged, then re-scored)."""
    try:
        ledger = read_ledger(cfg.layout)
    except StateError as exc:
        logger.error("%s: starting a new ledger", exc)
        ledger = None
    data = ledger.to_json() if ledger else {"format": 1, "checkpoints": {}, "ranking": [], "champion": None}
    data.setdefault("checkpoints", {})
    data["primary_metric"] = cfg.comparison.primary_metric
    data["rule"] = cfg.comparison.rule
    return data


def save_ledger(cfg, ledger: dict) -> None:
    ledger["updated_at"] = _now()
    ledger["ranking"] = [e["checkpoint"] for e in rank(ledger["checkpoints"].values(), cfg.comparison.primary_metric)]
    write_ledger(cfg.layout, parse_record(Ledger, ledger, str(cfg.layout.comparisons)))


def checkpoint_content_id(path: Path) -> str | None:
    manifest = read_manifest(path)
    if manifest is None:
        return None
    try:
        return content_id(manifest)
    except ManifestError:  # empty or partial: no id rather than one shared with every other such manifest
        return None


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
            d = champion_decision(entry, baseline, cfg.comparison, rule, mastery_floor(cfg))
            out[rule] = {"accepted": d.accepted, "reason": d.reason}
        entry["verdicts"] = (verdicts + [out])[-keep:]
        changed += 1
    if changed:
        save_ledger(cfg, ledger)
    return changed


# ------------------------------------------------------------------ scoring
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
    from management.scoring import score_model  # lazy: pulls torch, which this module's importers must not load

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
    path = cfg.layout.current_model / entry["checkpoint"]
    if path.is_dir() and checkpoint_content_id(path) == entry.get("content_id"):
        return path
    version = find_version(cfg, entry["content_id"]) if entry.get("content_id") else None
    return Path(version["path"]) if version else None


def fill_baseline(cfg, source: EvalSource, sets: list, baseline_content_id: str | None) -> list[str]:
    """Score the deployed version on every set in `sets` it has no result for (same id and digest); cached in its
    ledger entry, so each set version costs the deployed model one scoring. Returns the set ids scored."""
    from management.scoring import CheckpointScorer, score_sets  # lazy: pulls torch, which this module's importers must not load

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
        if not ckpt.path.is_dir():  # rolling retention removed it while the newer ones were scored
            logger.info("%s was removed before it was scored (rolling retention): skipped", ckpt.path.name)
            continue
        base_cid = _deployed_content_id(cfg)
        base = entry_for_content(load_ledger(cfg), base_cid)
        since = int(base["step"]) if base and base.get("step") is not None else None
        try:
            sets = source.sets(since, ckpt.step)
        except Exception:  # recorded as a failed scoring by score_checkpoint, which builds them again
            logger.exception("building the item sets for %s failed", ckpt.path.name)
            sets = None
        entry = score_checkpoint(cfg, ckpt, source, since, sets)
        if entry["status"] != "scored" and not ckpt.path.is_dir():  # not a broken checkpoint: a removed one
            logger.info("%s was removed while it was scored (rolling retention): not recorded", ckpt.path.name)
            continue
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
