"""The smoke test a standby version passes before it may serve: one prompt alone, then a mixed-length batch.

A model can be finite on one prompt and still produce NaN once prompts of
different lengths share a forward pass (left padding: e.g. a zeroed pad
embedding under an RMSNorm with eps 0), so a single prompt is not enough.
`smoke_test` runs (1) the configured smoke prompt alone, greedily; (2) the
same prompt in four sizes prefilled together, left-padded exactly as the
scheduler batches waiting requests, decoded together, then a fifth request
joining the running batch (the scheduler's merge path), decoded a few steps
together (about six forward passes in all). Every row must generate with
finite logits. Runs on the standby engine only (its batch is
empty), in the loader's thread.

Library only: `smoke_test(engine, prompt, max_tokens) -> dict`.
"""
from __future__ import annotations

import torch

from inference.engine import Event, NonFiniteLogits, SamplingParams, Sequence

SYSTEM = "You are a careful assistant. Answer briefly."
BATCH_DECODE_STEPS = 3  # after the join: padding NaN shows at the prefill already; a few steps cover the merged cache


def batch_prompts(engine, prompt: str) -> list[list[int]]:
    """Prompts of clearly different lengths built from `prompt` (chat and plain text, as clients send them)."""
    return [
        engine.chat_prompt_ids([{"role": "user", "content": prompt}]),
        engine.text_prompt_ids(prompt),
        engine.chat_prompt_ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{prompt} {prompt}"}]),
        engine.chat_prompt_ids([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt},
                                {"role": "assistant", "content": prompt}, {"role": "user", "content": " ".join([prompt] * 4)}]),
    ]


@torch.inference_mode()
def run_batch(engine, prompts: list[list[int]], joining: list[int], max_tokens: int) -> list[Sequence]:
    """Prefill `prompts` together, decode one step, let `joining` join the batch, decode a few steps more."""
    events: dict[str, list[Event]] = {}

    def seq(i: int, ids: list[int]) -> Sequence:
        rid = f"smoke-batch-{i}"
        events[rid] = []
        s = Sequence(rid, ids, SamplingParams(max_tokens=max_tokens, temperature=0.0, top_p=1.0, ignore_eos=True),
                     engine, events[rid].append)
        s.events = events[rid]
        return s

    limit = engine.max_context - max_tokens - 1
    seqs = [seq(i, ids[-limit:]) for i, ids in enumerate(prompts)]
    late = seq(len(seqs), joining[-limit:])
    assert not engine.reset_batch(), "the batch smoke test must not run on an engine that is serving"
    try:
        engine.prefill(seqs)
        engine.decode_step()
        engine.drop_finished()
        engine.prefill([late])
        for _ in range(min(max_tokens, BATCH_DECODE_STEPS)):
            if not engine.rows:
                break
            engine.decode_step()
            engine.drop_finished()
    finally:
        engine.reset_batch()
    return seqs + [late]


def smoke_test(engine, prompt: str, max_tokens: int) -> dict:
    """Raise NonFiniteLogits (naming the failing rows) unless the prompt alone and a mixed-length batch generate."""
    ids, _ = engine.generate_sync(engine.chat_prompt_ids([{"role": "user", "content": prompt}]), max_tokens=max_tokens)
    prompts = batch_prompts(engine, prompt)
    rows = run_batch(engine, prompts[1:], prompts[0], max_tokens)
    failed = [(len(s.prompt_ids), next(e.error for e in s.events if e.error)) for s in rows if s.finish_reason == "error"]
    if failed:
        lengths = sorted(len(s.prompt_ids) for s in rows)
        raise NonFiniteLogits(f"batch of {len(rows)} prompts ({', '.join(map(str, lengths))} tokens): rows of "
                              f"{', '.join(str(n) for n, _ in failed)} tokens produced NaN/Inf logits "
                              "(finite alone, not when batched with padding)")
    return {"smoke_tokens": len(ids), "smoke_batch": [len(s.prompt_ids) for s in rows]}
