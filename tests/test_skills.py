"""Built-in skills: deterministic by seed, correct at every level, exact scorers, short learnable level 1."""
from __future__ import annotations

import json
import re

import pytest

from data_manager.skills import BinarySkill, SylloSkill, get_skill
from data_manager.skills.base import generic_score

CIRCLED_TO_PLAIN = str.maketrans({"⓪": "0", "①": "1"})


def all_skills():
    return [BinarySkill(), BinarySkill(notation="circled"), SylloSkill()]


@pytest.mark.parametrize("skill", all_skills(), ids=lambda s: f"{s.name}-{s.options().get('notation', '')}")
def test_deterministic_by_seed_and_prefix_stable(skill):
    for level in (1, 2, skill.max_level):
        a = [s.to_dict() for s in skill.generate(level, 20, seed=123)]
        b = [s.to_dict() for s in skill.generate(level, 20, seed=123)]
        c = [s.to_dict() for s in skill.generate(level, 20, seed=124)]
        assert a == b
        assert a != c
        assert [s.to_dict() for s in skill.generate(level, 7, seed=123)] == a[:7]


@pytest.mark.parametrize("skill", all_skills(), ids=lambda s: f"{s.name}-{s.options().get('notation', '')}")
def test_scorer_accepts_every_generated_answer_at_every_level(skill):
    for level in skill.levels():
        samples = skill.generate(level, 12, seed=level)
        for s in samples:
            assert s.metadata["skill"] == skill.name and s.metadata["level"] == level
            assert skill.score(s.assistant_response, s.assistant_response).correct
            assert skill.score(s.assistant_response, "  " + s.assistant_response + "\n").score == 1.0
            # the generic scorer (used for servers without /score) agrees
            assert generic_score(s.assistant_response, s.assistant_response)


@pytest.mark.parametrize("skill", all_skills(), ids=lambda s: f"{s.name}-{s.options().get('notation', '')}")
def test_wrong_answers_score_zero(skill):
    for level in (1, 2, 5):
        samples = skill.generate(level, 30, seed=9)
        for s, other in zip(samples, samples[1:] + samples[:1]):
            if other.assistant_response != s.assistant_response:
                r = skill.score(s.assistant_response, other.assistant_response)
                assert (r.correct, r.score) == (False, 0.0)
            for bad in ("", "I don't know", s.assistant_response + " extra"):
                assert skill.score(s.assistant_response, bad).score == 0.0


def test_binary_arithmetic_is_right_and_levels_follow_bit_width():
    skill = BinarySkill()
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for level in skill.levels():
        seen_ops = set()
        for s in skill.generate(level, 40, seed=5):
            m = re.fullmatch(r"Binary: ([01]+) ([-+*]) ([01]+) = \?", s.user_prompt)
            assert m, s.user_prompt
            a, op, b = int(m[1], 2), m[2], int(m[3], 2)
            seen_ops.add(op)
            assert max(a, b) < 2 ** (level + 1) == 2 ** s.metadata["bits"]
            assert int(s.assistant_response, 2) == ops[op](a, b) >= 0
            assert s.assistant_response == format(ops[op](a, b), "b")
        assert seen_ops == ({"+"} if level == 1 else {"+", "-"} if level == 2 else {"+", "-", "*"})
    assert skill.describe_level(1).problem_space == 16
    assert skill.max_level == 31  # 32-bit operands, as the original system's 2 -> 32 bit range


def test_binary_circled_notation_matches_plain():
    plain, circled = BinarySkill(), BinarySkill(notation="circled")
    for p, c in zip(plain.generate(3, 20, seed=1), circled.generate(3, 20, seed=1)):
        assert set(c.assistant_response) <= {"⓪", "①"}
        assert c.user_prompt.translate(CIRCLED_TO_PLAIN) == p.user_prompt
        assert c.assistant_response.translate(CIRCLED_TO_PLAIN) == p.assistant_response
    with pytest.raises(ValueError):
        BinarySkill(notation="roman")


def test_syllo_puzzles_are_consistent():
    skill = SylloSkill()
    for level in skill.levels():
        for s in skill.generate(level, 15, seed=2):
            answer = json.loads(s.assistant_response)
            sol = answer["solutions"]
            assert list(sol) == [str(i) for i in range(1, len(sol) + 1)]
            assert len(sol) == s.metadata["words"] == min(10, (level + 1) // 2)
            tiles = s.user_prompt.split("\nTiles: ")[1].split("\n")[0].split(" | ")
            used = [syl for w in sol.values() for syl in w["syllables"]]
            pool = list(tiles)
            for syl in used:  # every syllable of the answer is a tile (multiset)
                pool.remove(syl)
            assert len(pool) == s.metadata["red_herrings"] == min(10, level // 2)
            for i, w in sol.items():
                assert w["word"] == "".join(w["syllables"])
                assert f"Clue {i}: {len(w['syllables'])} syllables, starts with {w['word'][0]}" in s.user_prompt
            clue_keys = re.findall(r"Clue \d+: (.*)", s.user_prompt)
            assert len(set(clue_keys)) == len(clue_keys)  # unambiguous clue -> word assignment


def test_syllo_scorer_parses_json():
    skill = SylloSkill()
    s = skill.generate(3, 1, seed=0)[0]
    expected = json.loads(s.assistant_response)
    reordered = json.dumps({"solutions": dict(reversed(list(expected["solutions"].items())))}, indent=1)
    assert skill.score(s.assistant_response, reordered).correct
    assert skill.score(s.assistant_response, json.dumps(expected, separators=(",", ":"))).correct
    broken = json.loads(s.assistant_response)
    broken["solutions"]["1"]["word"] += "x"
    r = skill.score(s.assistant_response, json.dumps(broken))
    assert (r.correct, r.score) == (False, 0.0) and "1/2" in r.detail
    assert skill.score(s.assistant_response, s.assistant_response[:-1]).score == 0.0
    assert skill.score(s.assistant_response, s.assistant_response + " {}").score == 0.0


def test_levels_are_validated():
    for name in ("binary", "syllo"):
        skill = get_skill(name)
        for bad in (0, skill.max_level + 1, "1", True):
            with pytest.raises(ValueError):
                skill.generate(bad, 1, seed=0)
    with pytest.raises(KeyError):
        get_skill("chess")


def test_level_one_is_short_and_small_for_the_tiny_tokenizer():
    """Level 1 prompts <= 40 tokens, answers short, answer space small (what a 4M model learns in minutes)."""
    from scripts.make_tiny_model import PRESETS, build_tokenizer

    tok = build_tokenizer(PRESETS["tiny"]["vocab_size"])
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    for name, max_answer in (("binary", 3), ("syllo", 30)):
        skill = get_skill(name)
        samples = skill.generate(1, 200, seed=0)
        assert max(n(s.user_prompt) for s in samples) <= 40
        assert max(n(s.assistant_response) for s in samples) <= max_answer
        assert len({s.assistant_response for s in samples}) <= 30
        assert skill.describe_level(1).problem_space <= 60
