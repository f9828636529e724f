"""Data manager: keeps the queue fed with curriculum data and gives the comparison engine its eval sets.

One `tick()` (called by the training daemon's loop, or by `generate` here):
  1. prune: queued files of a skill below its current curriculum level are
     deferred by the queue (TrainingQueue.defer: queue/deferred/ with their
     sidecars, a history entry and an event; never lost, never trained stale;
     `training_queue.py retry NAME` brings one back);
  2. gate: generate only when fewer than `min_queue_depth` files wait
     (queue/high, normal, low, plus data files not yet ingested from inbox/)
     and `cooldown_seconds` have passed since the last attempt;
  3. generate: the next skill in rotation, at its current level, through the
     Skill API client (a built-in skill falls back to in-process generation
     when its server is down), with a random training seed below 2**31;
  4. check quality: every sample well-formed and tagged with the skill and
     the level asked for, prompts diverse enough, every example within
     model.max_length tokens. A failing batch is logged and nothing is written;
  5. write: NAME.job.json (schema_id syllo_v1, priority, tags skill:/level:)
     first, then the rows to inbox/.NAME.jsonl.tmp renamed to inbox/NAME.jsonl,
     so the watcher sees the sidecar as soon as it sees the data.

Held-out eval sets are the ladder's rungs, status/evals/<skill>/level_<n>.jsonl
(data_manager/ladder.py: Skill API samples, seed EVAL_SEED_BASE + level, never a
training seed; written once, digest recorded, never rewritten). The comparison
engine scores `ladder_rungs()`, records the current level's accuracy with
`record_eval()` and the lower rungs' with the curriculum's `record_ladder()`.

carry_fraction (default a quarter) of a skill's rows, in its own files and in
its replay in the other skills' files, are of the level just below its current
one, so the level just passed is in every step while the next is learned.

Each batch also rehearses the lower levels of every skill (rehearsal_fraction,
weighted by forgetting: a level whose ladder accuracy, the mean of its last
`window` readings, is short of the bar plus rehearsal_margin gets more, and the
lower levels' share of the batch grows with how much was
forgotten, up to rehearsal_max_fraction), and is sized by time (file_seconds at the measured training rate)
so a file of a level just passed never trains for long.

Run as:
    cadence data status [--json]
    cadence data generate [--force] [--count N] [--skill NAME]
    cadence data tick | prune | evalsets
"""
from __future__ import annotations

import calendar
import json
import logging
import os
import random
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from core.atomic_io import fsync_dir
from core.queue_store import PRIORITIES, QueueError, TrainingQueue
from core.state.queue_records import JOB_SUFFIX, JobSidecar, write_job_sidecar
from core.state.base import StateError, parse_record
from core.state.curriculum import DataManagerState, read_data_manager_state, write_data_manager_state
from data_manager.curriculum_manager import Curriculum, Decision
from data_manager.ladder import Ladder, LadderError, Rung
from data_manager.quality import QualityError, QualityReport, check_quality, tokenizer_counter  # noqa: F401 (re-exported)
from data_manager.queue_files import queue_depth, queued_skill_level, replay_levels
from data_manager.skill_api_client import LocalSkillClient, SkillAPIError, SkillClient, local_score
from data_manager.skills import BUILTIN_SKILLS, get_skill

logger = logging.getLogger(__name__)

SCHEMA_ID = "syllo_v1"
GENERATED_TAG = "data_manager"
TRAIN_SEED_MAX = 2 ** 31
EVAL_SEED_BASE = 2 ** 40
REPLAY_MAX_SCALE = 8.0  # replay rows at most this many times the row-share plan (see _to_token_share)


@dataclass
class BatchResult:
    skill: str
    level: int
    seed: int
    count: int
    path: str
    job_path: str
    quality: dict[str, Any]
    dropped_eval_overlap: int = 0


@dataclass
class TickResult:
    action: str  # "generated", "skipped" or "failed"
    reason: str
    batch: BatchResult | None = None
    deferred: list[str] = field(default_factory=list)


@dataclass
class EvalResult:
    skill: str
    level: int
    accuracy: float
    correct: int
    total: int
    results: list[dict[str, Any]]
    scorer: str


def _utcnow() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def to_training_row(sample: dict[str, Any]) -> dict[str, Any]:
    """A Skill API sample as a syllo_v1 row (chat_sft_v1 + metadata.skill/level)."""
    meta = sample["metadata"]
    return {"messages": [{"role": "user", "content": sample["user_prompt"]},
                         {"role": "assistant", "content": sample["assistant_response"]}],
            "metadata": {"skill": meta["skill"], "level": meta["level"], "seed": meta.get("seed"), "index": meta.get("index")}}


class DataManager:
    """Curriculum data generation, pruning and eval sets for one Cadence base_dir."""

    def __init__(self, cfg, clients: dict[str, Any] | None = None, curriculum: Curriculum | None = None,
                 count_tokens: Callable[[str], int] | None = None, clock: Callable[[], float] = time.time):
        self.cfg = cfg
        self.dm = cfg.data_manager
        self.layout = cfg.layout
        self.skills = [s.name for s in self.dm.skills]
        self._skill_cfg = {s.name: s for s in self.dm.skills}
        self._clients = dict(clients or {})
        max_levels = {s.name: BUILTIN_SKILLS[s.name].max_level for s in self.dm.skills if s.builtin and s.name in BUILTIN_SKILLS}
        self.curriculum = curriculum or Curriculum.from_config(cfg, max_levels)
        self._count_tokens = count_tokens
        self.clock = clock
        self.state_path = self.layout.data_manager_state
        self.ladder = Ladder(self.layout.evals)

    # -- plumbing ---------------------------------------------------------
    @property
    def count_tokens(self) -> Callable[[str], int]:
        if self._count_tokens is None:
            self._count_tokens = tokenizer_counter(self.cfg.resolve(self.cfg.model.base_model))
        return self._count_tokens

    def client(self, skill: str):
        """The client for `skill`: injected, else HTTP; a built-in skill whose server is down runs in process."""
        if skill in self._clients:
            return self._clients[skill]
        sc = self._skill_cfg[skill]
        http = SkillClient(sc.url, name=skill, timeout=self.dm.request_timeout, retries=self.dm.request_retries)
        if sc.builtin and self.dm.local_fallback and skill in BUILTIN_SKILLS and not http.health():
            logger.warning("skill server %s (%s) not answering; generating %s in process", sc.url, skill, skill)
            http.close()
            return LocalSkillClient(get_skill(skill))
        return http

    def _release(self, client) -> None:
        if client is not self._clients.get(getattr(client, "name", None)):  # injected clients stay open for reuse
            client.close()

    def load_state(self) -> dict[str, Any]:
        """status/data_manager.json as a dict, checked against DataManagerState (core/state/curriculum.py) on every
        load and save."""
        try:
            record = read_data_manager_state(self.state_path)
        except StateError as exc:  # only the rotation and the cooldown clock are lost
            logger.warning("%s: starting afresh", exc)
            record = None
        record = record or DataManagerState(rotation_index=0, last_attempt_at=None, last_generation_at=None,
                                            batches_generated=0)
        return record.to_json()

    def _save_state(self, state: dict[str, Any]) -> None:
        state["updated_at"] = _utcnow()
        write_data_manager_state(self.state_path, parse_record(DataManagerState, state, str(self.state_path)))

    # -- gating -----------------------------------------------------------
    def should_generate(self, now: float | None = None) -> tuple[bool, str]:
        now = self.clock() if now is None else now
        if not self.dm.enabled:
            return False, "data_manager disabled"
        if not self.skills:
            return False, "no skills configured"
        depth = queue_depth(self.layout)["total"]
        if depth >= self.dm.min_queue_depth:
            return False, f"queue depth {depth} >= min_queue_depth {self.dm.min_queue_depth}"
        last = self.load_state().get("last_attempt_at")
        if last is not None and now - last < self.dm.cooldown_seconds:
            return False, f"cooldown: {self.dm.cooldown_seconds - (now - last):.0f}s left"
        return True, f"queue depth {depth} < {self.dm.min_queue_depth}"

    def tick(self, now: float | None = None) -> TickResult:
        """Prune stale files, then generate one batch if the gate opens. Never raises on skill-server trouble."""
        try:
            deferred = [str(p) for p in self.prune_stale()]
        except OSError as exc:  # a permission or disk problem must not stop the daemon's loop
            logger.error("pruning the queue failed: %s", exc)
            deferred = []
        ok, reason = self.should_generate(now)
        if not ok:
            return TickResult("skipped", reason, deferred=deferred)
        try:
            batch = self.generate_batch(now=now)
        except (SkillAPIError, QualityError) as exc:
            logger.error("data generation failed: %s", exc)
            return TickResult("failed", str(exc), deferred=deferred)
        return TickResult("generated", reason, batch, deferred)

    # -- generation -------------------------------------------------------
    def next_skill(self) -> str:
        state = self.load_state()
        return self.skills[int(state.get("rotation_index", 0)) % len(self.skills)]

    def generate_batch(self, skill: str | None = None, count: int | None = None, now: float | None = None) -> BatchResult:
        """Generate, check and write one batch (no gating). Without `skill`: the next in rotation, which then advances."""
        now = self.clock() if now is None else now
        state = self.load_state()
        rotate = skill is None
        skill = skill or self.next_skill()
        if skill not in self._skill_cfg:
            raise KeyError(f"unknown skill {skill!r}; configured: {', '.join(self.skills)}")
        sized = None
        if count is None:
            count, sized = self.sized_batch()
        level = self.curriculum.level(skill)
        seed = secrets.randbelow(TRAIN_SEED_MAX)
        state["last_attempt_at"] = now
        if rotate:
            state["rotation_index"] = int(state.get("rotation_index", 0)) + 1
        self._save_state(state)
        split = self.carry_split(level, count)
        samples, dropped, space = self._generate(skill, level, split[level], seed)
        quality = check_quality(samples, skill, level, count_tokens=self.count_tokens, max_tokens=self.cfg.model.max_length,
                                min_distinct_ratio=self.dm.min_distinct_ratio, problem_space=space)
        if not quality.ok:
            self._note_error(f"{skill} L{level}: quality: {'; '.join(quality.problems)}")
            raise QualityError(skill, level, quality.problems)
        samples, carried = self._with_carry(skill, level - 1, split.get(level - 1, 0), samples, seed)
        samples, rehearsed = self._with_rehearsal(samples, seed)
        samples, replayed, replay_at = self._with_replay(skill, samples, seed)
        path, job_path = self._write_inbox(skill, level, seed, samples, dropped, replay_at)
        state = self.load_state()
        state["last_generation_at"] = now
        state["batches_generated"] = int(state.get("batches_generated", 0)) + 1
        state["last_batch"] = {"skill": skill, "level": level, "seed": seed, "count": len(samples), "replayed": replayed,
                               "carried": carried, "rehearsed": rehearsed, "sized": sized, "file": path.name, "at": _utcnow()}
        state["last_error"] = None
        self._save_state(state)
        logger.info("generated %s: %s level %d, %d samples (seed %d)", path.name, skill, level, len(samples), seed)
        return BatchResult(skill, level, seed, len(samples), str(path), str(job_path), asdict(quality), dropped)

    def _generate(self, skill: str, level: int, count: int, seed: int) -> tuple[list[dict[str, Any]], int, int | None]:
        """`count` samples of `skill` at `level`, minus held-out eval prompts where the level has room for that."""
        client = self.client(skill)
        try:
            space = client.levels().problem_space.get(level)
            samples = client.generate(level, count, seed)
            eval_prompts = {s["user_prompt"] for s in self._ensure_eval_set(skill, level, client)}
        except SkillAPIError as exc:
            self._note_error(f"{skill} L{level}: {exc}")
            raise
        finally:
            self._release(client)
        # Keep held-out prompts out of training when the level has room for it. A small level (binary level 1
        # has 16 problems, syllo level 1 has 60) is trained on all of its problems: there the eval measures
        # mastery of the level, not generalisation, and excluding eval prompts would leave gaps it is tested on.
        dropped = 0
        if space is None or space > 10 * (count + self.dm.eval_count):
            kept = [s for s in samples if s["user_prompt"] not in eval_prompts]
            if len(kept) >= 0.9 * len(samples):
                dropped, samples = len(samples) - len(kept), kept
        return samples, dropped, space

    def carry_split(self, level: int, count: int) -> dict[int, int]:
        """{level: rows} of `count` rows of a skill at `level`: carry_fraction of them (rounded) at the level just
        below, the rest at `level` (all of them at level 1, or with carry_fraction 0)."""
        carried = int(round(count * self.dm.carry_fraction)) if level > 1 else 0
        carried = min(carried, max(0, count - 1))
        return {level: count - carried, **({level - 1: carried} if carried else {})}

    def _with_carry(self, skill: str, below: int, n: int, samples: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], int]:
        """`n` rows of the batch's own skill at the level just below (`below`; carry_split), after the current-level
        rows were generated and quality-checked. Returns the batch and the rows carried."""
        if n <= 0:
            return samples, 0
        extra = self._mixed_in("carry", skill, below, n, seed + 1000003)
        return samples + extra, len(extra)

    def _mixed_in(self, what: str, skill: str, level: int, n: int, seed: int) -> list[dict[str, Any]]:
        """`n` rows of `skill` at `level` to mix into a batch (carry, rehearsal, replay); none, with a warning naming
        `what`, when the skill cannot generate them: the batch's own rows are written all the same."""
        try:
            rows, _, _ = self._generate(skill, level, n, seed % TRAIN_SEED_MAX)
        except SkillAPIError as exc:
            logger.warning("%s of %s level %d skipped: %s", what, skill, level, exc)
            return []
        return rows

    def sized_batch(self) -> tuple[int, dict | None]:
        """Samples of the batch's own skill so that the whole file (with rehearsal and replay) trains in about
        data_manager.file_seconds at the rate measured on the last completed generated files; batch_size when
        nothing was measured yet or sizing is off. A short file keeps a passed level from training for minutes."""
        dm = self.dm
        rate = self.training_rate()
        if dm.file_seconds <= 0 or rate is None:
            return dm.batch_size, None
        rehearsal = self.rehearsal_share()
        own_share = (1 - dm.replay_fraction) * (1 - rehearsal) if len(self.skills) > 1 else 1 - rehearsal
        count = int(rate * dm.file_seconds * own_share)
        count = max(min(dm.min_batch_size, dm.batch_size), min(dm.batch_size, count))
        return count, {"examples_per_second": round(rate, 3), "file_seconds": dm.file_seconds, "count": count}

    def training_rate(self, last: int = 5) -> float | None:
        """Examples per second of wall time (claim to completion) over the last completed generated files."""
        rates = []
        try:
            done = TrainingQueue(self.cfg).entries(["recently_completed"])
        except OSError:
            return None
        for e in done:
            meta = e.meta
            if not (meta.original_name or e.name).startswith("dm_"):
                continue
            examples = meta.validation.examples
            try:
                seconds = (calendar.timegm(time.strptime(meta.finished_at, "%Y-%m-%dT%H:%M:%SZ"))
                           - calendar.timegm(time.strptime(meta.started_at, "%Y-%m-%dT%H:%M:%SZ")))
            except (TypeError, ValueError):
                continue
            if examples and examples > 0 and seconds > 0:
                rates.append((meta.finished_at, examples / seconds))
        rates = [r for _, r in sorted(rates)[-last:]]
        return sorted(rates)[len(rates) // 2] if rates else None

    def rehearsal_weights(self) -> dict[tuple[str, int], float]:
        """{(skill, level): weight} over every level below each skill's current one: 1 for a level at or above
        threshold + rehearsal_margin on its ladder rung (mean of its last `window` readings), 1 + rehearsal_boost *
        (threshold + margin - accuracy) for one short of it."""
        weights = {}
        target = self.curriculum.threshold + self.dm.rehearsal_margin
        for skill in self.skills:
            short = self.curriculum.shortfall(skill, target)
            for level in range(1, self.curriculum.level(skill)):
                weights[(skill, level)] = 1.0 + self.dm.rehearsal_boost * short.get(level, 0.0)
        return weights

    def rehearsal_share(self, skills: list[str] | None = None) -> float:
        """The share of a batch (before replay) spent on lower levels: rehearsal_fraction when every lower level
        holds, growing linearly with the summed shortfall below the bar of the forgotten ones (of `skills`, default
        all) up to rehearsal_max_fraction (reached when that sum equals the threshold, e.g. one level at 0 %). A
        fixed small share could not win a collapsed level back while the new level took most of every batch."""
        dm = self.dm
        top = max(dm.rehearsal_max_fraction, dm.rehearsal_fraction)
        deficit = sum(sum(self.curriculum.forgetting(skill).values()) for skill in (skills or self.skills))
        threshold = self.curriculum.threshold or 1.0
        return dm.rehearsal_fraction + (top - dm.rehearsal_fraction) * min(1.0, deficit / threshold)

    def replay_plan(self, other: str, count: int, current: int | None = None) -> dict[int, int]:
        """{level: rows} of `count` replay rows of skill `other`: its current level and, carry_fraction of those,
        the level just below (carry_split), except that when some of its lower levels fell below the bar,
        rehearsal_share([other]) minus the base rehearsal_fraction of the rows go to those levels first, in
        proportion to their shortfall (the other skill's current level is what erased them: replaying only it would
        keep erasing them)."""
        current = self.curriculum.level(other) if current is None else current
        if count <= 0:
            return {}
        forgotten = self.curriculum.forgetting(other)
        plan = {}
        if forgotten:
            extra = self.rehearsal_share([other]) - self.dm.rehearsal_fraction
            to_forgotten = int(round(count * max(0.0, extra)))
            total = sum(forgotten.values())
            plan = {lvl: int(to_forgotten * d / total) for lvl, d in sorted(forgotten.items())}
        for lvl, n in self.carry_split(current, count - sum(plan.values())).items():
            plan[lvl] = plan.get(lvl, 0) + n
        return {lvl: n for lvl, n in sorted(plan.items()) if n > 0}

    def _with_rehearsal(self, samples: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], dict]:
        """Mix in lower levels of every skill (rehearsal_share() of the batch), weighted by forgetting."""
        share = self.rehearsal_share()
        weights = self.rehearsal_weights()
        if share <= 0 or not weights:
            return samples, {}
        total = int(len(samples) * share / (1 - share))
        wsum = sum(weights.values())
        # largest remainder: the counts add up to `total` and follow the weights, deterministically
        raw = {k: total * w / wsum for k, w in weights.items()}
        counts = {k: int(v) for k, v in raw.items()}
        for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[:total - sum(counts.values())]:
            counts[k] += 1
        mixed, rehearsed = list(samples), {}
        for i, ((skill, level), n) in enumerate(sorted(counts.items()), 1):
            if n <= 0:
                continue
            extra = self._mixed_in("rehearsal", skill, level, n, seed + 104729 * i)
            if not extra:
                continue
            mixed.extend(extra)
            rehearsed[f"{skill}:{level}"] = len(extra)
        return mixed, rehearsed

    def _with_replay(self, skill: str, samples: list[dict[str, Any]], seed: int) -> tuple[list[dict[str, Any]], dict, dict]:
        """Mix in rehearsal samples of the other skills at their current levels (replay_fraction of the batch),
        so training one skill's file does not erase the others (catastrophic forgetting); part of them at the
        other skill's forgotten lower levels when it has some (replay_plan). Returns the batch, rows replayed per
        skill, and the current level each replayed skill was at (the file's replay tags)."""
        others = [s for s in self.skills if s != skill]
        share = self.dm.replay_fraction
        if not others or share <= 0:
            return samples, {}, {}
        per_skill = int(len(samples) * share / (1 - share) / len(others)) if share < 1 else len(samples)
        # The share is of supervised tokens, what the loss is made of (normalised per token over the step): rows of
        # a 6-token binary answer next to rows of a 150-token syllo answer would give binary a few % of the gradient.
        own_tokens = sum(self._answer_tokens(s) for s in samples)
        target = own_tokens * share / (1 - share) / len(others) if share < 1 else own_tokens
        mixed, replayed, current = list(samples), {}, {}
        for i, other in enumerate(others, 1):
            if per_skill <= 0:
                break
            current[other] = self.curriculum.level(other)
            extra = []
            for j, (level, n) in enumerate(sorted(self.replay_plan(other, per_skill, current[other]).items())):
                rows = self._mixed_in("replay", other, level, n, seed + 7919 * i + 15485863 * j)
                if rows:
                    extra.append((level, j, rows))
            extra = self._to_token_share(other, extra, target, seed + 7919 * i)
            mixed.extend(extra)
            if extra:
                replayed[other] = replayed.get(other, 0) + len(extra)
        random.Random(seed).shuffle(mixed)
        return mixed, replayed, {other: lvl for other, lvl in current.items() if other in replayed}

    def _answer_tokens(self, sample: dict[str, Any]) -> int:
        return self.count_tokens(sample["assistant_response"]) + 1  # + the end-of-turn token, also learned

    def _to_token_share(self, skill: str, groups: list[tuple[int, int, list[dict]]], target: float,
                        seed: int) -> list[dict[str, Any]]:
        """Replay rows of `skill` (per level, as replay_plan split them) scaled so their supervised tokens come to
        `target`: each level's rows cut, or topped up with more of the same level, by one factor (at most
        REPLAY_MAX_SCALE times the planned rows, so a batch of long answers does not pull in a flood of short ones)."""
        tokens = sum(self._answer_tokens(s) for _, _, rows in groups for s in rows)
        if not tokens:
            return [s for _, _, rows in groups for s in rows]
        factor = min(REPLAY_MAX_SCALE, target / tokens)
        out = []
        for level, j, rows in groups:
            want = int(round(len(rows) * factor))
            if want <= len(rows):
                out.extend(rows[:want])
                continue
            out.extend(rows)
            out.extend(self._mixed_in("replay top-up", skill, level, want - len(rows), seed + 31337 * (j + 1)))
        return out

    def _note_error(self, message: str) -> None:
        state = self.load_state()
        state["last_error"] = {"message": message, "at": _utcnow()}
        self._save_state(state)

    def _write_inbox(self, skill: str, level: int, seed: int, samples: list[dict[str, Any]], dropped: int,
                     replay_at: dict[str, int] | None = None) -> tuple[Path, Path]:
        inbox = self.layout.inbox
        inbox.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
        name = f"dm_{skill}_L{level:02d}_{stamp}_{seed}"
        job = JobSidecar(schema_id=SCHEMA_ID, priority=self.dm.priority,
                         tags=[GENERATED_TAG, f"skill:{skill}", f"level:{level}",
                               *(f"replay:{other}:{lvl}" for other, lvl in sorted((replay_at or {}).items()))],
                         notes=f"generated by data_manager: {skill} level {level}, seed {seed}, {len(samples)} samples"
                               + (f", {dropped} dropped as held-out eval prompts" if dropped else ""))
        job_path = inbox / f"{name}{JOB_SUFFIX}"
        write_job_sidecar(job_path, job)  # before the data: the watcher must find it when NAME.jsonl appears
        data_path = inbox / f"{name}.jsonl"
        tmp = inbox / f".{name}.jsonl.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            for s in samples:
                fh.write(json.dumps(to_training_row(s), ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, data_path)
        fsync_dir(inbox)
        return data_path, job_path

    # -- pruning ----------------------------------------------------------
    def prune_stale(self) -> list[Path]:
        """Defer queued files of a known skill below its current level, and generated files whose replay rows hold
        another skill below its current level (TrainingQueue.defer: to queue/deferred/ with their sidecars, a
        history entry and an event), so after a level-up the trainer waits at most for the file it is on, not for
        the queue ahead of the new level's data. Returns where each went."""
        levels = self.curriculum.levels(self.skills)
        queue = TrainingQueue(self.cfg)
        moved = []
        for entry in queue.entries(PRIORITIES):
            skill, level = queued_skill_level(entry.path, entry.meta)
            held = [(skill, level)] if level is not None else []
            held += sorted(replay_levels(entry.path, entry.meta).items())
            stale = [(s, lvl) for s, lvl in held if s in levels and lvl < levels[s]]
            if not stale:
                continue
            s, lvl = stale[0]
            reason = (f"{s} level {lvl} is below the current level {levels[s]}" if s == skill else
                      f"its {s} replay rows are level {lvl}, below the current level {levels[s]}")
            try:
                moved.append(queue.defer(entry.name, reason).path)
            except QueueError:  # claimed for training (or moved by the operator) meanwhile
                continue
            logger.info("deferred %s: %s", entry.name, reason)
        return moved

    # -- evaluation (the comparison engine's side) --------------------------
    def eval_set_path(self, skill: str, level: int) -> Path:
        return self.ladder.path(skill, level)

    def eval_set(self, skill: str, level: int | None = None) -> tuple[int, list[dict[str, Any]]]:
        """(level, samples) of the held-out set at `level` (default: the current one), generated once and kept."""
        level = self.curriculum.level(skill) if level is None else level
        return level, self._ensure_eval_set(skill, level)

    def eval_sets(self) -> dict[str, tuple[int, list[dict[str, Any]]]]:
        """{skill: (current level, held-out samples)} for every configured skill; a skill whose set cannot be made is left out (logged)."""
        out = {}
        for skill in self.skills:
            try:
                out[skill] = self.eval_set(skill)
            except SkillAPIError as exc:
                logger.error("no eval set for %s: %s", skill, exc)
        return out

    def _ensure_eval_set(self, skill: str, level: int, client=None) -> list[dict[str, Any]]:
        return list(self.rung(skill, level, client).samples)

    def rung(self, skill: str, level: int, client=None) -> Rung:
        """The ladder rung of `skill` at `level`: generated once (seed EVAL_SEED_BASE + level), then only read."""
        def make() -> list[dict[str, Any]]:
            own = client is None
            c = client or self.client(skill)
            try:
                return c.generate(level, self.dm.eval_count, EVAL_SEED_BASE + level)
            finally:
                if own:
                    self._release(c)

        try:
            return self.ladder.rung(skill, level, make, seed=EVAL_SEED_BASE + level)
        except LadderError as exc:
            raise SkillAPIError(str(exc)) from exc

    def ladder_rungs(self, skill: str) -> list[Rung]:
        """Every rung of `skill` from level 1 up to its current level (the ladder grows, never changes)."""
        return [self.rung(skill, level) for level in range(1, self.curriculum.level(skill) + 1)]

    def evaluate_answers(self, skill: str, level: int, samples: list[dict[str, Any]], answers: list[str]) -> EvalResult:
        """Score model answers against eval samples of `skill` at `level` (refuses samples of another level)."""
        wrong = [i for i, s in enumerate(samples)
                 if s.get("metadata", {}).get("level") != level or s.get("metadata", {}).get("skill") != skill]
        if wrong:
            raise ValueError(f"{len(wrong)} eval sample(s) are not {skill} level {level} (first #{wrong[0]})")
        sc = self._skill_cfg.get(skill)
        if sc is None or (sc.builtin and skill in BUILTIN_SKILLS):
            report = local_score(skill, samples, answers)
        else:
            client = self.client(skill)
            try:
                report = client.score(samples, answers)
            finally:
                self._release(client)
        return EvalResult(skill, level, report.accuracy, report.correct, report.total, report.results, report.scorer)

    def record_eval(self, skill: str, level: int, accuracy: float, step: int | None = None,
                    checkpoint: str | None = None, n: int | None = None) -> Decision:
        return self.curriculum.record_eval(skill, level, accuracy, step=step, checkpoint=checkpoint, n=n)

    def score_and_record(self, skill: str, level: int, samples: list[dict[str, Any]], answers: list[str],
                         step: int | None = None, checkpoint: str | None = None) -> tuple[EvalResult, Decision]:
        result = self.evaluate_answers(skill, level, samples, answers)
        return result, self.record_eval(skill, level, result.accuracy, step=step, checkpoint=checkpoint, n=result.total)

    # -- reporting --------------------------------------------------------
    def status(self, now: float | None = None) -> dict[str, Any]:
        now = self.clock() if now is None else now
        state = self.load_state()
        ok, reason = self.should_generate(now)
        deferred = TrainingQueue(self.cfg).count("deferred")
        return {"enabled": self.dm.enabled, "queue": queue_depth(self.layout), "min_queue_depth": self.dm.min_queue_depth,
                "would_generate": ok, "reason": reason, "next_skill": self.next_skill() if self.skills else None,
                "levels": self.curriculum.levels(self.skills), "deferred_files": deferred, **state}
