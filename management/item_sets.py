"""The item sets a checkpoint is scored on, each with a digest that names exactly which items it holds.

A candidate and the deployed version are compared on the same items
(management/paired_test.py), so every set is deterministic and versioned:

  ladder:<skill>:L<n>   the first comparison.ladder_items items of the skill's fixed rung at level n, for every
                        level from 1 to the skill's current one (data_manager/ladder.py; exact match + loss)
  trained:<file id>     the first comparison.trained_rows rows the trainer held out of a file trained since the
                        deployed version (the last comparison.trained_files such files; loss)
  validation:<stem>     the user's validation file, when configured (loss)
  eval:<stem>           each of comparison.eval_files (exact match)
  anchor:<stem>         comparison.anchor_file, the forgetting guard (loss)

A set's digest changes only when its items do; a result stored with a digest
is reused for as long as the set has it (the deployed version is scored once
per set version, then read from the ledger).

Library only: `build_sets(cfg, data_manager, since_step, until_step)`.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

from trainer.data import DataError, chat_prompt_and_answer, read_jsonl
from core.queue_store import TrainingQueue
from data_manager.skill_api_client import SkillAPIError

logger = logging.getLogger(__name__)


@dataclass
class ItemSet:
    id: str
    kind: str  # ladder | trained | validation | eval | anchor
    digest: str
    rows: list[dict]  # chat rows: per-item supervised loss
    samples: list[dict] | None = None  # Skill API samples: per-item exact match by generation
    skill: str | None = None
    level: int | None = None
    meta: dict = field(default_factory=dict)


def _digest(*parts) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:16]


def _chat_row(sample: dict) -> dict:
    return {"messages": [{"role": "user", "content": sample["user_prompt"]},
                         {"role": "assistant", "content": sample["assistant_response"]}]}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ladder_sets(cfg, dm) -> list[ItemSet]:
    out = []
    k = cfg.comparison.ladder_items
    for skill in dm.skills:
        try:
            rungs = dm.ladder_rungs(skill)
        except SkillAPIError as exc:  # a skill without a usable ladder is left out, loudly: never scored on other items
            logger.error("no ladder for %s: %s", skill, exc)
            continue
        for rung in rungs:
            samples = rung.items(k)
            out.append(ItemSet(f"ladder:{skill}:L{rung.level}", "ladder", rung.set_digest(k), [_chat_row(s) for s in samples],
                               samples, skill, rung.level, {"rung_sha256": rung.sha256}))
    return out


def trained_sets(cfg, since_step: int | None, until_step: int | None) -> list[ItemSet]:
    """Held-out rows of the files trained after `since_step` (the deployed version's step) up to `until_step`."""
    from trainer.packing import held_out_indices  # lazy: pulls torch, which this module's importers must not load

    cc, t = cfg.comparison, cfg.training
    if cc.trained_files <= 0 or since_step is None:
        return []
    done = []
    for e in TrainingQueue(cfg).entries(["recently_completed"]):
        end = e.meta.global_step_end
        if e.id and end is not None and end > since_step and (until_step is None or end <= until_step):
            done.append((end, e))
    out = []
    for _end, e in sorted(done, key=lambda x: x[0])[-cc.trained_files:]:
        try:
            rows = read_jsonl(e.path)
        except (OSError, DataError) as exc:
            logger.warning("trained file %s unreadable for scoring: %s", e.name, exc)
            continue
        idx = held_out_indices(len(rows), t.seed, e.id, t.eval_split_fraction, t.eval_split_max)[:cc.trained_rows]
        chat = [rows[i] for i in idx if isinstance(rows[i], dict) and "messages" in rows[i]]
        if chat:
            out.append(ItemSet(f"trained:{e.id[:12]}", "trained", _digest(e.id, t.seed, idx), chat,
                               meta={"file": e.name, "global_step_end": e.meta.global_step_end}))
    return out


def file_sets(cfg) -> list[ItemSet]:
    from management.scoring import sample_rows  # lazy: pulls torch, which this module's importers must not load

    cc = cfg.comparison
    out = []
    configured = cc.validation_file or cfg.training.fixed_validation_file
    for kind, rel in (("validation", configured), ("anchor", cc.anchor_file)):
        if not rel:
            continue
        path = cfg.resolve(rel)
        if not path.is_file():
            logger.error("%s file %s missing: not scored", kind, path)
            continue
        rows = sample_rows(path, cc.validation_samples)
        out.append(ItemSet(f"{kind}:{path.stem}", kind, _digest(_file_digest(path), cc.validation_samples), rows,
                           meta={"file": str(path)}))
    if cc.eval_samples > 0:
        for rel in cc.eval_files:
            path = cfg.resolve(rel)
            samples = file_samples(path)[:cc.eval_samples] if path.is_file() else []
            if samples:
                out.append(ItemSet(f"eval:{path.stem}", "eval", _digest(_file_digest(path), cc.eval_samples),
                                   [_chat_row(s) for s in samples], samples, meta={"file": str(path)}))
    return out


def build_sets(cfg, dm, since_step: int | None, until_step: int | None = None) -> list[ItemSet]:
    """Every set a checkpoint at `until_step` is scored on, given the deployed version's step `since_step`."""
    sets = ladder_sets(cfg, dm) if dm is not None else []
    return sets + trained_sets(cfg, since_step, until_step) + file_sets(cfg)


def file_samples(path: Path) -> list[dict]:
    """An eval file's chat rows as scoring samples (last user turn -> assistant answer); [] when unreadable."""
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
