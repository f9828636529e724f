"""Data profiles: transforms applied to each chat row before tokenisation (as in the original system).

* `none`: pass-through.
* `emoji_think`: on a seeded half of the examples (chosen by index), the answer gets
  a thinking prefix of one emoji from THINK_EMOJIS repeated 2-8 times, with a user
  instruction to think with it that many times, and a stop suffix of one emoji
  from STOP_EMOJIS repeated 2-4 times, with an instruction to emit it when
  finished. `<think>...</think>` blocks are stripped from answers.
* `regime3`: answers wrapped in `<<ANS_START>> ... <<ANS_END>>` and a system prompt
  asking for the symbolic `(op a b)` form.
"""
from __future__ import annotations

import random
import re

THINK_EMOJIS = ["🤔", "💭", "🧠", "💡", "🎯", "🔍", "🤨", "🧐", "⚡", "✨"]
STOP_EMOJIS = ["🛑", "⛔", "🚫", "❌", "🔴", "⏹️", "🔚", "✋", "🚦", "🛡️"]
ANS_START, ANS_END = "<<ANS_START>>", "<<ANS_END>>"
REGIME3_SYSTEM = ("Answer in symbolic form: write each operation as (op a b), "
                  f"and put the final answer between {ANS_START} and {ANS_END}.")
_THINK_BLOCK = re.compile(r"<think>.*?</think>\s*", re.S)
PROFILES = ("none", "emoji_think", "regime3")


def _copy_messages(row: dict) -> list[dict]:
    return [dict(m) for m in row["messages"]]


def emoji_think(row: dict, index: int, seed: int) -> dict:
    messages = _copy_messages(row)
    for m in messages:
        if m["role"] == "assistant":
            m["content"] = _THINK_BLOCK.sub("", m["content"])
    rng = random.Random(f"{seed}:{index}")
    if rng.random() >= 0.5:
        return {**row, "messages": messages}
    think, n = rng.choice(THINK_EMOJIS), rng.randint(2, 8)
    stop, k = rng.choice(STOP_EMOJIS), rng.randint(2, 4)
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    last_asst = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last_user is None or last_asst is None:
        return {**row, "messages": messages}
    messages[last_user]["content"] += (f"\n\nThink with {think} {n} times before answering. "
                                       f"When you are finished, write {stop} {k} times.")
    messages[last_asst]["content"] = think * n + "\n" + messages[last_asst]["content"] + "\n" + stop * k
    return {**row, "messages": messages}


def regime3(row: dict, index: int, seed: int) -> dict:
    messages = _copy_messages(row)
    for m in messages:
        if m["role"] == "assistant" and not m["content"].startswith(ANS_START):
            m["content"] = f"{ANS_START}{m['content']}{ANS_END}"
    if messages[0]["role"] == "system":
        messages[0]["content"] = REGIME3_SYSTEM + "\n" + messages[0]["content"]
    else:
        messages.insert(0, {"role": "system", "content": REGIME3_SYSTEM})
    return {**row, "messages": messages}


def apply_profile(rows: list[dict], profile: str, seed: int = 42) -> list[dict]:
    if profile == "none":
        return rows
    fn = {"emoji_think": emoji_think, "regime3": regime3}.get(profile)
    if fn is None:
        raise ValueError(f"unknown profile {profile!r} (known: {', '.join(PROFILES)})")
    return [fn(r, i, seed) if isinstance(r.get("messages"), list) else r for i, r in enumerate(rows)]
