"""`cadence skills learnability`: the command line of data_manager.check_learnability (hand-run check that level 1 of each built-in skill suits the tiny default model.)

Run as:
    cadence skills learnability                          # token lengths only (seconds)
    cadence skills learnability --train-seconds 240 --threads 2 [--skill binary]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from data_manager.check_learnability import length_report, train_and_eval
from data_manager.skills import BUILTIN_SKILLS


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Check that level 1 of the built-in skills suits the tiny model.")
    parser.add_argument("--model", default=None, help="model folder (default: build the tiny preset in a temp dir)")
    parser.add_argument("--skill", choices=sorted(BUILTIN_SKILLS), action="append", help="skill(s) to check (default: all)")
    parser.add_argument("--train-seconds", type=float, default=0, help="also train a fresh model this long per skill")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak LR (default: config.json's 1e-3)")
    parser.add_argument("--eval-every", type=int, default=50, help="steps between eval-accuracy reports")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2, like the demo box)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # lazy: torch, transformers and the model builder load only when the check runs, not for --help
    import torch
    from transformers import AutoTokenizer

    from scripts.make_tiny_model import build_model

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else build_model(Path(tmp) / "tiny", "tiny")
        tok = AutoTokenizer.from_pretrained(model_dir)
        for name in args.skill or sorted(BUILTIN_SKILLS):
            r = length_report(tok, name)
            fmt = lambda t: f"min {t[0]}, mean {t[1]:.1f}, max {t[2]}"  # noqa: E731
            print(f"== {name} level 1: {r['problem_space']} distinct problems, {r['distinct_answers']} distinct answers")
            print(f"   prompt tokens  {fmt(r['prompt_tokens'])}")
            print(f"   answer tokens  {fmt(r['answer_tokens'])}")
            print(f"   chat example   {fmt(r['example_tokens'])} (template + both turns)")
            p, a, pn, an = r["example"]
            print(f"   example: user {p!r} ({pn} tokens) -> assistant {a!r} ({an} tokens)")
        for name in (args.skill or sorted(BUILTIN_SKILLS)) if args.train_seconds > 0 else []:
            train_and_eval(model_dir, name, args.train_seconds, args.batch_size, args.lr, args.eval_every)
    return 0
