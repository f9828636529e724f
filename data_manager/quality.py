"""Quality gate for a generated batch: well-formed, level-true, diverse, within length.

Run as: imported by data_manager.manager (no entry point).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

CHAT_OVERHEAD_TOKENS = 16  # ChatML markers and role names around one user and one assistant turn


class QualityError(ValueError):
    """A generated batch that must not be trained on; `problems` lists every reason."""

    def __init__(self, skill: str, level: int, problems: list[str]):
        self.problems = problems
        super().__init__(f"{skill} level {level}: " + "; ".join(problems))


@dataclass
class QualityReport:
    ok: bool
    problems: list[str]
    samples: int
    distinct_prompts: int
    required_distinct: int
    max_tokens: int


def expected_distinct(n: int, problem_space: int | None) -> float:
    """Distinct prompts expected in n uniform draws from `problem_space` of them (n when the space is unknown).

    The diversity gate asks for a share of this, not of n: 30 draws from binary level 1's 16 problems give
    only ~13.7 distinct prompts on average, and that is a healthy generator.
    """
    if not problem_space:
        return float(n)
    return problem_space * (1.0 - (1.0 - 1.0 / problem_space) ** n)


def check_quality(samples: list[dict[str, Any]], skill: str, level: int, *, count_tokens: Callable[[str], int],
                  max_tokens: int, min_distinct_ratio: float, problem_space: int | None = None) -> QualityReport:
    """Every problem of a generated batch at once: well-formed, tagged skill/level, diverse, within length."""
    problems: list[str] = []
    if not samples:
        return QualityReport(False, ["empty batch"], 0, 0, 0, 0)
    bad_shape = [i for i, s in enumerate(samples)
                 if not (isinstance(s.get("user_prompt"), str) and s["user_prompt"].strip()
                         and isinstance(s.get("assistant_response"), str) and s["assistant_response"].strip())]
    if bad_shape:
        problems.append(f"{len(bad_shape)} sample(s) with an empty prompt or answer (first: #{bad_shape[0]})")
    wrong_tag = [i for i, s in enumerate(samples)
                 if (s.get("metadata") or {}).get("level") != level or (s.get("metadata") or {}).get("skill") != skill]
    if wrong_tag:
        first = samples[wrong_tag[0]].get("metadata") or {}
        problems.append(f"{len(wrong_tag)} sample(s) not tagged skill={skill} level={level} "
                        f"(first: #{wrong_tag[0]} has skill={first.get('skill')!r} level={first.get('level')!r})")
    distinct = len({s.get("user_prompt") for s in samples})
    need = math.ceil(min_distinct_ratio * expected_distinct(len(samples), problem_space))
    if distinct < need:
        problems.append(f"only {distinct} distinct prompts in {len(samples)} samples (need {need})")
    longest, too_long = 0, 0
    for s in samples:
        if bad_shape and not isinstance(s.get("user_prompt"), str):
            continue
        n = count_tokens(s["user_prompt"]) + count_tokens(s["assistant_response"]) + CHAT_OVERHEAD_TOKENS
        longest = max(longest, n)
        too_long += n > max_tokens
    if too_long:
        problems.append(f"{too_long} sample(s) longer than max_length {max_tokens} tokens (longest {longest})")
    return QualityReport(not problems, problems, len(samples), distinct, need, longest)


def tokenizer_counter(model_dir: str | Path) -> Callable[[str], int]:
    """Token counter of the model's tokenizer; UTF-8 byte count (an upper bound for byte-level BPE) if it cannot load."""
    if not (Path(model_dir) / "tokenizer_config.json").exists():
        logger.warning("no tokenizer in %s; lengths are checked in UTF-8 bytes", model_dir)
        return lambda text: len(text.encode("utf-8"))
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(model_dir))
        return lambda text: len(tok(text, add_special_tokens=False)["input_ids"])
    except Exception as exc:  # missing model folder, transformers not installed: degrade, don't stop
        logger.warning("tokenizer of %s unavailable (%s); lengths are checked in UTF-8 bytes", model_dir, exc)
        return lambda text: len(text.encode("utf-8"))
