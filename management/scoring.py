"""Measure one checkpoint: supervised-only validation loss, exact-match accuracy by generation, latency.

The loss counts assistant tokens only (rows are encoded by trainer/data.py with
the model's own chat template, the same masks training uses); the original
comparison engine scored prompt tokens too. Accuracy generates greedily from
the prompt and decodes the generated token ids alone (never string slicing of
prompt + answer), then scores with the skill's scorer. Every generation has a
token budget, so an eval can never hang.

Library only; `model_comparison_engine` calls `CheckpointScorer(cfg).score(path)`.
"""
from __future__ import annotations

import logging
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
    def supervised_loss(self, rows: list[dict]) -> tuple[float | None, int]:
        """Mean CE per supervised token over `rows`, and how many rows counted (rows that cannot be encoded are skipped, logged)."""
        if not rows:
            return None, 0
        examples = encode_examples(rows, self.tokenizer, schema_of(rows), self.cfg.model.max_length)
        bad = [e for e in examples if e.error]
        if bad:
            logger.warning("%d validation row(s) skipped (first: %s)", len(bad), bad[0].error)
        total, count, used = 0.0, 0, 0
        for ex in examples:
            if ex.error:
                continue
            ids = torch.tensor([ex.input_ids], device=self.device)
            targets = torch.tensor(ex.labels[1:], device=self.device)
            mask = targets != IGNORE_INDEX
            # the LM head only where a supervised token is predicted (a 151k vocabulary makes it a large share of the FLOPs)
            hidden = self.model.get_decoder()(input_ids=ids).last_hidden_state[0, :-1][mask]
            logits = self.model.get_output_embeddings()(hidden).float()
            total += float(torch.nn.functional.cross_entropy(logits, targets[mask], reduction="sum"))
            count += int(mask.sum())
            used += 1
        return (total / count if count else None), used

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


def score_model(cfg, path: str | Path, eval_sets: dict[str, tuple[int, list[dict]]] | None = None,
                scorer_fn=None, validation_path: Path | None = None) -> ScoredModel:
    """Measure the model at `path`.

    eval_sets: {name: (level, samples)} with Skill API samples (user_prompt,
    assistant_response, metadata); scorer_fn(name, level, samples, answers) ->
    (accuracy, correct, total, scorer) scores them (the data manager's scorers).
    """
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
        if cc.anchor_file and cfg.resolve(cc.anchor_file).is_file():
            result.anchor_loss, _ = scorer.supervised_loss(sample_rows(cfg.resolve(cc.anchor_file), cc.validation_samples))
        result.timings["loss_s"] = round(time.perf_counter() - t1, 3)
        t2 = time.perf_counter()
        latencies = []
        for name, (level, samples) in (eval_sets or {}).items():
            samples = samples[:cc.eval_samples]
            if not samples:
                continue
            prompts = [[{"role": "user", "content": s["user_prompt"]}] for s in samples]
            answers, spt = scorer.generate(prompts, cc.max_new_tokens)
            if spt is not None:
                latencies.append(spt)
            accuracy, correct, total, how = scorer_fn(name, level, samples, answers)
            result.accuracy[name] = {"level": level, "accuracy": accuracy, "correct": correct, "total": total,
                                     "scorer": how, "example": {"expected": samples[0]["assistant_response"][:200],
                                                                "answer": answers[0][:200]}}
        result.timings["generate_s"] = round(time.perf_counter() - t2, 3)
        if cc.measure_latency and latencies:
            result.seconds_per_token = sum(latencies) / len(latencies)
    finally:
        scorer.close()
    return result
