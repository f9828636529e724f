"""The original system's generation-time logit penalties, as transformers LogitsProcessors.

- `ThinkTagPenalty`: subtracts 80 × a schedule from the logits of `<think>` /
  `</think>` (×8 for the first 4 generated tokens, ×2 for the next 4, ×1.5 for
  4 more, ×1 afterwards), so a model trained without think tags does not
  start emitting them.
- `PostStopPenalty`: once the generated text holds a run of stop emojis
  (🛑⛔🚫… repeated, the `emoji_think` profile's stop suffix), every non-end
  token is penalised by 100 · 10^k (k = tokens generated since the run) and
  the end token rewarded +50, so generation ends right after the stop signal.

Both work on any batch (`input_ids` [B, T], `scores` [B, V]) and count
generated tokens from `prompt_length`, so they plug into
`model.generate(logits_processor=LogitsProcessorList([...]))` (the trainer's
evals) as well as into the inference server's own sampler (one row at a time).

Library only:
    procs = build_processors(tokenizer, prompt_length, think_penalty=True, post_stop_penalty=True)
"""
from __future__ import annotations

import logging
import re

import torch
from transformers import LogitsProcessor

logger = logging.getLogger(__name__)

THINK_EMOJIS = ["🤔", "💭", "🧠", "💡", "🎯", "🔍", "🤨", "🧐", "⚡", "✨"]
STOP_EMOJIS = ["🛑", "⛔", "🚫", "❌", "🔴", "⏹️", "🔚", "✋", "🚦", "🛡️"]
THINK_TAGS = ["<think>", "</think>"]

THINK_BASE_PENALTY = 80.0
# (tokens, multiplier): ×8 for the first 4 generated tokens, ×2 for the next 4, ×1.5 for 4 more, then ×1.
THINK_SCHEDULE = ((4, 8.0), (4, 2.0), (4, 1.5))
POST_STOP_BASE = 100.0
POST_STOP_EOS_REWARD = 50.0
POST_STOP_MAX_EXPONENT = 6  # 100·10^6 already dwarfs any logit; keeps float32 finite


def _token_ids(tokenizer, texts: list[str]) -> list[int]:
    ids = []
    unk = getattr(tokenizer, "unk_token_id", None)
    for text in texts:
        tid = tokenizer.convert_tokens_to_ids(text)
        if isinstance(tid, int) and tid != unk and tid >= 0:
            ids.append(tid)
    return ids


class ThinkTagPenalty(LogitsProcessor):
    """Push `<think>`/`</think>` down by 80 × schedule(number of tokens generated so far)."""

    def __init__(self, think_token_ids: list[int], prompt_length: int,
                 base: float = THINK_BASE_PENALTY, schedule=THINK_SCHEDULE):
        self.think_token_ids = torch.tensor(sorted(set(think_token_ids)), dtype=torch.long)
        self.prompt_length = prompt_length
        self.base = base
        self.schedule = schedule

    def multiplier(self, generated: int) -> float:
        start = 0
        for length, mult in self.schedule:
            if generated < start + length:
                return mult
            start += length
        return 1.0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.think_token_ids.numel() == 0:
            return scores
        generated = max(0, input_ids.shape[-1] - self.prompt_length)
        ids = self.think_token_ids.to(scores.device)
        scores[:, ids] = scores[:, ids] - self.base * self.multiplier(generated)
        return scores


class PostStopPenalty(LogitsProcessor):
    """After a run of `min_run`+ identical stop emojis, force the end token: others −100·10^k, end +50."""

    def __init__(self, tokenizer, eos_token_ids: list[int], prompt_length: int,
                 stop_emojis: list[str] = STOP_EMOJIS, min_run: int = 2,
                 base: float = POST_STOP_BASE, eos_reward: float = POST_STOP_EOS_REWARD, tail_tokens: int = 24):
        self.tokenizer = tokenizer
        self.eos_token_ids = sorted(set(int(i) for i in eos_token_ids))
        self.prompt_length = prompt_length
        self.base = base
        self.eos_reward = eos_reward
        self.tail_tokens = tail_tokens
        alternatives = "|".join(re.escape(e) for e in sorted(stop_emojis, key=len, reverse=True))
        # One emoji repeated min_run+ times (variation selectors optional between repeats).
        self.run_re = re.compile(rf"(?:({alternatives})\ufe0f?)(?:\1\ufe0f?){{{min_run - 1},}}")
        self._active_since: dict[int, int] = {}  # row -> generated count when the run was first seen

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids.shape[-1] - self.prompt_length
        if generated <= 0 or not self.eos_token_ids:
            return scores
        for row in range(input_ids.shape[0]):
            since = self._active_since.get(row)
            if since is None:
                tail = input_ids[row, max(self.prompt_length, input_ids.shape[-1] - self.tail_tokens):]
                text = self.tokenizer.decode(tail.tolist(), skip_special_tokens=True)
                if not self.run_re.search(text):
                    continue
                since = self._active_since[row] = generated
            k = min(generated - since, POST_STOP_MAX_EXPONENT)
            eos = torch.tensor(self.eos_token_ids, device=scores.device)
            eos_scores = scores[row, eos] + self.eos_reward
            scores[row] = scores[row] - self.base * (10.0 ** k)
            scores[row, eos] = eos_scores
        return scores


def build_processors(tokenizer, prompt_length: int, think_penalty: bool = False,
                     post_stop_penalty: bool = False, eos_token_ids: list[int] | None = None) -> list[LogitsProcessor]:
    """The processors a request asked for, ready for `LogitsProcessorList` or the server's sampler."""
    procs: list[LogitsProcessor] = []
    if think_penalty:
        ids = _token_ids(tokenizer, THINK_TAGS)
        if ids:
            procs.append(ThinkTagPenalty(ids, prompt_length))
        else:
            logger.debug("think_penalty requested but the tokenizer has no <think> token")
    if post_stop_penalty:
        if eos_token_ids is None:
            eos_token_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        procs.append(PostStopPenalty(tokenizer, eos_token_ids, prompt_length))
    return procs
