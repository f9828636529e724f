"""Padding-free packing and the deterministic, resumable batch plan of a file.

A file's plan is a list of optimizer steps; each step is a list of micro-batches;
each micro-batch is a list of example indices packed into ONE row with no
padding, `position_ids` restarting at 0 for every example and the segment
boundaries (`cu_seq_lens`) passed to the attention kernel so attention never
crosses examples. The plan depends only on the examples' lengths, the seed, the
file id and the token budgets, so a resumed run rebuilds exactly the same plan
and skips the steps already done.

Steps are filled up to `micro_batch_tokens * gradient_accumulation_steps`
tokens and then split into micro-batches of at most `micro_batch_tokens`, so
halving the micro-batch and doubling accumulation (the OOM recovery) keeps every
step's content, and therefore resume equivalence.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

import torch

from trainer.data import IGNORE_INDEX, EncodedExample


def file_seed(seed: int, file_id: str, epoch: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{file_id}:{epoch}".encode()).digest()[:8], "big")


def held_out_indices(n_rows: int, seed: int, file_id: str, fraction: float, cap: int) -> list[int]:
    """Row indices of a file held out from training (TrainerEngine.prepare_file; the comparison engine scores them too)."""
    n_eval = min(cap, int(n_rows * fraction)) if n_rows >= 20 else 0
    order = list(range(n_rows))
    random.Random(file_seed(seed, file_id, -1)).shuffle(order)
    return order[:n_eval]


def plan_steps(lengths: dict[int, int], micro_batch_tokens: int, grad_accum: int,
               seed: int, file_id: str, epochs: int = 1) -> list[list[list[int]]]:
    """steps[i] = micro-batches, each a list of example indices (shuffled per epoch, seeded)."""
    step_budget = micro_batch_tokens * grad_accum
    steps: list[list[list[int]]] = []
    for epoch in range(epochs):
        order = sorted(lengths)
        random.Random(file_seed(seed, file_id, epoch)).shuffle(order)
        current: list[int] = []
        used = 0
        for idx in order:
            n = lengths[idx]
            if current and used + n > step_budget:
                steps.append(_split_micro(current, lengths, micro_batch_tokens))
                current, used = [], 0
            current.append(idx)
            used += n
        if current:
            steps.append(_split_micro(current, lengths, micro_batch_tokens))
    return steps


def _split_micro(indices: list[int], lengths: dict[int, int], budget: int) -> list[list[int]]:
    micro: list[list[int]] = []
    current: list[int] = []
    used = 0
    for idx in indices:
        if current and used + lengths[idx] > budget:
            micro.append(current)
            current, used = [], 0
        current.append(idx)
        used += lengths[idx]
    if current:
        micro.append(current)
    return micro


@dataclass
class PackedBatch:
    input_ids: torch.Tensor      # [1, T]
    position_ids: torch.Tensor   # [1, T]
    targets: torch.Tensor        # [1, T]: token to predict at each position, IGNORE_INDEX where none
    cu_seq_lens: torch.Tensor    # [n_examples + 1] int32 segment boundaries
    max_seq_len: int
    n_tokens: int
    n_targets: int

    def to(self, device) -> "PackedBatch":
        return PackedBatch(self.input_ids.to(device), self.position_ids.to(device), self.targets.to(device),
                           self.cu_seq_lens.to(device), self.max_seq_len, self.n_tokens, self.n_targets)

    def model_kwargs(self) -> dict:
        return dict(input_ids=self.input_ids, position_ids=self.position_ids, use_cache=False,
                    cu_seq_lens_q=self.cu_seq_lens, cu_seq_lens_k=self.cu_seq_lens,
                    max_length_q=self.max_seq_len, max_length_k=self.max_seq_len)


def pack(examples: list[EncodedExample]) -> PackedBatch:
    """One padding-free row. targets[t] = labels[t+1] within an example; the last position of each example predicts nothing."""
    ids, pos, tgt, cu = [], [], [], [0]
    for ex in examples:
        n = len(ex.input_ids)
        ids.extend(ex.input_ids)
        pos.extend(range(n))
        tgt.extend(ex.labels[1:] + [IGNORE_INDEX])
        cu.append(cu[-1] + n)
    t = torch.tensor
    targets = t([tgt], dtype=torch.long)
    return PackedBatch(t([ids], dtype=torch.long), t([pos], dtype=torch.long), targets,
                       t(cu, dtype=torch.int32), max(len(e.input_ids) for e in examples), len(ids),
                       int((targets != IGNORE_INDEX).sum()))
