"""Curriculum benchmark: minutes to each level in the closed loop, and accuracy at equal wall-clock vs TRL.

Part A runs the whole embedded default (`cadence start` on a fresh base
dir with the repo's config.json, ports moved) for --minutes per champion rule
(--rule paired|margin|both) and reports, per skill, the minutes from start to
each level the curriculum promoted it to; how many versions were promoted; the
lag between a checkpoint that the paired test judges better than the version
then served and a version at least that new being served (both rules keep the
paired verdicts, so the margin run shows the same measure), and the minutes in
which such a checkpoint had waited over 5 min; the seconds from each level-up to
the claim of the first file with rows of the new level; how each mastered level
held after its level-up (its ladder accuracy on every later checkpoint: lowest,
readings below the bar, lowest mean of the curriculum's window) and what the
served versions read on it (lowest, minutes a version under the bar was
served); the newest checkpoint's accuracy on every ladder rung; the scoring
cost; and the last served version's accuracy on --fresh-items new items of
every level (a seed no ladder or batch uses): the ladder's fixed 24 items chose
it, so this is the unbiased figure.

Part B takes one fixed generated data set (binary levels 1-2 from the built-in
skill, seeded) and trains the same tiny model for the same wall-clock budget
with (a) Cadence's TrainerEngine and (b) TRL's SFTTrainer (bfd packing, same
learning rate, warmup, tokens per step and assistant-only labels), then scores
both on the same held-out binary level-2 problems by greedy generation and the
skill's exact-match scorer.

Run as:
    python3 benchmarks/curriculum.py [--minutes 5] [--rule both] [--fresh-items 100] [--budget 90] [--skip-loop] [--skip-equal] [--write-docs]

With --write-docs each closed-loop run goes to its rule's region of
docs/benchmarks.md (curriculum_paired, curriculum_margin) and part B to the
curriculum region, each with the command, date, host, load and commit.
"""
from __future__ import annotations

import pathlib, sys; sys.path[0] = str(pathlib.Path(__file__).resolve().parents[1])  # run as `python benchmarks/curriculum.py`: the repo root, not benchmarks/

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from benchmarks.report import BenchmarkRun
from core.state.queue_records import DATA_SUFFIX, META_SUFFIX, read_queue_meta
from core.config import DataManagerConfig, Layout
from core.state.curriculum import CurriculumState, read_curriculum
from core.state.deployment import DeployEvent, deployment_events, read_deployment_state
from core.state.ledger import ScoreStatus, read_ledger


# ------------------------------------------------------------------------------------------- part A
def _ts(text: str | None) -> float | None:
    """Epoch seconds of an ISO time (the curriculum writes +00:00, the queue and the ledger write Z)."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _step(name: str | None) -> int | None:
    return int(name.rsplit("-", 1)[1]) if name and name.startswith("checkpoint-") else None


def serving_lag(base: Path, end: float) -> dict:
    """For every checkpoint the paired test judged better than the version served at that moment: the seconds until
    a checkpoint at least as new was served (censored at the end of the run), and the minutes in which some such
    checkpoint had been waiting for more than 5 minutes."""
    layout = Layout.from_base(base)
    ledger = read_ledger(layout)
    promoted = [(d.ts, _step(d.checkpoint)) for d in deployment_events(layout)
                if d.event is DeployEvent.promoted and _step(d.checkpoint) is not None]
    better = []
    for entry in (ledger.checkpoints.values() if ledger else ()):
        first = next((v for v in entry.verdicts or [] if v.paired.accepted), None)
        if first:
            better.append((_ts(first.at), entry.step, entry.checkpoint))
    lags = []
    for at, step, name in sorted(better):
        served = next((ts for ts, s in sorted(promoted) if s >= step and ts >= at - 60), None)
        lags.append((name, (served if served is not None else end) - at, served is None))
    waiting = 0
    if better:
        t = min(b[0] for b in better)
        while t < end:
            if any(at <= t - 300 and (next((ts for ts, s in sorted(promoted) if s >= step and ts >= at - 60), None) or end + 1) > t
                   for at, step, _ in better):
                waiting += 1
            t += 60
    times = sorted(ts for ts, _ in promoted)
    gaps = [b - a for a, b in zip(times, times[1:] + [end])]
    return {"better": len(better), "lags": lags, "minutes_waiting_over_5": waiting, "promotions": len(promoted),
            "longest_gap_min": max(gaps) / 60 if gaps else None}


def level_up_lag(base: Path, curriculum: CurriculumState) -> list[tuple[str, int, float | None]]:
    """Per promotion (skill, new level): seconds from the level-up to the claim of the first file holding rows of
    that skill at the new level (None: none trained before the end)."""
    files = []
    for folder in ("recently_completed", "processing"):
        d = base / "queue" / folder
        for meta_path in d.glob(f"*{META_SUFFIX}") if d.is_dir() else []:
            meta = read_queue_meta(meta_path)
            data = d / (meta_path.name[:-len(META_SUFFIX)] + DATA_SUFFIX)
            started = _ts(meta.started_at)
            if started is None or not data.exists():
                continue
            levels = set()
            for line in data.read_text().splitlines():
                m = json.loads(line).get("metadata") or {}
                levels.add((m.get("skill"), m.get("level")))
            files.append((started, levels))
    out = []
    for skill, state in curriculum.skills.items():
        for p in state.promotions:
            at = _ts(p.at)
            first = min((st for st, lv in files if st >= at - 1 and any(s == skill and (l or 0) >= p.to for s, l in lv)),
                        default=None)
            out.append((skill, p.to, None if first is None else first - at))
    return out


def ladder_now(base: Path) -> dict:
    """The newest scored checkpoint's accuracy on every ladder rung."""
    ledger = read_ledger(Layout.from_base(base))
    entries = [e for e in ledger.checkpoints.values() if e.status is ScoreStatus.scored] if ledger else []
    if not entries:
        return {}
    last = max(entries, key=lambda e: e.step)
    return {"checkpoint": last.checkpoint, **{k: r.accuracy for k, r in sorted((last.sets or {}).items())
                                              if r.kind == "ladder"}}


def passed_levels(curriculum: CurriculumState):
    """(skill, promotion, ladder set id) per level the curriculum promoted a skill past, one level at a time."""
    for skill, state in curriculum.skills.items():
        for p in state.promotions:
            if p.step is not None and p.to == p.from_level + 1:
                yield skill, p, f"ladder:{skill}:L{p.from_level}"


def kept_after_mastery(base: Path, curriculum: CurriculumState, started: float, bar: float, window: int) -> list[dict]:
    """Per mastered level (the curriculum promoted the skill past it): its ladder accuracy on every checkpoint scored
    after that promotion's step, as the lowest single reading, the readings below the bar, and the lowest mean of
    `window` consecutive readings (the window the curriculum itself masters a level on: one reading of 24 items
    moves by 4 points per item, so a level held at 88 % reads under 80 % now and then by chance alone)."""
    ledger = read_ledger(Layout.from_base(base))
    entries = sorted((e for e in (ledger.checkpoints.values() if ledger else ()) if e.status is ScoreStatus.scored and e.sets),
                     key=lambda e: e.step)
    out = []
    for skill, p, key in passed_levels(curriculum):
        acc = [e.sets[key].accuracy for e in entries if e.step > p.step and key in e.sets
               and e.sets[key].accuracy is not None]
        if not acc:
            continue
        means = [sum(acc[i:i + window]) / window for i in range(len(acc) - window + 1)] or [sum(acc) / len(acc)]
        out.append({"skill": skill, "level": p.from_level, "from_min": (_ts(p.at) - started) / 60, "n": len(acc),
                    "min": min(acc), "below": sum(a + 1e-9 < bar for a in acc), "min_mean": min(means),
                    "last": acc[-1]})
    return out


def served_after_mastery(base: Path, curriculum: CurriculumState, started: float, end: float, bar: float) -> list[dict]:
    """Per mastered level: what box B served from the first promotion of a checkpoint at or past the level-up's step
    to the end of the run: each served version's reading on the level's rung (from the ledger, where the deployed
    version is scored on every rung as it appears), the lowest one, and the minutes a version under the bar was
    served. This is what a user of the API gets; `kept_after_mastery` is what training holds."""
    layout = Layout.from_base(base)
    ledger = read_ledger(layout)
    entries = {e.checkpoint: e for e in (ledger.checkpoints.values() if ledger else ()) if e.sets}
    promoted = sorted((d.ts, d.checkpoint) for d in deployment_events(layout)
                      if d.event is DeployEvent.promoted and _step(d.checkpoint) is not None)
    out = []
    for skill, p, key in passed_levels(curriculum):
        served = [(ts, name) for ts, name in promoted if _step(name) >= p.step]
        reads = []
        for i, (ts, name) in enumerate(served):
            until = served[i + 1][0] if i + 1 < len(served) else end
            r = entries[name].sets.get(key) if name in entries else None
            if r is not None and r.accuracy is not None:
                reads.append((r.accuracy, (until - ts) / 60))
        if reads:
            out.append({"skill": skill, "level": p.from_level, "from_min": (served[0][0] - started) / 60,
                        "n": len(reads), "min": min(a for a, _ in reads), "last": reads[-1][0],
                        "minutes_below": sum(m for a, m in reads if a + 1e-9 < bar),
                        "minutes": sum(m for _, m in reads)})
    return out


FRESH_SEED = 424242  # no ladder rung (data_manager/ladder.py) or generated batch uses it


def fresh_accuracy(cfg_path: Path, model: Path, rungs: list[tuple[str, int]], n: int) -> dict[str, float]:
    """Accuracy of `model` on n new items per (skill, level), generated in-process by the built-in skill and scored
    with the comparison engine's own generation budget and the skill's scorer."""
    from core.config import load_config
    from data_manager.skills import get_skill
    from management.scoring import CheckpointScorer, answer_budget

    cfg = load_config(cfg_path)
    scorer = CheckpointScorer(cfg, model)
    out = {}
    try:
        for name, level in rungs:
            skill = get_skill(name)
            samples = [x.to_dict() for x in skill.generate(level, n, FRESH_SEED)]
            budget, _ = answer_budget(scorer.tokenizer, samples, cfg.comparison.max_new_tokens)
            answers, _ = scorer.generate([[{"role": "user", "content": x["user_prompt"]}] for x in samples], budget)
            out[f"{name}:L{level}"] = sum(skill.score_sample(x, a).correct for x, a in zip(samples, answers)) / n
    finally:
        scorer.close()
    return out


def fresh_report(base: Path, target: str, curriculum: CurriculumState, n: int) -> dict:
    """The version `target` serves at the end, on n new items of every level up to each skill's current one, beside
    its ladder reading ({} when nothing is served or n is 0)."""
    active = read_deployment_state(Layout.from_base(base)).active(target)
    if not n or active is None or not Path(active.path or "").is_dir():
        return {}
    levels = [(sk, lv) for sk, st in curriculum.skills.items() for lv in range(1, st.level + 1)]
    fresh = fresh_accuracy(base / "config.json", Path(active.path), levels, n)
    ledger = read_ledger(Layout.from_base(base))
    entry = ledger.checkpoints.get(active.checkpoint or "") if ledger else None
    ladder = {k.split(":", 1)[1]: r.accuracy for k, r in ((entry.sets or {}).items() if entry else ()) if r.kind == "ladder"}
    return {"version": active.version, "n": n, "rungs": {k: (v, ladder.get(k)) for k, v in fresh.items()}}


def closed_loop(minutes: float, model_dir: Path, rule: str, port_base: int, fresh_items: int = 100) -> dict:
    """One run of part A; prints its report and returns the figures --write-docs puts in a table."""
    base = Path(tempfile.mkdtemp(prefix=f"cadence-curriculum-{rule}-"))
    shutil.copytree(model_dir, base / "models" / "base")
    from core.config import Layout
    from core.state.metrics import read_metrics
    from core.services import shifted_config

    cfg = shifted_config(0, min_free_disk_gb=0.5, warn_free_disk_gb=1)
    inference, monitor, binary, syllo = (port_base + i for i in range(4))
    cfg["inference"]["port"], cfg["monitor"]["port"] = inference, monitor
    cfg["deploy"]["targets"][0]["server_url"] = f"http://127.0.0.1:{inference}"
    cfg["data_manager"]["skills"] = [{"name": "binary", "url": f"http://127.0.0.1:{binary}"},
                                     {"name": "syllo", "url": f"http://127.0.0.1:{syllo}"}]
    cfg.setdefault("comparison", {})["rule"] = rule
    (base / "config.json").write_text(json.dumps(cfg, indent=2))
    services = [sys.executable, "-m", "core.cli"]
    started = time.time()
    load0 = os.getloadavg()[0]
    subprocess.run(services + ["start", "--config", str(base / "config.json")], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)
    try:
        time.sleep(minutes * 60)
    finally:
        end = time.time()
        load1 = os.getloadavg()[0]
        subprocess.run(services + ["stop", "--config", str(base / "config.json")], cwd=REPO, stdout=subprocess.DEVNULL)
    cur = read_curriculum(Layout.from_base(base).curriculum) or CurriculumState()
    steps = [m.global_step for m in read_metrics(Layout.from_base(base).metrics)][-50:]
    print(f"\nA. closed loop, rule {rule}, {minutes:g} min on the embedded default (base dir {base}); "
          f"load average {load0:.1f} at start, {load1:.1f} at end")
    print(f"{'skill':<8} {'level':>5}  minutes to each level")
    levels = {}
    for skill, state in cur.skills.items():
        marks = []
        for p in state.promotions:
            marks.append(f"L{p.to} @ {(_ts(p.at) - started) / 60:.1f} min (step {p.step})")
        print(f"{skill:<8} {state.level:>5}  {', '.join(marks) or '-'}")
        levels[skill] = f"level {state.level}: " + (", ".join(marks) or "no level-up")
    lag = serving_lag(base, end)
    summary = {"rule": rule, "minutes": minutes, "load": (load0, load1), "levels": levels,
               "promotions": lag["promotions"], "global_step": max(steps or [0]), "better": lag["better"],
               "lag_median_min": None, "lag_max_min": None, "waiting_over_5": lag["minutes_waiting_over_5"],
               "never_served": 0, "rungs": {}, "level_up_s": []}
    summary["longest_gap_min"] = lag["longest_gap_min"]
    print(f"versions promoted: {lag['promotions']}; global step reached: {max(steps or [0])}; longest time without a "
          f"promotion: " + ("-" if lag["longest_gap_min"] is None else f"{lag['longest_gap_min']:.1f} min"))
    waits = [x for _, x, _ in lag["lags"]]
    if waits:
        censored = sum(1 for *_, c in lag["lags"] if c)
        summary["lag_median_min"] = sorted(waits)[len(waits) // 2] / 60
        summary["lag_max_min"], summary["never_served"] = max(waits) / 60, censored
        print(f"checkpoints better on the paired test than the version then served: {lag['better']}; lag until served "
              f"(or the end): median {sorted(waits)[len(waits) // 2] / 60:.1f} min, max {max(waits) / 60:.1f} min; "
              f"{censored} never served; minutes with a better checkpoint unserved for > 5 min: {lag['minutes_waiting_over_5']}")
    else:
        print("checkpoints better on the paired test than the version then served: 0")
    ups = level_up_lag(base, cur)
    summary["level_up_s"] = ups
    if ups:
        print("level-up -> first step on next-level data: " + ", ".join(
            f"{s} L{l} {'-' if x is None else f'{x:.0f}s'}" for s, l, x in ups))
    dmc = DataManagerConfig.model_validate(cfg.get("data_manager", {}))
    bar, window = dmc.threshold, dmc.window
    kept = kept_after_mastery(base, cur, started, bar, window)
    summary["kept"], summary["bar"], summary["window"] = kept, bar, window
    if kept:
        print(f"mastered levels after their level-up (ladder accuracy per scored checkpoint; bar {bar:.0%}, "
              f"mean of {window} consecutive):")
        for k in kept:
            print(f"  {k['skill']} L{k['level']} from {k['from_min']:.1f} min: {k['n']} checkpoints, lowest {k['min']:.0%}, "
                  f"{k['below']} below the bar, lowest mean of {window} {k['min_mean']:.0%}, last {k['last']:.0%}")
    served = served_after_mastery(base, cur, started, end, bar)
    summary["served"] = served
    if served:
        print("served versions on the mastered levels (from the first served checkpoint past the level-up):")
        for k in served:
            print(f"  {k['skill']} L{k['level']} from {k['from_min']:.1f} min: {k['n']} versions, lowest {k['min']:.0%}, "
                  f"served under the bar {k['minutes_below']:.1f} of {k['minutes']:.1f} min, last {k['last']:.0%}")
    summary["fresh"] = fresh_report(base, cfg["deploy"]["targets"][0]["name"], cur, fresh_items)
    if summary["fresh"]:
        f = summary["fresh"]
        print(f"last served version {f['version']} on {f['n']} new items per level (its ladder reading): " + ", ".join(
            f"{k} {v:.0%} ({'-' if lad is None else f'{lad:.0%}'})" for k, (v, lad) in f["rungs"].items()))
    rungs = ladder_now(base)
    summary["rungs"] = {k: v for k, v in rungs.items() if k != "checkpoint"}
    if rungs:
        print("ladder accuracy of the newest scored checkpoint (" + rungs.pop("checkpoint") + "): "
              + ", ".join(f"{k.split(':', 1)[1]} {v:.0%}" for k, v in rungs.items() if v is not None))
    ledger = read_ledger(Layout.from_base(base))
    if ledger is not None:
        entries = list(ledger.checkpoints.values())
        secs = [e.score_seconds for e in entries if e.status is ScoreStatus.scored and e.score_seconds]
        fills = sum(len(e.baseline_scored or {}) for e in entries)
        if secs:
            print(f"scoring: {len(secs)} checkpoints, median {sorted(secs)[len(secs) // 2]:.0f}s each; "
                  f"deployed-version scorings of a new set: {fills}")
    return summary


# ------------------------------------------------------------------------------------------- part B
def make_data(n_per_level: int, n_eval: int):
    from data_manager.manager import to_training_row
    from data_manager.skills import get_skill

    skill = get_skill("binary")
    rows = []
    for level in (1, 2):
        rows += [to_training_row(s.to_dict() if hasattr(s, "to_dict") else s) for s in skill.generate(level, n_per_level, 1000 + level)]
    import random

    random.Random(0).shuffle(rows)
    evals = [s.to_dict() if hasattr(s, "to_dict") else s for s in skill.generate(2, n_eval, 987654)]
    return skill, rows, evals


def score(skill, evals, generate) -> float:
    correct = 0
    for s in evals:
        answer = generate([{"role": "user", "content": s["user_prompt"]}])
        correct += bool(skill.score_sample(s, answer).correct)
    return correct / len(evals)


def run_cadence(model_dir: Path, rows, budget: float, workdir: Path, lr: float):
    from core.config import from_dict
    from trainer import TrainerEngine, TrainingHooks

    data = workdir / "equal.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = from_dict({"paths": {"base_dir": str(workdir / "cadence")}, "model": {"base_model": str(model_dir), "max_length": 512},
                     "training": {"learning_rate": lr, "warmup_steps": 20, "micro_batch_tokens": 1024, "epochs": 50,
                                  "eval_steps": 0, "save_steps": 100000, "eval_split_fraction": 0.0},
                     "safety": {"min_free_disk_gb": 0}}, workdir)
    cfg.layout.ensure()

    class Budget(TrainingHooks):
        deadline = None

        def control(self):
            if self.deadline is None:
                self.deadline = time.perf_counter() + budget
            return "stop" if time.perf_counter() >= self.deadline else None

    engine = TrainerEngine(cfg, Budget()).setup()
    result = engine.train_file(data, schema_id="chat_sft_v1")
    gen = lambda messages: engine.generate(messages, 12)
    return result.steps, result.tokens, gen


def run_trl(model_dir: Path, rows, budget: float, workdir: Path, lr: float):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from trainer.data import encode_examples, load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    examples = encode_examples(rows, tokenizer, "chat_sft_v1", 512)
    ds = Dataset.from_list([{"input_ids": e.input_ids, "labels": e.labels} for e in examples])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    seen = {"tokens": 0, "steps": 0}

    class Budget(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.deadline = time.perf_counter() + budget

        def on_step_end(self, args, state, control, **kw):
            seen["steps"] = state.global_step
            if time.perf_counter() >= self.deadline:
                control.should_training_stop = True

    args = SFTConfig(output_dir=str(workdir / "trl"), per_device_train_batch_size=1, gradient_accumulation_steps=1,
                     learning_rate=lr, lr_scheduler_type="constant_with_warmup", warmup_steps=20, num_train_epochs=50,
                     optim="adamw_torch", adam_beta2=0.95, weight_decay=0.0, max_grad_norm=1.0, logging_steps=50,
                     save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=42,
                     packing=True, packing_strategy="bfd", max_length=1024, dataset_num_proc=None)
    trainer = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, callbacks=[Budget()])
    trainer.train()
    model.eval()

    @torch.no_grad()
    def gen(messages):
        enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**enc, max_new_tokens=12, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    return seen["steps"], None, gen


def equal_compute(budget: float, model_dir: Path, lr: float) -> dict:
    """Part B; prints its report and returns {contender: (optimizer steps, held-out accuracy)}."""
    skill, rows, evals = make_data(1500, 100)
    workdir = Path(tempfile.mkdtemp(prefix="cadence-equal-"))
    print(f"\nB. equal wall-clock: {budget:g} s of training each on the same {len(rows)} generated binary L1+L2 rows, "
          f"scored on {len(evals)} held-out binary L2 problems (exact match, greedy)")
    res = {}
    for name, fn in (("Cadence TrainerEngine", run_cadence), ("TRL SFTTrainer (bfd 1024)", run_trl)):
        steps, _tokens, gen = fn(model_dir, rows, budget, workdir, lr)
        res[name] = (steps, score(skill, evals, gen))
        print(f"{name:<28} optimizer steps {steps:>5}   held-out accuracy {res[name][1]:.0%}", flush=True)
    (c_steps, c_acc), (t_steps, t_acc) = res.values()
    print(f"Cadence / TRL: {c_steps / max(1, t_steps):.2f}x optimizer steps in the same time; "
          f"accuracy {c_acc:.0%} vs {t_acc:.0%}")
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Minutes to each curriculum level, and accuracy at equal wall-clock vs TRL.")
    parser.add_argument("--minutes", type=float, default=5.0, help="part A: how long the closed loop runs (per rule)")
    parser.add_argument("--rule", choices=["paired", "margin", "both"], default="both",
                        help="part A: champion rule (comparison.rule); both = one run each, paired first")
    parser.add_argument("--port-base", type=int, default=18500, help="part A: first of the 4 ports per run (+20 per run)")
    parser.add_argument("--budget", type=float, default=90.0, help="part B: training seconds per contender")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--fresh-items", type=int, default=100,
                        help="part A: new items per level the last served version is scored on at the end (0 = none)")
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-equal", action="store_true")
    parser.add_argument("--write-docs", action="store_true", help="write the result tables into docs/benchmarks.md")
    args = parser.parse_args(argv)
    run = BenchmarkRun.start("curriculum", argv=None if argv is None else [__file__, *argv])
    from scripts.make_tiny_model import build_model

    model_dir = Path(tempfile.mkdtemp(prefix="cadence-model-")) / "tiny"
    build_model(model_dir, preset="tiny")
    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    loops, equal = [], {}
    if not args.skip_loop:
        for i, rule in enumerate(["paired", "margin"] if args.rule == "both" else [args.rule]):
            loops.append(closed_loop(args.minutes, model_dir, rule, args.port_base + 20 * i, args.fresh_items))
    if not args.skip_equal:
        equal = equal_compute(args.budget, model_dir, args.lr)
    if args.write_docs:
        write_docs(run, loops, equal, args)
    return 0


def loop_row(s: dict) -> list[str]:
    return [f"A. closed loop, rule {s['rule']}, {s['minutes']:g} min (load {s['load'][0]:.1f} -> {s['load'][1]:.1f})",
            "; ".join(f"{skill} {text}" for skill, text in s["levels"].items()) or "-",
            f"{s['promotions']} versions promoted (longest time without one: "
            + ("-" if s.get("longest_gap_min") is None else f"{s['longest_gap_min']:.1f} min")
            + f"), global step {s['global_step']}; {s['better']} checkpoints better "
            "on the paired test, median lag until served "
            + ("-" if s["lag_median_min"] is None else f"{s['lag_median_min']:.1f} min (max {s['lag_max_min']:.1f}, "
               f"{s['never_served']} never served)")
            + f"; minutes with a better checkpoint unserved > 5 min: {s['waiting_over_5']}"
            + "; level-up to first next-level step: " + (", ".join(
                f"{sk} L{lv} {'-' if x is None else f'{x:.0f} s'}" for sk, lv, x in s["level_up_s"]) or "-")
            + "; mastered levels after their level-up (lowest reading / readings below the bar / lowest mean of "
            + f"{s.get('window', 3)} consecutive): " + (", ".join(
                f"{k['skill']} L{k['level']} {k['min']:.0%} / {k['below']} of {k['n']} / {k['min_mean']:.0%}"
                for k in s.get("kept", [])) or "-")
            + "; served versions on the mastered levels (lowest reading / minutes served under the bar): " + (", ".join(
                f"{k['skill']} L{k['level']} {k['min']:.0%} / {k['minutes_below']:.1f} of {k['minutes']:.1f} min"
                for k in s.get("served", [])) or "-")
            + "; ladder accuracy at the end: " + (", ".join(
                f"{k.split(':', 1)[1]} {v:.0%}" for k, v in s["rungs"].items() if v is not None) or "-")
            + (f"; last served version ({s['fresh']['version']}) on {s['fresh']['n']} new items per level "
               "(its ladder reading): " + ", ".join(
                   f"{k} {v:.0%} ({'-' if lad is None else f'{lad:.0%}'})" for k, (v, lad) in s["fresh"]["rungs"].items())
               if s.get("fresh") else "")]


def write_docs(run: BenchmarkRun, loops: list[dict], equal: dict, args) -> None:
    """Each closed-loop run into its rule's region (curriculum_paired, curriculum_margin), so the two rules can be
    run one at a time (each on a quiet machine) and both stay on the page; part B into the curriculum region."""
    headers = ["run", "result", "detail"]
    for s in loops:
        run.write_docs(f"Curriculum: the closed loop with the {s['rule']} champion rule", headers, [loop_row(s)],
                       section=f"curriculum_{s['rule']}")
    if equal:
        rows = [[f"B. equal wall-clock ({args.budget:g} s), held-out binary L2 exact match", name,
                 f"{acc:.0%} after {steps} optimizer steps"] for name, (steps, acc) in equal.items()]
        run.write_docs("Curriculum: accuracy at equal wall-clock vs TRL", headers, rows)


if __name__ == "__main__":
    sys.exit(main())
