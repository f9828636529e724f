"""DEEP level: data-quality checks that need the whole file or read every reply closely.

Warnings by default (set any of them to error in validation.policies):
exact and near duplicates (MinHash over word 3-grams, LSH buckets), answer
leakage (the reply verbatim in the prompt), a word repeated 5+ times in a
row, one letter over 40% of the letters, replies under 5 characters,
mojibake, replies that look like JSON but do not parse, prompt > 20x reply or
reply > 50x prompt, echoed or repeated turns, chat markup inside content,
and an emoji-thinking share outside 30-70%.
"""
from __future__ import annotations

import hashlib
import json
import re
import zlib
from collections import Counter
from typing import Iterable

import numpy as np

from core.validation.report import ValidationReport
from core.validation.spec import DatasetSpec

THINK_EMOJIS = ("🤔", "💭", "🧠", "💡", "🎯", "🔍", "🤨", "🧐", "⚡", "✨")
_REPEAT = re.compile(r"\b(\w+)(?:\s+\1\b){4,}", re.IGNORECASE)
_MOJIBAKE = re.compile(r"Ã[\u0080-\u00bf]|â€[\u0080-\u00bf\u2018-\u203a\u2122\u0153]|Â[\u00a0-\u00bf]|\ufffd")
_ROLE_MARKER = re.compile(r"<\|im_(?:start|end)\|>|<\|endoftext\|>|^\s*(?:user|assistant|system|human)\s*:", re.I | re.M)
_WORD = re.compile(r"\w+")
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)

MINHASH_K = 32
MINHASH_BANDS = 8
NEAR_DUP_THRESHOLD = 0.8
_rng = np.random.default_rng(1234)
_A = _rng.integers(1, 2**63 - 1, size=MINHASH_K, dtype=np.uint64) | np.uint64(1)
_B = _rng.integers(0, 2**63 - 1, size=MINHASH_K, dtype=np.uint64)


def minhash(text: str) -> np.ndarray | None:
    words = _WORD.findall(text.lower())
    if len(words) < 3:
        return None
    shingles = {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}
    x = np.fromiter((zlib.crc32(s.encode()) for s in shingles), dtype=np.uint64, count=len(shingles))
    with np.errstate(over="ignore"):
        h = (_A[:, None] * x[None, :] + _B[:, None]) >> np.uint64(32)
    return h.min(axis=1).astype(np.uint32)


def _reply_checks(rep: ValidationReport, reply: str, prompt: str, line: int, where: str) -> None:
    r = reply.strip()
    if len(r) < 5:
        rep.add("short_reply", f"{where} is {len(r)} characters: {r!r}", line)
    m = _REPEAT.search(reply)
    if m:
        rep.add("repetition", f"{where}: {m.group(1)!r} repeated {len(m.group().split())} times in a row", line)
    letters = [c for c in reply.lower() if c.isalpha()]
    if len(letters) >= 20:
        ch, count = Counter(letters).most_common(1)[0]
        if count / len(letters) > 0.4:
            rep.add("single_letter", f"{where}: {ch!r} is {count / len(letters):.0%} of the letters", line)
    if r[:1] in ("{", "[") or r.startswith("```"):
        fenced = _FENCE.match(r)
        body = fenced.group(1) if fenced else r
        if body[:1] in ("{", "["):
            try:
                json.loads(body)
            except (ValueError, RecursionError) as exc:
                rep.add("invalid_json_reply", f"{where} looks like JSON but does not parse: {getattr(exc, 'msg', exc)}", line)
    if len(r) >= 10 and r in prompt:
        rep.add("answer_leakage", f"{where} appears verbatim in the prompt", line)


def _flow_checks(rep: ValidationReport, messages: list[dict], line: int) -> None:
    seen_replies: dict[str, int] = {}
    for i, m in enumerate(messages):
        content = m["content"].strip()
        if i and content and content == messages[i - 1]["content"].strip():
            what = "echoes" if m["role"] == "assistant" else "repeats"
            rep.add("flow_anomaly", f"messages[{i}] ({m['role']}) {what} messages[{i - 1}]", line)
        if m["role"] == "assistant" and content:
            if content in seen_replies:
                rep.add("flow_anomaly", f"messages[{i}] repeats the reply of messages[{seen_replies[content]}]", line)
            seen_replies.setdefault(content, i)


def run_deep(rep: ValidationReport, rows: Iterable[tuple[int, dict]], spec: DatasetSpec) -> None:
    exact: dict[bytes, int] = {}
    buckets: dict[tuple[int, bytes], int] = {}
    signatures: dict[int, np.ndarray] = {}
    n = emoji = 0
    band = MINHASH_K // MINHASH_BANDS
    for line, row in rows:
        n += 1
        key = hashlib.blake2b(json.dumps(row, sort_keys=True, ensure_ascii=False).encode(), digest_size=16).digest()
        if key in exact:
            rep.add("exact_duplicate", f"identical to line {exact[key]}", line)
            continue
        exact[key] = line
        prompt, replies = spec.prompt_and_replies(row)
        for where, s in spec.strings(row):
            m = _MOJIBAKE.search(s)
            if m:
                rep.add("mojibake", f"{where}: encoding junk {m.group()!r} at char {m.start()}", line)
            if _ROLE_MARKER.search(s):
                rep.add("role_marker", f"{where}: chat markup or a role prefix inside the content", line)
        for i, reply in enumerate(replies):
            _reply_checks(rep, reply, prompt, line, f"reply {i + 1}" if len(replies) > 1 else "reply")
        reply_chars = sum(len(r) for r in replies)
        if prompt and reply_chars:
            if len(prompt) > 20 * reply_chars:
                rep.add("length_ratio", f"prompt is {len(prompt) / reply_chars:.0f}x the reply", line)
            elif reply_chars > 50 * len(prompt):
                rep.add("length_ratio", f"reply is {reply_chars / len(prompt):.0f}x the prompt", line)
        if spec.kind == "chat":
            _flow_checks(rep, row["messages"], line)
        if replies and replies[-1].lstrip().startswith(THINK_EMOJIS):
            emoji += 1
        sig = minhash(prompt + "\n" + "\n".join(replies))
        if sig is not None:
            best = None
            for b in range(MINHASH_BANDS):
                bkey = (b, sig[b * band:(b + 1) * band].tobytes())
                other = buckets.get(bkey)
                if other is None:
                    buckets[bkey] = line
                elif best is None:
                    sim = float(np.mean(signatures[other] == sig))
                    if sim >= NEAR_DUP_THRESHOLD:
                        best = (other, sim)
            if best:
                rep.add("near_duplicate", f"~{best[1]:.0%} similar to line {best[0]}", line)
            signatures[line] = sig
    share = emoji / n if n else 0.0
    if emoji and not 0.3 <= share <= 0.7:
        rep.add("emoji_share", f"{share:.0%} of replies start with a thinking emoji (expected 30-70%)")
    rep.stats.update(deep_examples=n, exact_unique=len(exact), emoji_think_share=round(share, 3))
