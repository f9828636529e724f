"""The curriculum: the training level of each skill, and when it goes up.

State lives in `status/curriculum.json` (atomic writes, an flock around every
read-modify-write so the comparison engine and the data manager can share
it). Per skill: the training level (= mastered + 1, starting at 1) and the
last 100 evals, each tagged with the level that was actually tested.

The rule, applied after every recorded eval:
  * only evals whose tested level equals the current level, recorded since
    the skill reached that level, count (an eval of another level is kept in
    the history and never moves anything: the original system jumped from
    level 3 to 28 on evals of the wrong level);
  * when the last `window` (default 3) counted evals have a mean accuracy
    >= `threshold` (default 0.8), the level goes up by exactly one, and the
    count starts afresh at the new level;
  * the top level of a skill is never exceeded;
  * with data_manager.hold_while_forgotten (default), a mastered level is not left while a lower level is
    forgotten (below the threshold on its ladder rung, mean of its last `window` readings): the skill stays
    and rehearses it first.

The evals are taken on the held-out ladder (data_manager/ladder.py): a level
is mastered on its fixed items. The comparison engine also records each
checkpoint's accuracy on every lower rung (`record_ladder`, the last `window`
readings kept); a lower level whose mean over them falls below the threshold is
"forgotten" (`forgetting`). The data manager rehearses a lower level more in
proportion to how far it is short of the threshold plus
data_manager.rehearsal_margin (`shortfall`): a level is rehearsed back up
before it falls under the bar, not only after.

Run as:
    cadence curriculum status [--json]
    cadence curriculum set SKILL LEVEL     # operator override, logged in the state
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from core.state.base import StateError, parse_record
from core.state.curriculum import CurriculumState, read_curriculum, write_curriculum

logger = logging.getLogger(__name__)

HISTORY_SIZE = 100
STATE_VERSION = 1


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class Decision:
    """What one recorded eval did to the curriculum."""

    skill: str
    level_tested: int
    accuracy: float
    level_before: int
    level_after: int
    counted: bool  # the eval was of the current level
    evals_at_level: int  # counted evals at the level before this decision (including this one)
    window_mean: float | None  # mean of the last `window` counted evals, when there are that many
    reason: str

    @property
    def advanced(self) -> bool:
        return self.level_after > self.level_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "advanced": self.advanced}


class Curriculum:
    """Levels and eval history per skill, persisted in one JSON file."""

    def __init__(self, path: str | Path, threshold: float = 0.8, window: int = 3,
                 max_levels: dict[str, int] | None = None, hold_while_forgotten: bool = True):
        if not 0 <= threshold <= 1 or window < 1:
            raise ValueError("threshold must be in [0, 1] and window >= 1")
        self.path = Path(path)
        self.threshold = threshold
        self.window = window
        self.max_levels = dict(max_levels or {})
        self.hold_while_forgotten = hold_while_forgotten

    @classmethod
    def from_config(cls, cfg, max_levels: dict[str, int] | None = None) -> "Curriculum":
        dm = cfg.data_manager
        return cls(cfg.layout.curriculum, dm.threshold, dm.window, max_levels, dm.hold_while_forgotten)

    # -- state ------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(f".{self.path.name}.lock"), "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def load(self) -> dict[str, Any]:
        """The state as the rule edits it: a dict checked against CurriculumState (core/state/curriculum.py) on every
        load and save. A torn or invalid file is not trusted: every skill starts at level 1 again (logged)."""
        try:
            record = read_curriculum(self.path)
        except StateError as exc:
            logger.warning("%s: starting the curriculum afresh", exc)
            record = None
        state = record.to_json() if record else {"version": STATE_VERSION, "seq": 0, "skills": {}}
        state.setdefault("seq", 0)
        state.setdefault("skills", {})
        return state

    def _save(self, state: dict[str, Any]) -> None:
        state["threshold"], state["window"], state["updated_at"] = self.threshold, self.window, _now()
        write_curriculum(self.path, parse_record(CurriculumState, state, str(self.path)))

    @staticmethod
    def _skill(state: dict[str, Any], skill: str) -> dict[str, Any]:
        entry = state["skills"].setdefault(skill, {})
        entry.setdefault("level", 1)
        entry.setdefault("entered_seq", 0)
        entry.setdefault("entered_at", _now())
        entry.setdefault("history", [])
        entry.setdefault("promotions", [])
        return entry

    # -- queries ----------------------------------------------------------
    def level(self, skill: str) -> int:
        """The level to train and evaluate `skill` at (mastered + 1)."""
        entry = self.load()["skills"].get(skill) or {}
        return int(entry.get("level", 1))

    def levels(self, skills: list[str]) -> dict[str, int]:
        state = self.load()
        return {s: int((state["skills"].get(s) or {}).get("level", 1)) for s in skills}

    def history(self, skill: str) -> list[dict[str, Any]]:
        return list((self.load()["skills"].get(skill) or {}).get("history", []))

    # -- updates ----------------------------------------------------------
    def record_eval(self, skill: str, level: int, accuracy: float, step: int | None = None,
                    checkpoint: str | None = None, n: int | None = None) -> Decision:
        """Add one eval of `skill` at the tested `level`, then apply the progression rule once."""
        if not isinstance(level, int) or isinstance(level, bool) or level < 1:
            raise ValueError(f"level must be a positive integer, got {level!r}")
        accuracy = float(accuracy)
        if not 0.0 <= accuracy <= 1.0:
            raise ValueError(f"accuracy must be in [0, 1], got {accuracy}")
        with self._locked():
            state = self.load()
            entry = self._skill(state, skill)
            state["seq"] = int(state.get("seq", 0)) + 1
            record = {"seq": state["seq"], "level": level, "accuracy": accuracy, "step": step,
                      "checkpoint": checkpoint, "n": n, "at": _now()}
            entry["history"] = (entry["history"] + [record])[-HISTORY_SIZE:]
            decision = self._decide(skill, entry, record)
            self._save(state)
        log = logger.info if decision.advanced else logger.debug
        log("curriculum %s: eval L%d acc=%.3f -> %s", skill, level, accuracy, decision.reason)
        return decision

    def _decide(self, skill: str, entry: dict[str, Any], record: dict[str, Any]) -> Decision:
        current = int(entry["level"])
        base = dict(skill=skill, level_tested=record["level"], accuracy=record["accuracy"], level_before=current)
        if record["level"] != current:
            return Decision(**base, level_after=current, counted=False, evals_at_level=0, window_mean=None,
                            reason=f"eval of level {record['level']} does not count toward level {current}")
        counted = [h for h in entry["history"] if h["level"] == current and h["seq"] > entry["entered_seq"]]
        if len(counted) < self.window:
            return Decision(**base, level_after=current, counted=True, evals_at_level=len(counted), window_mean=None,
                            reason=f"{len(counted)}/{self.window} evals at level {current}")
        recent = counted[-self.window:]
        mean = sum(h["accuracy"] for h in recent) / len(recent)
        top = self.max_levels.get(skill)
        if mean + 1e-12 < self.threshold:
            reason = f"mean {mean:.3f} over last {self.window} evals at level {current} < {self.threshold}"
            return Decision(**base, level_after=current, counted=True, evals_at_level=len(counted), window_mean=mean, reason=reason)
        if top is not None and current >= top:
            return Decision(**base, level_after=current, counted=True, evals_at_level=len(counted), window_mean=mean,
                            reason=f"top level {top} mastered (mean {mean:.3f})")
        forgotten = self._forgotten(entry) if self.hold_while_forgotten else {}
        if forgotten:
            below = ", ".join(f"L{lv} {100 * (self.threshold - gap):.0f} %" for lv, gap in sorted(forgotten.items()))
            return Decision(**base, level_after=current, counted=True, evals_at_level=len(counted), window_mean=mean,
                            reason=f"level {current} mastered (mean {mean:.3f}) but held there: lower level(s) below "
                                   f"the bar of {self.threshold} on their ladder rungs ({below}) are rehearsed first")
        entry["level"] = current + 1
        entry["entered_seq"] = record["seq"]
        entry["entered_at"] = record["at"]
        entry["promotions"].append({"from": current, "to": current + 1, "at": record["at"], "step": record["step"],
                                    "mean": mean, "evals": [h["seq"] for h in recent]})
        return Decision(**base, level_after=current + 1, counted=True, evals_at_level=len(counted), window_mean=mean,
                        reason=f"level {current} mastered: mean {mean:.3f} over last {self.window} evals >= {self.threshold}")

    def record_ladder(self, skill: str, results: dict[int, float], step: int | None = None,
                      checkpoint: str | None = None) -> dict[int, float]:
        """Keep the newest accuracy of `skill` on each ladder rung below its current level (its fixed items);
        returns the rehearsal deficits, {level: bar - accuracy} for the levels that fell below the bar."""
        with self._locked():
            state = self.load()
            entry = self._skill(state, skill)
            ladder = entry.setdefault("ladder", {})
            for level, accuracy in results.items():
                if not isinstance(level, int) or level < 1 or not 0.0 <= float(accuracy) <= 1.0:
                    raise ValueError(f"ladder result {level!r}: {accuracy!r} is not a level >= 1 with an accuracy in [0, 1]")
                old = ladder.get(str(level)) or {}
                recent = (list(old.get("recent") or ([old["accuracy"]] if old.get("accuracy") is not None else []))
                          + [float(accuracy)])[-self.window:]
                ladder[str(level)] = {"accuracy": float(accuracy), "step": step, "checkpoint": checkpoint, "at": _now(),
                                      "recent": recent}
            self._save(state)
        return self.forgetting(skill)

    def forgetting(self, skill: str) -> dict[int, float]:
        """{level: threshold - accuracy} for each level below the current one whose ladder accuracy (the mean of its
        last `window` readings) is under the bar: forgotten (the hold, the growing rehearsal share)."""
        return self._forgotten(self.load()["skills"].get(skill) or {})

    def shortfall(self, skill: str, target: float) -> dict[int, float]:
        """{level: target - accuracy} for each level below the current one whose ladder accuracy (mean of its last
        `window` readings) is under `target` (the data manager weights rehearsal by this, with a target above the bar)."""
        return self._short_of(self.load()["skills"].get(skill) or {}, target)

    @staticmethod
    def rung_accuracy(rec: dict[str, Any]) -> float | None:
        """A rung's accuracy for forgetting: the mean of its recent readings (a record from before they were kept:
        its one accuracy)."""
        recent = rec.get("recent") or ([rec["accuracy"]] if rec.get("accuracy") is not None else [])
        return sum(recent) / len(recent) if recent else None

    def _forgotten(self, entry: dict[str, Any]) -> dict[int, float]:
        return self._short_of(entry, self.threshold)

    def _short_of(self, entry: dict[str, Any], target: float) -> dict[int, float]:
        current = int(entry.get("level", 1))
        out = {}
        for key, rec in (entry.get("ladder") or {}).items():
            level, accuracy = int(key), self.rung_accuracy(rec)
            if level < current and accuracy is not None and accuracy + 1e-12 < target:
                out[level] = round(target - accuracy, 6)
        return out

    def set_level(self, skill: str, level: int, reason: str = "operator") -> None:
        """Operator override: put `skill` at `level`; the eval count restarts there."""
        if level < 1:
            raise ValueError("level must be >= 1")
        with self._locked():
            state = self.load()
            entry = self._skill(state, skill)
            entry["promotions"].append({"from": entry["level"], "to": level, "at": _now(), "step": None, "reason": reason})
            entry["level"], entry["entered_seq"], entry["entered_at"] = level, int(state.get("seq", 0)), _now()
            self._save(state)
        logger.info("curriculum %s: level set to %d (%s)", skill, level, reason)

    def status(self, skills: list[str] | None = None) -> dict[str, Any]:
        """Per skill: level, mastered, counted evals at the level, their recent mean, last eval, promotions."""
        state = self.load()
        names = list(dict.fromkeys((skills or []) + list(state["skills"])))
        out = {}
        for name in names:
            entry = state["skills"].get(name) or {"level": 1, "entered_seq": 0, "history": [], "promotions": []}
            level = int(entry.get("level", 1))
            counted = [h for h in entry.get("history", []) if h["level"] == level and h["seq"] > entry.get("entered_seq", 0)]
            recent = counted[-self.window:]
            out[name] = {
                "level": level, "mastered": level - 1,
                "evals_at_level": len(counted),
                "recent_mean": sum(h["accuracy"] for h in recent) / len(recent) if recent else None,
                "last_eval": (entry.get("history") or [None])[-1],
                "promotions": entry.get("promotions", []),
                "history_size": len(entry.get("history", [])),
                "ladder": {int(k): v.get("accuracy") for k, v in (entry.get("ladder") or {}).items()},
                "ladder_mean": {int(k): self.rung_accuracy(v) for k, v in (entry.get("ladder") or {}).items()},
                "forgetting": self._forgotten(entry),
            }
        return {"threshold": self.threshold, "window": self.window, "skills": out, "updated_at": state.get("updated_at")}
