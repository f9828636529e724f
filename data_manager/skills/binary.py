"""Binary arithmetic skill: add, subtract and multiply, levels by bit width.

Level L uses operands of L+1 bits (level 1 = 2 bits, level 31 = 32 bits, as
the original system's 2 -> 32 bit range). Level 1 is addition only (16
problems, answers of at most 3 digits: a tiny model learns it in minutes),
level 2 adds subtraction (never negative: the larger operand comes first),
level 3 and up add multiplication. Numbers are written without leading zeros,
in plain digits `0`/`1` or, with notation="circled", in the original system's
circled digits ⓪①.

Example (level 1): user "Binary: 10 + 11 = ?"  assistant "101".

Run as: cadence skills serve binary [--notation circled] [--port 8090]
"""
from __future__ import annotations

import logging
import random

from data_manager.skills.base import LevelInfo, Sample, Skill

logger = logging.getLogger(__name__)

CIRCLED = {"0": "⓪", "1": "①"}
OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
OP_NAMES = {"+": "add", "-": "subtract", "*": "multiply"}


def bit_width(level: int) -> int:
    return level + 1


def ops_for(level: int) -> list[str]:
    return ["+"] if level == 1 else ["+", "-"] if level == 2 else ["+", "-", "*"]


class BinarySkill(Skill):
    name = "binary"
    description = "Binary arithmetic (add, subtract, multiply); level L = operands of L+1 bits."
    max_level = 31

    def __init__(self, notation: str = "plain"):
        if notation not in ("plain", "circled"):
            raise ValueError("notation must be 'plain' or 'circled'")
        self.notation = notation

    def options(self) -> dict:
        return {"notation": self.notation}

    def fmt(self, value: int) -> str:
        digits = format(value, "b")
        return "".join(CIRCLED[d] for d in digits) if self.notation == "circled" else digits

    def describe_level(self, level: int) -> LevelInfo:
        self.check_level(level)
        n = 2 ** bit_width(level)
        space = {"+": n * n, "-": n * (n + 1) // 2, "*": n * n}
        ops = ops_for(level)
        return LevelInfo(level, f"{bit_width(level)}-bit {', '.join(OP_NAMES[o] for o in ops)}",
                         sum(space[o] for o in ops))

    def _make(self, level: int, rng: random.Random) -> Sample:
        width = bit_width(level)
        op = rng.choice(ops_for(level))
        a, b = rng.randrange(2 ** width), rng.randrange(2 ** width)
        if op == "-" and b > a:
            a, b = b, a
        result = OPS[op](a, b)
        return Sample(
            user_prompt=f"Binary: {self.fmt(a)} {op} {self.fmt(b)} = ?",
            assistant_response=self.fmt(result),
            metadata={"op": OP_NAMES[op], "bits": width, "a": a, "b": b, "result": result, "notation": self.notation},
        )
