"""STANDARD level: every example through the trainer's own encoder, then length thresholds.

Uses `trainer.data.encode_examples` (the model's tokenizer, chat template,
loss mask and right truncation, exactly as training will see them), in batches.
Reply lengths are the runs of supervised tokens; an example that was truncated
is encoded once more without a limit so a reply longer than max_length is seen
whole. Thresholds (from the original system):

* reject: p95 example length > max_length; any single reply > max_length;
  examples left with zero supervised tokens; share over max_length above
  validation.max_truncated_share;
* warn: reply p95 > 80% or p99 > 90% of max_length; max_length > 1.5x p99
  (with a suggested max_length).
"""
from __future__ import annotations

import math
from itertools import chain, islice
from typing import Iterable

import numpy as np

from core.validation.report import ValidationReport
from trainer.data import IGNORE_INDEX, encode_examples


def supervised_runs(label_lists: list[list[int]], ignore_index: int = -100) -> np.ndarray:
    """Lengths of contiguous supervised spans (one per reply) across many examples."""
    if not label_lists:
        return np.empty(0, dtype=np.int64)
    sizes = np.fromiter(map(len, label_lists), dtype=np.int64, count=len(label_lists))
    flat = np.fromiter(chain.from_iterable(label_lists), dtype=np.int64, count=int(sizes.sum()))
    mask = flat != ignore_index
    # a False after every example so that no run crosses into the next example
    padded = np.insert(mask, np.cumsum(sizes), False).astype(np.int8)
    edges = np.diff(padded, prepend=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return ends - starts


def _pcts(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"min": 0, "median": 0, "mean": 0, "p95": 0, "p99": 0, "max": 0}
    v = np.sort(values)

    def rank(q: float) -> int:
        return int(v[max(0, min(v.size - 1, math.ceil(q / 100 * v.size) - 1))])

    return {"min": int(v[0]), "median": rank(50), "mean": round(float(v.mean()), 1),
            "p95": rank(95), "p99": rank(99), "max": int(v[-1])}


def suggest_max_length(p99: int) -> int:
    """Smallest multiple of 64 at or above 1.1x the p99 example length: fits 99% of examples with headroom."""
    return int(max(64, math.ceil(p99 * 1.1 / 64) * 64))


def run_standard(rep: ValidationReport, rows: Iterable[tuple[int, dict]], tokenizer, schema_id: str,
                 max_length: int, truncation: str, max_truncated_share: float, batch_size: int = 1024) -> None:
    lengths: list[int] = []
    reply_lengths: list[np.ndarray] = []
    supervised = over = zero = 0
    it = iter(rows)
    while batch := list(islice(it, batch_size)):
        lines = [ln for ln, _ in batch]
        encoded = encode_examples([r for _, r in batch], tokenizer, schema_id, max_length)
        whole_labels, long_rows, long_lines = [], [], []
        for line, (_, row), ex in zip(lines, batch, encoded):
            if ex.error and not ex.truncated:
                rep.add("encode_error", ex.error, line)
                continue
            lengths.append(ex.original_length)
            if not ex.truncated:
                whole_labels.append(ex.labels)
                continue
            over += 1
            long_rows.append(row)
            long_lines.append(line)
            rep.add("over_max_length", f"{ex.original_length} tokens > max_length {max_length} ({truncation})", line,
                    severity="error" if truncation == "error" else None)
            n_sup = ex.n_supervised
            if truncation == "truncate":
                supervised += n_sup
                if n_sup == 0:
                    zero += 1
                    rep.add("zero_supervised", f"no supervised tokens left after truncation to {max_length} "
                                               f"(example has {ex.original_length} tokens)", line)
        runs = supervised_runs(whole_labels, IGNORE_INDEX)
        supervised += int(runs.sum())
        reply_lengths.append(runs)
        if long_rows:
            # the same encoder without a limit, so every reply is measured whole
            full = encode_examples(long_rows, tokenizer, schema_id, max(e.original_length for e in encoded) + 1)
            for line, ex in zip(long_lines, full):
                r = supervised_runs([ex.labels], IGNORE_INDEX)
                reply_lengths.append(r)
                top = int(r.max()) if r.size else 0
                if top > max_length:
                    rep.add("reply_too_long", f"one reply alone is {top} tokens > max_length {max_length}", line)
    n = len(lengths)
    lens = np.asarray(lengths, dtype=np.int64)
    replies = np.concatenate(reply_lengths) if reply_lengths else np.empty(0, dtype=np.int64)
    ls, rs = _pcts(lens), _pcts(replies)
    share = over / n if n else 0.0
    suggestion = suggest_max_length(ls["p99"]) if n else None
    rep.stats.update(
        examples=n, tokens=int(lens.sum()), supervised_tokens=supervised, max_length=max_length,
        length=ls, reply_length=rs, over_max_length=over, share_over_max_length=round(share, 4),
        zero_supervised=zero, suggested_max_length=suggestion, truncation=truncation,
    )
    if n == 0:
        if rep.error_count == 0:
            rep.add("no_examples", "no example could be encoded")
        return
    if ls["p95"] > max_length:
        rep.add("too_long_p95", f"p95 example length {ls['p95']} > max_length {max_length}; "
                                f"raise max_length to ~{suggestion} or split the examples")
    if share > max_truncated_share:
        rep.add("truncated_share", f"{over}/{n} examples ({share:.1%}) exceed max_length {max_length} "
                                   f"(limit {max_truncated_share:.1%})")
    if rs["p95"] > 0.8 * max_length:
        rep.add("reply_p95_high", f"reply p95 {rs['p95']} tokens > 80% of max_length {max_length}")
    if rs["p99"] > 0.9 * max_length:
        rep.add("reply_p99_high", f"reply p99 {rs['p99']} tokens > 90% of max_length {max_length}")
    if max_length > 1.5 * ls["p99"]:
        rep.add("max_length_oversized", f"max_length {max_length} > 1.5x p99 length {ls['p99']}; "
                                        f"max_length {suggestion} would fit 99% of examples")
