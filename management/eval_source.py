"""What checkpoints are scored on and how: the item sets (management/item_sets.py), the frozen validation set, the
skills' scorers, and the curriculum fed with the results (data_manager's ladder and curriculum).

Run as: imported by management.model_comparison_engine (no entry point).
"""
from __future__ import annotations

import logging
from pathlib import Path

from core.state.lifecycle import ChatMessage, ValidationRow, freeze_validation_rows

logger = logging.getLogger(__name__)


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
        frozen = cfg.layout.comparison_validation
        if frozen.is_file() or self.dm is None:
            return frozen if frozen.is_file() else None
        columns = [samples for _level, samples in self.dm.eval_sets().values() if samples]
        rows = [ValidationRow(messages=[ChatMessage(role="user", content=s["user_prompt"]),
                                        ChatMessage(role="assistant", content=s["assistant_response"])])
                for group in zip(*columns) for s in group][:max(cfg.comparison.validation_samples, 1)]
        if not rows:
            return None
        freeze_validation_rows(cfg.layout, rows)
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
                # the lower rungs first: a level is not left while one below it is forgotten (hold_while_forgotten)
                lower = {r["level"]: r["accuracy"] for r in (entry.get("sets") or {}).values()
                         if r.get("kind") == "ladder" and r.get("skill") == skill and r.get("accuracy") is not None
                         and r["level"] < acc["level"]}
                if lower:
                    self.dm.curriculum.record_ladder(skill, lower, step=entry["step"], checkpoint=entry["checkpoint"])
                decision = self.dm.record_eval(skill, acc["level"], acc["accuracy"], step=entry["step"],
                                               checkpoint=entry["checkpoint"], n=acc["total"])
            except ValueError as exc:
                logger.error("curriculum refused the eval of %s: %s", skill, exc)
                continue
            out[skill] = decision.reason
        return out

