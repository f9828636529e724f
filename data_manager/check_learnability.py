"""Hand-run check that level 1 of each built-in skill suits the tiny default model.

Prints, per skill, token lengths of level-1 prompts, answers and whole chat
examples under the tiny model's own tokenizer, the size of the answer space,
and one example. With --train-seconds it also fine-tunes a fresh tiny model
on level-1 data with a minimal loop (AdamW, loss on the assistant turn only;
not Cadence's trainer) and reports greedy-decoding accuracy on the held-out
eval set after each chunk of steps: an honest, stand-alone learnability
estimate. Not part of the test suite (it takes minutes of CPU).

Run as:
    cadence skills learnability                          # token lengths only (seconds)
    cadence skills learnability --train-seconds 240 --threads 2 [--skill binary]
"""
from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path

from data_manager.manager import EVAL_SEED_BASE
from data_manager.skills import get_skill

logger = logging.getLogger(__name__)


def chat_ids(tok, prompt: str, answer: str | None = None) -> list[int]:
    msgs = [{"role": "user", "content": prompt}] + ([{"role": "assistant", "content": answer}] if answer is not None else [])
    out = tok.apply_chat_template(msgs, tokenize=True, add_generation_prompt=answer is None, return_dict=False)
    return list(out)


def length_report(tok, skill_name: str, count: int = 400) -> dict:
    skill = get_skill(skill_name)
    samples = skill.generate(1, count, seed=0)
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    prompt_t = [n(s.user_prompt) for s in samples]
    answer_t = [n(s.assistant_response) for s in samples]
    full_t = [len(chat_ids(tok, s.user_prompt, s.assistant_response)) for s in samples]
    ex = samples[0]
    return {"skill": skill_name, "problem_space": skill.describe_level(1).problem_space,
            "distinct_answers": len({s.assistant_response for s in samples}),
            "prompt_tokens": (min(prompt_t), statistics.mean(prompt_t), max(prompt_t)),
            "answer_tokens": (min(answer_t), statistics.mean(answer_t), max(answer_t)),
            "example_tokens": (min(full_t), statistics.mean(full_t), max(full_t)),
            "example": (ex.user_prompt, ex.assistant_response, n(ex.user_prompt), n(ex.assistant_response))}


def train_and_eval(model_dir: Path, skill_name: str, seconds: float, batch_size: int, lr: float, eval_every: int) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    skill = get_skill(skill_name)
    evals = [s for s in skill.generate(1, 50, seed=EVAL_SEED_BASE + 1)]
    max_answer = max(len(tok(s.assistant_response, add_special_tokens=False)["input_ids"]) for s in evals)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    pad = tok.pad_token_id

    def batch(step: int):
        rows = skill.generate(1, batch_size, seed=step)
        ids, labels = [], []
        for s in rows:
            prompt = chat_ids(tok, s.user_prompt)
            full = chat_ids(tok, s.user_prompt, s.assistant_response)
            ids.append(full)
            labels.append([-100] * len(prompt) + full[len(prompt):])
        width = max(map(len, ids))
        x = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
        y = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
        return x, y, (x != pad).long() | (y != -100).long()

    @torch.no_grad()
    def accuracy(show_errors: int = 0) -> float:
        model.eval()
        correct, wrong = 0, []
        for s in evals:
            prompt = torch.tensor([chat_ids(tok, s.user_prompt)])
            out = model.generate(prompt, max_new_tokens=max_answer + 3, do_sample=False)
            answer = tok.decode(out[0, prompt.shape[1]:], skip_special_tokens=True)
            ok = skill.score(s.assistant_response, answer).correct
            correct += ok
            if not ok:
                wrong.append((s.user_prompt, s.assistant_response, answer))
        for prompt, expected, got in wrong[:show_errors]:
            print(f"[{skill_name}]   wrong: {prompt!r} expected {expected!r} got {got!r}")
        model.train()
        return correct / len(evals)

    model.train()
    start, step = time.time(), 0
    print(f"[{skill_name}] training a fresh tiny model for {seconds:.0f}s (batch {batch_size}, lr {lr})")
    while time.time() - start < seconds:
        x, y, mask = batch(step)
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, (step + 1) / 20)
        loss = model(input_ids=x, attention_mask=mask, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % eval_every == 0:
            print(f"[{skill_name}] step {step:4d}  {time.time() - start:6.1f}s  loss {loss.item():.3f}  eval acc {accuracy():.2f}", flush=True)
    elapsed = time.time() - start
    print(f"[{skill_name}] final: step {step}, {elapsed:.0f}s, loss {loss.item():.3f}, eval acc {accuracy(show_errors=5):.2f}")
