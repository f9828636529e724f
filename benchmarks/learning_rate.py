"""Learning-rate benchmark: how fast the tiny model learns a binary level under each learning rate, side by side.

Every contender trains a fresh copy of the same model with Cadence's
TrainerEngine (the embedded default's settings: micro_batch_tokens 1024,
warmup 20, constant schedule unless --schedule says otherwise) on the same
generated files: --level's problems (80 %) with the lower levels rehearsed
(20 %), a new seeded file of --file-rows rows each time, as the data manager
writes them. After every file it scores the held-out ladder rungs 1..level
(the data manager's rung items: seed 2**40 + level, the first 24, greedy,
the skill's exact-match scorer). The contenders run at the same time, one
process and one intra-op thread each, so the box's speed that hour affects
them alike; they are compared at equal optimizer steps.

Reported per contender: accuracy on each rung after every file, the first
step at which the top rung's accuracy held >= 80 % on two evals in a row
(the curriculum's bar, not its 3-eval window), and the top rung's mean over
the last third of the steps.

Run as:
    python benchmarks/learning_rate.py                              # 1e-3 vs 3e-4, binary level 3, 1200 steps
    python benchmarks/learning_rate.py --lr 3e-4 1.5e-4 --level 4 --steps 1600
    python benchmarks/learning_rate.py --write-docs                 # table into docs/benchmarks.md (learning_rate)
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/learning_rate.py`: the repo root, not benchmarks/

import argparse
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BAR = 0.8


def worker(args) -> int:
    """One contender: train and print one JSON line per file."""
    import torch

    torch.set_num_threads(1)
    from core.config import from_dict
    from data_manager.manager import EVAL_SEED_BASE
    from data_manager.skills.binary import BinarySkill
    from trainer import TrainerEngine, TrainingHooks

    skill = BinarySkill()
    rungs = {lv: [s.to_dict() for s in skill.generate(lv, 24, EVAL_SEED_BASE + lv)] for lv in range(1, args.level + 1)}
    work = Path(args.workdir)
    cfg = from_dict({"paths": {"base_dir": str(work / "cadence")}, "model": {"base_model": args.model, "max_length": 512},
                     "training": {"learning_rate": args.lr, "lr_schedule": args.schedule, "warmup_steps": 20,
                                  "micro_batch_tokens": 1024, "eval_steps": 0, "save_steps": 10 ** 9,
                                  "eval_split_fraction": 0.0, "compile": "off"},
                     "safety": {"min_free_disk_gb": 0}}, work)
    cfg.layout.ensure()
    engine = TrainerEngine(cfg, TrainingHooks()).setup()

    def row(s):
        return {"messages": [{"role": "user", "content": s.user_prompt}, {"role": "assistant", "content": s.assistant_response}]}

    def score():
        out = {}
        for lv, items in rungs.items():
            ok = sum(bool(skill.score_sample(s, engine.generate([{"role": "user", "content": s["user_prompt"]}], 16)).correct)
                     for s in items)
            out[lv] = ok / len(items)
        return out

    t0, i = time.perf_counter(), 0
    while engine.global_step < args.steps:
        rows = [row(s) for s in skill.generate(args.level, int(args.file_rows * 0.8), 1000 + i)]
        for lv in range(1, args.level):
            rows += [row(s) for s in skill.generate(lv, int(args.file_rows * 0.2 / (args.level - 1)), 5000 + 31 * i + lv)]
        random.Random(i).shuffle(rows)
        path = work / f"file-{i}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        engine.train_file(path, schema_id="chat_sft_v1")
        i += 1
        print(json.dumps({"step": engine.global_step, "seconds": round(time.perf_counter() - t0, 1), "acc": score()}),
              flush=True)
    return 0


def summary(points: list[dict], level: int, steps: int) -> dict:
    top = [(p["step"], p["acc"][str(level)]) for p in points]
    held = next((s2 for (s1, a1), (s2, a2) in zip(top, top[1:]) if a1 >= BAR and a2 >= BAR), None)
    late = [a for s, a in top if s >= steps * 2 / 3]
    return {"first_held": held, "late_mean": sum(late) / len(late) if late else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lr", type=float, nargs="+", default=[1e-3, 3e-4], help="one contender per value")
    parser.add_argument("--schedule", choices=["constant", "wsd"], default="constant")
    parser.add_argument("--level", type=int, default=3, help="binary level trained (lower levels rehearsed)")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps per contender")
    parser.add_argument("--file-rows", type=int, default=3000, help="rows per generated file (one eval after each)")
    parser.add_argument("--model", default=None, help="model folder (default: the tiny model, built in a temp dir)")
    parser.add_argument("--write-docs", action="store_true", help="write the table into docs/benchmarks.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.level < 2:
        parser.error("--level must be >= 2 (lower levels are rehearsed)")
    if args.worker:
        args.lr = args.lr[0]
        return worker(args)
    from benchmarks.report import BenchmarkRun, markdown_table

    run = BenchmarkRun.start("learning_rate", argv=None if argv is None else [__file__, *argv])
    tmp = Path(tempfile.mkdtemp(prefix="cadence-lr-"))
    if args.model is None:
        from scripts.make_tiny_model import build_model

        args.model = str(build_model(tmp / "model", preset="tiny"))
    print(f"binary level {args.level}, {args.steps} steps per contender, {args.schedule} schedule; contenders run "
          f"side by side, one thread each; load average {os.getloadavg()[0]:.1f}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    procs = {}
    for lr in args.lr:
        cmd = [sys.executable, __file__, "--worker", "--lr", repr(lr), "--schedule", args.schedule, "--level",
               str(args.level), "--steps", str(args.steps), "--file-rows", str(args.file_rows), "--model", args.model,
               "--workdir", str(tmp / f"lr-{lr:g}")]
        procs[lr] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    points = {lr: [json.loads(line) for line in p.stdout if line.startswith("{")] for lr, p in procs.items()}
    for lr, p in procs.items():
        if p.wait() != 0 or not points[lr]:
            print(f"contender lr {lr:g} failed (exit {p.returncode})")
            return 1
    headers = ["lr", "step"] + [f"L{lv} %" for lv in range(1, args.level + 1)]
    rows = [[f"{lr:g}", pt["step"]] + [round(100 * pt["acc"][str(lv)]) for lv in range(1, args.level + 1)]
            for lr in args.lr for pt in points[lr]]
    print(markdown_table(headers, rows))
    sums = {lr: summary(points[lr], args.level, args.steps) for lr in args.lr}
    lines = [f"lr {lr:g}: L{args.level} first held >= {BAR:.0%} on two evals in a row at step "
             f"{s['first_held'] if s['first_held'] is not None else 'never'}; mean L{args.level} over the last third "
             f"{100 * s['late_mean']:.0f} %" for lr, s in sums.items()]
    print("\n".join(lines), flush=True)
    if args.write_docs:
        run.write_docs(f"Binary level {args.level} learned by a fresh tiny model per learning rate (80 % level "
                       f"{args.level}, 20 % lower levels; equal steps, side by side)", headers, rows,
                       lines + [f"{args.schedule} schedule, warmup 20, micro_batch_tokens 1024; 24 ladder items per "
                                "rung, greedy, exact match."])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
