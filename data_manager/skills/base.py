"""The Skill contract: levels, seeded generation and an exact-match scorer.

A skill turns `(level, count, seed)` into training samples — each a
`user_prompt`, the one correct `assistant_response` and `metadata` that names
the skill and the level it was generated for — and scores a model's answer
against a sample. Generation is a pure function of its arguments: sample `i`
of a request draws from its own RNG seeded by (skill, level, seed, i), so
`generate(L, 10, s)[:5] == generate(L, 5, s)` and nothing depends on process
state. See data_manager/SKILL_API.md for the HTTP form of the same contract.

Run as: imported by data_manager.skills (no entry point).
"""
from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import asdict, dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

_WS = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Whitespace-insensitive form: runs of whitespace collapse to one space, ends stripped."""
    return _WS.sub(" ", str(text)).strip()


def parse_json_answer(text: str) -> Any:
    """The single JSON value in `text` (surrounding whitespace allowed), or raise ValueError."""
    stripped = str(text).strip()
    value, end = json.JSONDecoder().raw_decode(stripped)
    if stripped[end:].strip():
        raise ValueError("trailing text after the JSON value")
    return value


def generic_score(expected: str, answer: str) -> bool:
    """Exact match for any skill without its own scorer: JSON compared as parsed values, text whitespace-normalised."""
    try:
        return parse_json_answer(expected) == parse_json_answer(answer)
    except ValueError:
        return normalize_text(expected) == normalize_text(answer)


@dataclass
class Sample:
    user_prompt: str
    assistant_response: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ScoreResult:
    correct: bool
    score: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LevelInfo:
    level: int
    description: str
    problem_space: int | None = None  # distinct prompts this level can produce (None = effectively unbounded)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Skill:
    """Base class: subclasses set `name`, `description`, `max_level` and implement `_make` and `describe_level`."""

    name: str = "skill"
    description: str = ""
    max_level: int = 1
    version: str = "1"

    def levels(self) -> list[int]:
        return list(range(1, self.max_level + 1))

    def level_info(self) -> list[LevelInfo]:
        return [self.describe_level(level) for level in self.levels()]

    def describe_level(self, level: int) -> LevelInfo:  # pragma: no cover - abstract
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "version": self.version,
                "min_level": 1, "max_level": self.max_level, "options": self.options(),
                "scorer": "exact match (POST /score)"}

    def options(self) -> dict[str, Any]:
        return {}

    def check_level(self, level: int) -> None:
        if not isinstance(level, int) or isinstance(level, bool) or not 1 <= level <= self.max_level:
            raise ValueError(f"{self.name}: level must be an integer in 1..{self.max_level}, got {level!r}")

    def rng(self, level: int, seed: int, index: int) -> random.Random:
        # A str seed is hashed with sha512 by random.Random: stable across runs and platforms.
        return random.Random(f"{self.name}:{level}:{seed}:{index}")

    def generate(self, level: int, count: int, seed: int) -> list[Sample]:
        self.check_level(level)
        if count < 0:
            raise ValueError("count must be >= 0")
        samples = []
        for index in range(count):
            sample = self._make(level, self.rng(level, seed, index))
            sample.metadata = {"skill": self.name, "level": level, "seed": seed, "index": index, **sample.metadata}
            samples.append(sample)
        return samples

    def _make(self, level: int, rng: random.Random) -> Sample:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, expected: str, answer: str) -> ScoreResult:
        """Exact match after whitespace normalisation; 1.0 or 0.0."""
        ok = normalize_text(expected) == normalize_text(answer)
        return ScoreResult(ok, 1.0 if ok else 0.0)

    def score_sample(self, sample: dict[str, Any] | Sample, answer: str) -> ScoreResult:
        expected = sample.assistant_response if isinstance(sample, Sample) else sample["assistant_response"]
        return self.score(expected, answer)
