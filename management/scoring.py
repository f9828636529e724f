"""Measure one checkpoint: supervised-only validation loss, per-item loss and exact match on item sets, latency.

The loss counts assistant tokens only (rows are encoded by trainer/data.py with
the model's own chat template, the same masks training uses); the original
comparison engine scored prompt tokens too. Accuracy generates greedily from
the prompt and decodes the generated token ids alone (never string slicing of
prompt + answer), then scores with the skill's scorer. Every generation has a
token budget, so an eval can never hang.

Library only; `model_comparison_engine` calls `score_model(cfg, path, sets, scorer_fn, validation_path)`.
"""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trainer.data import IGNORE_INDEX, encode_examples, load_tokenizer, read_jsonl

logger = logging.getLogger(__name__)

VALIDATION_SEED = 42  # the trainer's fixed-validation sample uses the same seed


@dataclass
class ScoredModel:
    """What one checkpoint measured; `accuracy[skill] = {level, accuracy, correct, total, scorer}`."""
    val_loss: float | None = None
    val_rows: int = 0
    anchor_loss: float | None = None
    accuracy: dict = field(default_factory=dict)
    seconds_per_token: float | None = None
    timings: dict = field(default_factory=dict)
    sets: dict = field(default_factory=dict)  # per-item results per item set (score_sets)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("comparison.device=%s but no GPU is visible; scoring on CPU", name)
        return torch.device("cpu")
    return torch.device(name)


def sample_rows(path: Path, n: int) -> list[dict]:
    """The first `n` rows after a seeded shuffle (the same rows for every checkpoint)."""
    rows = read_jsonl(path)
    random.Random(VALIDATION_SEED).shuffle(rows)
    return rows[:n]


def schema_of(rows: list[dict]) -> str:
    return "chat_sft_v1" if rows and "messages" in rows[0] else "completion_v1"


class CheckpointScorer:
    """Loads a model folder and measures it. One instance per checkpoint (weights are freed by `close`)."""

    def __init__(self, cfg, path: str | Path):
        from transformers import AutoModelForCausalLM

        self.cfg = cfg
        self.path = Path(path)
        self.device = pick_device(cfg.comparison.device)
        self.tokenizer = load_tokenizer(self.path, cfg.model.trust_remote_code)
        dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        self.model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype,
                                                          trust_remote_code=cfg.model.trust_remote_code)
        self.model.to(self.device).eval()

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ loss
    @torch.no_grad()
    def item_losses(self, rows: list[dict]) -> list[tuple[float, int] | None]:
        """Per row: (summed CE over its supervised tokens, how many there were); None for a row that cannot be encoded."""
        if not rows:
            return []
        examples = encode_examples(rows, self.tokenizer, schema_of(rows), self.cfg.model.max_length)
        bad = [e for e in examples if e.error]
        if bad:
            logger.warning("%d scored row(s) skipped (first: %s)", len(bad), bad[0].error)
        out: list[tuple[float, int] | None] = []
        for ex in examples:
            if ex.error:
                out.append(None)
                continue
            ids = torch.tensor([ex.input_ids], device=self.device)
            targets = torch.tensor(ex.labels[1:], device=self.device)
            mask = targets != IGNORE_INDEX
            if not bool(mask.any()):
                out.append(None)
                continue
            # the LM head only where a supervised token is predicted (a 151k vocabulary makes it a large share of the FLOPs)
            hidden = self.model.get_decoder()(input_ids=ids).last_hidden_state[0, :-1][mask]
            logits = self.model.get_output_embeddings()(hidden).float()
            out.append((float(torch.nn.functional.cross_entropy(logits, targets[mask], reduction="sum")), int(mask.sum())))
        return out

    def supervised_loss(self, rows: list[dict]) -> tuple[float | None, int]:
        """Mean CE per supervised token over `rows`, and how many rows counted (rows that cannot be encoded are skipped, logged)."""
        items = [x for x in self.item_losses(rows) if x is not None]
        count = sum(n for _, n in items)
        return (sum(t for t, _ in items) / count if count else None), len(items)

    # ------------------------------------------------------------ generation
    @torch.no_grad()
    def generate(self, prompts: list[list[dict]], max_new_tokens: int, batch_size: int = 16) -> tuple[list[str], float | None]:
        """Greedy answers to chat prompts (generated tokens only, special tokens dropped) and seconds per generated token."""
        tok = self.tokenizer
        answers: list[str] = []
        gen_tokens, gen_seconds = 0, 0.0
        eos = tok.eos_token_id
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
            enc = tok(texts, add_special_tokens=False, return_tensors="pt", padding=True, padding_side="left")
            enc = {k: v.to(self.device) for k, v in enc.items()}
            t0 = time.perf_counter()
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                      pad_token_id=tok.pad_token_id, eos_token_id=eos)
            gen_seconds += time.perf_counter() - t0
            new = out[:, enc["input_ids"].shape[1]:]
            for row in new.tolist():
                if eos in row:
                    row = row[:row.index(eos)]
                gen_tokens += max(1, len(row))
                answers.append(tok.decode(row, skip_special_tokens=True).strip())
        return answers, (gen_seconds / gen_tokens if gen_tokens else None)


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def answer_budget(tokenizer, samples: list[dict], cap: int) -> tuple[int, int]:
    """(generation budget, longest expected answer in tokens) for one set: 1.5x its longest expected answer + 8
    tokens (room for a different but equal rendering, e.g. JSON spacing, and the end token), at most `cap`. A fixed
    budget either truncates long answers (a syllo level-5 answer is 71-83 tokens: at the old fixed 64 it could never
    be exact) or lets every wrong answer of a short-answer set run on to it."""
    longest = max((len(tokenizer(s["assistant_response"], add_special_tokens=False)["input_ids"]) for s in samples),
                  default=0)
    return min(cap, longest + longest // 2 + 8), longest


def score_sets(scorer: CheckpointScorer, sets, scorer_fn, max_new_tokens: int) -> tuple[dict, list[float]]:
    """Per-item results of every set: {set id: {kind, skill, level, digest, n, loss: [per-item mean CE], exact: "0110…",
    accuracy, mean_loss, scorer}}, and the seconds per generated token of each generation run."""
    out, latencies = {}, []
    for item_set in sets:
        raw = scorer.item_losses(item_set.rows)
        losses = [round(x[0] / x[1], 6) if x is not None else None for x in raw]
        nonfinite = sum(1 for x in losses if x is not None and not math.isfinite(x))
        losses = [x if x is None or math.isfinite(x) else None for x in losses]  # NaN is no score (and not JSON)
        known = [x for x in losses if x is not None]
        tokens = sum(x[1] for x in raw if x is not None)
        res = {"kind": item_set.kind, "skill": item_set.skill, "level": item_set.level, "digest": item_set.digest,
               "n": len(item_set.rows), "loss": losses, "mean_loss": sum(known) / len(known) if known else None,
               "token_loss": _finite(sum(x[0] for x in raw if x is not None) / tokens) if tokens else None,
               "nonfinite": nonfinite, "exact": None, "accuracy": None, "scorer": None}
        if item_set.samples:
            prompts = [[{"role": "user", "content": s["user_prompt"]}] for s in item_set.samples]
            budget, longest = answer_budget(scorer.tokenizer, item_set.samples, max_new_tokens)
            if longest > budget:
                logger.warning("set %s: its longest expected answer is %d tokens, over the generation cap "
                               "comparison.max_new_tokens=%d: such items can never be exact", item_set.id, longest,
                               max_new_tokens)
            answers, spt = scorer.generate(prompts, budget)
            if spt is not None:
                latencies.append(spt)
            correct, how = scorer_fn(item_set, answers)
            res.update(exact="".join("1" if c else "0" for c in correct), accuracy=sum(correct) / len(correct),
                       scorer=how, example={"expected": item_set.samples[0]["assistant_response"][:200],
                                            "answer": answers[0][:200]})
        out[item_set.id] = res
    return out, latencies


def score_model(cfg, path: str | Path, sets=(), scorer_fn=None, validation_path: Path | None = None) -> ScoredModel:
    """Measure the model at `path`: val_loss on `validation_path` (the margin rule's metric) and per-item results
    on every item set (management/item_sets.py); scorer_fn(item_set, answers) -> (per-item correct, scorer name)."""
    cc = cfg.comparison
    if cc.torch_threads:
        torch.set_num_threads(cc.torch_threads)
    result = ScoredModel()
    t0 = time.perf_counter()
    scorer = CheckpointScorer(cfg, path)
    result.timings["load_s"] = round(time.perf_counter() - t0, 3)
    try:
        t1 = time.perf_counter()
        if validation_path is not None and validation_path.is_file():
            result.val_loss, result.val_rows = scorer.supervised_loss(sample_rows(validation_path, cc.validation_samples))
        result.timings["loss_s"] = round(time.perf_counter() - t1, 3)
        t2 = time.perf_counter()
        result.sets, latencies = score_sets(scorer, list(sets), scorer_fn, cc.max_new_tokens)
        anchor = next((r for r in result.sets.values() if r["kind"] == "anchor"), None)
        result.anchor_loss = anchor["token_loss"] if anchor else None  # token-weighted like val_loss (the margin rule's guard)
        result.timings["sets_s"] = round(time.perf_counter() - t2, 3)
        if cc.measure_latency and latencies:
            result.seconds_per_token = sum(latencies) / len(latencies)
    finally:
        scorer.close()
    return result
