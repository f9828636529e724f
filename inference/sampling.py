"""Turning one decode step's logits into tokens: penalties, logit_bias, temperature / top-k / top-p sampling,
and the log-probabilities OpenAI's `logprobs` report.

Log-probabilities are the model's own (before penalties, bias and temperature), as vLLM reports by default,
so a score over the API equals one computed from the model directly. Presence/frequency penalties count the
tokens generated so far (OpenAI's and vLLM's definition).

Library only: the engine calls `sample(logits, seqs, tokenizer_lock)` from the scheduler thread.
"""
from __future__ import annotations

import torch
from transformers.convert_slow_tokenizer import bytes_to_unicode

# One position's log-probabilities: (token id, its logprob, [(alternative id, logprob), ...] best first).
TokenLogprob = tuple[int, float, list[tuple[int, float]]]

_BYTE_DECODER = {ch: b for b, ch in bytes_to_unicode().items()}


def byte_level_bytes(token: str) -> bytes | None:
    """The bytes behind a byte-level BPE token (GPT-2/Qwen style), or None when `token` is not one."""
    try:
        return bytes(_BYTE_DECODER[ch] for ch in token)
    except KeyError:
        return None


def logprob_entries(logprobs: torch.Tensor, targets: torch.Tensor, k: int) -> list[TokenLogprob]:
    """Per row of `logprobs` [N, V]: the target token's logprob and the k best (id, logprob), best first."""
    picked = logprobs.gather(-1, targets[:, None]).flatten().tolist()
    if k > 0:
        top = logprobs.topk(k, dim=-1)
        alts = [list(zip(ids, vals)) for ids, vals in zip(top.indices.tolist(), top.values.tolist())]
    else:
        alts = [[] for _ in picked]
    return [(t, lp, a) for t, lp, a in zip(targets.tolist(), picked, alts)]


def adjust_logits(row: torch.Tensor, p, output_ids: list[int]) -> torch.Tensor:
    """OpenAI's presence/frequency penalties (over generated tokens) and logit_bias, on one row of logits."""
    if (p.presence_penalty or p.frequency_penalty) and output_ids:
        counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=row.shape[-1])[: row.shape[-1]]
        row = row - p.frequency_penalty * counts.to(row.dtype) - p.presence_penalty * (counts > 0).to(row.dtype)
    if p.logit_bias:
        ids = torch.tensor(list(p.logit_bias), dtype=torch.long)
        row = row.index_add(0, ids, torch.tensor(list(p.logit_bias.values()), dtype=row.dtype))
    return row


def sample(logits: torch.Tensor, seqs: list, tokenizer_lock) -> torch.Tensor:
    """One token per row of `logits` [B, V] for `seqs`; a row that asked for logprobs gets its entry in
    `seq.pending_logprob` (the engine records it when the token is kept)."""
    logits = logits.cpu()
    # Log-probabilities are the model's own (before penalties, bias, temperature), as vLLM reports by default,
    # so a score over the API equals one computed from the model directly.
    want_lp = [i for i, s in enumerate(seqs) if s.params.logprobs is not None]
    raw_lp = logits[want_lp].log_softmax(dim=-1) if want_lp else None
    for i, s in enumerate(seqs):
        if s.processors or s.params.adjusts_logits:
            row = logits[i:i + 1]
            if s.processors:
                ids = torch.tensor([s.prompt_ids + s.output_ids], dtype=torch.long)
                with tokenizer_lock:  # PostStopPenalty decodes
                    for proc in s.processors:
                        row = proc(ids, row)
            logits[i] = adjust_logits(row[0], s.params, s.output_ids)
    tokens = pick(logits, seqs)
    if want_lp:
        chosen = tokens[want_lp]
        for j, i in enumerate(want_lp):
            seqs[i].pending_logprob = logprob_entries(raw_lp[j:j + 1], chosen[j:j + 1], seqs[i].params.logprobs)[0]
    return tokens


def pick(logits: torch.Tensor, seqs: list) -> torch.Tensor:
    """Greedy where temperature is 0, else top-k / top-p sampling (seeded per request when it gave a seed)."""
    temps = torch.tensor([s.params.temperature for s in seqs], dtype=torch.float32)
    greedy = temps <= 1e-5
    out = logits.argmax(dim=-1)
    if bool(greedy.all()):
        return out
    sample_idx = (~greedy).nonzero().flatten()
    scaled = logits[sample_idx] / temps[sample_idx, None]
    top_k = [seqs[i].params.top_k for i in sample_idx.tolist()]
    if any(0 < k < scaled.shape[-1] for k in top_k):
        for j, k in enumerate(top_k):
            if 0 < k < scaled.shape[-1]:
                kth = scaled[j].topk(k).values[-1]
                scaled[j] = scaled[j].masked_fill(scaled[j] < kth, float("-inf"))
    top_p = torch.tensor([seqs[i].params.top_p for i in sample_idx.tolist()], dtype=torch.float32)
    if bool((top_p < 1.0).any()):
        sorted_logits, order = scaled.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        remove = (sorted_probs.cumsum(dim=-1) - sorted_probs) >= top_p[:, None]  # keep the token crossing top_p
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        scaled = torch.full_like(scaled, float("-inf")).scatter(-1, order, sorted_logits)
    probs = scaled.softmax(dim=-1)
    seeded = [j for j, i in enumerate(sample_idx.tolist()) if seqs[i].generator is not None]
    if not seeded:
        picks = torch.multinomial(probs, 1).flatten()
    else:
        picks = torch.empty(len(sample_idx), dtype=torch.long)
        for j, i in enumerate(sample_idx.tolist()):
            picks[j] = torch.multinomial(probs[j], 1, generator=seqs[i].generator)[0]
    out[sample_idx] = picks
    return out
