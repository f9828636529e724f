"""SYLLO word puzzle skill: rebuild words from shuffled syllable tiles.

The prompt numbers one clue per hidden word (syllable count and first
letter) and lists a bank of tiles: the words' syllables, shuffled, plus
red-herring tiles. The answer is the original system's JSON:
`{"solutions": {"1": {"word": ..., "syllables": [...]}}}`. Levels add
words (1 -> 10), red herrings (0 -> 10) and rarer, longer vocabulary:

    words(L) = min(10, (L + 1) // 2)    distractors(L) = min(10, L // 2)
    vocabulary: common 2-syllable words up to level 4, + 3-syllable words from 5, + rare words from 9

Level 1 is one common word, two tiles, no red herring: 60 distinct prompts
whose words are single tokens of the tiny model's tokenizer, so the model
learns the JSON frame and the 30 words within minutes.

Example (level 1):
    user  "Syllable puzzle: 1 word.\nTiles: swer | an\nClue 1: 2 syllables, starts with a"
    assistant '{"solutions": {"1": {"word": "answer", "syllables": ["an", "swer"]}}}'

Run as: cadence skills serve syllo [--port 8091]
"""
from __future__ import annotations

import json
import logging
import math
import random

from data_manager.skills.base import LevelInfo, Sample, ScoreResult, Skill, parse_json_answer

logger = logging.getLogger(__name__)

COMMON = [
    "peo-ple", "a-bout", "oth-er", "o-ver", "on-ly", "af-ter", "e-ven", "an-y", "an-swer", "ques-tion",
    "num-ber", "re-sult", "puz-zle", "mam-mal", "rep-tile", "hel-lo", "sec-ond", "fi-nal", "out-put", "in-put",
    "prod-uct", "car-ry", "dig-it", "ze-ro", "sev-en", "in-to", "al-so", "be-cause", "there-fore", "sub-tract",
]
MEDIUM = [
    "bi-na-ry", "an-i-mal", "syl-la-ble", "ev-er-y", "mul-ti-ply", "dif-fer-ence", "ti-ger", "gar-den",
    "win-dow", "yel-low", "ap-ple", "hap-py", "riv-er", "sil-ver", "pen-cil", "bas-ket", "can-dle", "doc-tor",
    "for-est", "ham-mer", "jack-et", "kit-ten", "lem-on", "mon-key", "nap-kin", "or-ange", "pep-per",
    "rab-bit", "sis-ter", "ta-ble", "tun-nel", "vel-vet", "wag-on", "win-ter", "ba-na-na", "com-pu-ter",
    "el-e-phant", "fam-i-ly", "hos-pi-tal", "im-por-tant", "news-pa-per", "po-ta-to", "to-ma-to",
    "um-brel-la", "vol-ca-no", "di-no-saur",
]
RARE = [
    "lab-y-rinth", "e-phem-er-al", "quix-ot-ic", "ser-en-dip-i-ty", "u-biq-ui-tous", "mel-an-chol-y",
    "ca-coph-o-ny", "mer-cu-ri-al", "ob-fus-cate", "zeph-yr", "hal-cy-on", "in-ef-fa-ble", "lu-mi-nous",
    "neb-u-la", "par-a-dox", "quin-tes-sence", "so-no-rous", "ver-nac-u-lar", "whim-si-cal", "al-che-my",
]
MAX_LEVEL = 20


def words_for(level: int) -> int:
    return min(10, (level + 1) // 2)


def distractors_for(level: int) -> int:
    return min(10, level // 2)


def vocabulary(level: int) -> list[list[str]]:
    words = COMMON + (MEDIUM if level >= 5 else []) + (RARE if level >= 9 else [])
    return [w.split("-") for w in words]


class SylloSkill(Skill):
    name = "syllo"
    description = "SYLLO: rebuild words from shuffled syllable tiles; JSON answer. Levels add words, red herrings, rarer vocabulary."
    max_level = MAX_LEVEL

    def describe_level(self, level: int) -> LevelInfo:
        self.check_level(level)
        n, d = words_for(level), distractors_for(level)
        vocab = vocabulary(level)
        space = None
        if n == 1 and d == 0:  # every word in every tile order
            space = sum(math.factorial(len(w)) for w in vocab)
        return LevelInfo(level, f"{n} word(s), {d} red herring tile(s), {len(vocab)}-word vocabulary", space)

    def _make(self, level: int, rng: random.Random) -> Sample:
        n, d = words_for(level), distractors_for(level)
        vocab = vocabulary(level)
        # Clues (syllable count, first letter) are kept distinct so the clue -> word assignment is unique.
        words, keys = [], set()
        for w in rng.sample(vocab, len(vocab)):
            if (len(w), w[0][0]) not in keys:
                keys.add((len(w), w[0][0]))
                words.append(w)
                if len(words) == n:
                    break
        chosen = {"".join(w) for w in words}
        spare = [syl for w in vocab if "".join(w) not in chosen for syl in w]
        herrings = rng.sample(spare, min(d, len(spare)))
        tiles = [syl for w in words for syl in w] + herrings
        rng.shuffle(tiles)
        clues = "\n".join(f"Clue {i}: {len(w)} syllables, starts with {w[0][0]}" for i, w in enumerate(words, 1))
        prompt = f"Syllable puzzle: {n} word{'s' if n > 1 else ''}.\nTiles: {' | '.join(tiles)}\n{clues}"
        solutions = {str(i): {"word": "".join(w), "syllables": list(w)} for i, w in enumerate(words, 1)}
        return Sample(
            user_prompt=prompt,
            assistant_response=json.dumps({"solutions": solutions}),
            metadata={"words": n, "red_herrings": len(herrings), "answer_words": ["".join(w) for w in words]},
        )

    def score(self, expected: str, answer: str) -> ScoreResult:
        """Correct when the answer parses as JSON equal to the expected solutions (key order and spacing free)."""
        try:
            got = parse_json_answer(answer)
        except ValueError:
            return ScoreResult(False, 0.0, "answer is not a single JSON value")
        want = parse_json_answer(expected)
        if got == want:
            return ScoreResult(True, 1.0)
        want_sol = want.get("solutions", {})
        got_sol = got.get("solutions", {}) if isinstance(got, dict) else {}
        right = sum(1 for k, v in want_sol.items() if isinstance(got_sol, dict) and got_sol.get(k) == v)
        return ScoreResult(False, 0.0, f"{right}/{len(want_sol)} words right")
