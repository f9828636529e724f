"""Client for Skill API servers, built-in and external alike (data_manager/SKILL_API.md).

`SkillClient` talks HTTP (httpx) with a timeout per request and retries with
backoff on connection errors, timeouts and 5xx answers; 4xx answers are the
caller's mistake and raise at once. Every response is checked for shape, and
an error never passes as data. Servers without `POST /score` (the original
system's) are scored in process with the skill's own scorer when it is
built in, else with a generic exact match (JSON compared parsed, text with
whitespace normalised). `LocalSkillClient` offers the same methods on an
in-process Skill, for tests and as a fallback when a built-in server is down.

Run as: imported by data_manager.manager; `cadence skills probe URL [LEVEL]` probes a server.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from data_manager.skills import BUILTIN_SKILLS, Skill, generic_score, get_skill

logger = logging.getLogger(__name__)


class SkillAPIError(RuntimeError):
    """A skill server that cannot be reached, or answered with an error or a malformed body."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # HTTP status when the server answered with an error


@dataclass
class ScoreReport:
    results: list[dict[str, Any]]  # per item: {"correct": bool, "score": float, ...}
    correct: int
    total: int
    scorer: str  # "server", "builtin" or "generic"

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass
class LevelsReport:
    levels: list[int]
    problem_space: dict[int, int | None] = field(default_factory=dict)


def _check_samples(body: Any, skill: str | None, level: int) -> list[dict[str, Any]]:
    samples = body.get("samples") if isinstance(body, dict) else body
    if not isinstance(samples, list):
        raise SkillAPIError(f"{skill or 'skill'}: /generate returned no 'samples' list")
    out = []
    for i, s in enumerate(samples):
        if not isinstance(s, dict) or not isinstance(s.get("user_prompt"), str) or not isinstance(s.get("assistant_response"), str):
            raise SkillAPIError(f"{skill or 'skill'}: sample {i} lacks string user_prompt/assistant_response")
        meta = s.get("metadata") if isinstance(s.get("metadata"), dict) else {}
        # The original servers may omit these; the level we asked for is what the sample is tagged with
        # unless the server says otherwise (the manager rejects a batch whose tags disagree).
        meta.setdefault("level", level)
        if skill:
            meta.setdefault("skill", skill)
        out.append({"user_prompt": s["user_prompt"], "assistant_response": s["assistant_response"], "metadata": meta})
    return out


def local_score(skill_name: str | None, samples: list[dict[str, Any]], answers: list[str]) -> ScoreReport:
    """Score in process: the built-in skill's scorer when `skill_name` is built in, else generic exact match."""
    if len(samples) != len(answers):
        raise ValueError(f"{len(samples)} samples but {len(answers)} answers")
    if skill_name in BUILTIN_SKILLS:
        skill = get_skill(skill_name)
        results = [skill.score(s["assistant_response"], a).to_dict() for s, a in zip(samples, answers)]
        scorer = "builtin"
    else:
        results = []
        for s, a in zip(samples, answers):
            ok = generic_score(s["assistant_response"], a)
            results.append({"correct": ok, "score": 1.0 if ok else 0.0, "detail": ""})
        scorer = "generic"
    correct = sum(1 for r in results if r["correct"])
    return ScoreReport(results, correct, len(results), scorer)


class SkillClient:
    """HTTP client for one skill server."""

    def __init__(self, base_url: str, name: str | None = None, timeout: float = 10.0, retries: int = 2,
                 backoff: float = 0.5, client: httpx.Client | None = None):
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self._own = client is None
        self._http = client or httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> "SkillClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _request(self, method: str, path: str, json: Any = None, retries: int | None = None) -> Any:
        retries = self.retries if retries is None else retries
        last: Exception | None = None
        for attempt in range(retries + 1):
            try:
                resp = self._http.request(method, path, json=json)
            except httpx.HTTPError as exc:  # connect error, timeout, protocol error
                last = exc
            else:
                if resp.status_code < 400:
                    try:
                        return resp.json()
                    except ValueError:
                        raise SkillAPIError(f"{self.base_url}{path}: response is not JSON") from None
                last = SkillAPIError(f"{self.base_url}{path}: HTTP {resp.status_code}: {resp.text[:300]}", resp.status_code)
                if resp.status_code < 500:
                    raise last
            if attempt < retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise SkillAPIError(f"{self.base_url}{path}: failed after {retries + 1} attempt(s): {last}", getattr(last, "status", None))

    def health(self) -> bool:
        """True when GET /health answers {"status": "ok"} (one attempt, no retries); never raises."""
        try:
            body = self._request("GET", "/health", retries=0)
        except SkillAPIError as exc:
            logger.debug("health check failed: %s", exc)
            return False
        return isinstance(body, dict) and body.get("status") == "ok"

    def info(self) -> dict[str, Any]:
        body = self._request("GET", "/info")
        if not isinstance(body, dict):
            raise SkillAPIError(f"{self.base_url}/info: expected an object")
        return body

    def levels(self) -> LevelsReport:
        body = self._request("GET", "/levels")
        raw = body.get("levels") if isinstance(body, dict) else None
        if not isinstance(raw, list) or not raw:
            raise SkillAPIError(f"{self.base_url}/levels: expected a non-empty 'levels' list")
        levels = sorted(int(x["level"] if isinstance(x, dict) else x) for x in raw)
        space = {int(d["level"]): d.get("problem_space") for d in body.get("details", []) if isinstance(d, dict) and "level" in d}
        return LevelsReport(levels, space)

    def generate(self, level: int, count: int, seed: int | None = None) -> list[dict[str, Any]]:
        payload: dict[str, Any] = {"level": level, "count": count}
        if seed is not None:
            payload["seed"] = seed
        return _check_samples(self._request("POST", "/generate", payload), self.name, level)

    def score(self, samples: list[dict[str, Any]], answers: list[str]) -> ScoreReport:
        """POST /score; a server without it (404/405) is scored locally."""
        if len(samples) != len(answers):
            raise ValueError(f"{len(samples)} samples but {len(answers)} answers")
        payload = {"samples": [{"assistant_response": s["assistant_response"], "user_prompt": s.get("user_prompt"),
                                "metadata": s.get("metadata", {})} for s in samples], "answers": list(answers)}
        try:
            body = self._request("POST", "/score", payload)
        except SkillAPIError as exc:
            if exc.status in (404, 405):
                logger.info("%s has no /score; scoring locally", self.base_url)
                return local_score(self.name, samples, answers)
            raise
        results = body.get("results") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(samples):
            raise SkillAPIError(f"{self.base_url}/score: expected {len(samples)} results")
        results = [{"correct": bool(r.get("correct")), "score": float(r.get("score", 1.0 if r.get("correct") else 0.0)),
                    "detail": r.get("detail", "")} for r in results]
        return ScoreReport(results, sum(r["correct"] for r in results), len(results), "server")


class LocalSkillClient:
    """The SkillClient interface on an in-process Skill (no HTTP)."""

    def __init__(self, skill: Skill):
        self.skill = skill
        self.name = skill.name
        self.base_url = f"local:{skill.name}"

    def close(self) -> None:
        pass

    def health(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        return self.skill.info()

    def levels(self) -> LevelsReport:
        return LevelsReport(self.skill.levels(), {i.level: i.problem_space for i in self.skill.level_info()})

    def generate(self, level: int, count: int, seed: int | None = None) -> list[dict[str, Any]]:
        try:
            samples = self.skill.generate(level, count, 0 if seed is None else seed)
        except ValueError as exc:
            raise SkillAPIError(str(exc)) from None
        return [s.to_dict() for s in samples]

    def score(self, samples: list[dict[str, Any]], answers: list[str]) -> ScoreReport:
        if len(samples) != len(answers):
            raise ValueError(f"{len(samples)} samples but {len(answers)} answers")
        results = [self.skill.score(s["assistant_response"], a).to_dict() for s, a in zip(samples, answers)]
        return ScoreReport(results, sum(r["correct"] for r in results), len(results), "builtin")
