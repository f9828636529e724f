"""Write a realistic Cadence run into a base_dir, to try the monitor without training (and for its tests).

What it writes goes through the owners' code wherever there is one: queue files
through the real Ingestor (so sidecars and reject reports are the genuine
article), curriculum evals through data_manager's Curriculum; metrics lines
and the status file in the trainer's formats; checkpoint folders with a
manifest (listed like real ones, but without weights); a ranking ledger and
deployment history through their models (core/state/ledger.py, core/state/deployment.py).

Run as:
    cadence monitor-demo --base-dir /tmp/cadence-demo [--steps 3000] [--live-pid PID]
    cadence monitor --set paths.base_dir=/tmp/cadence-demo
"""
from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

from core.atomic_io import atomic_write_json
from core.state.deployment import DeploymentEvent, DeploymentState, append_deployment_event, write_deployment_state
from core.state.events import append_event
from core.state.ledger import Ledger, write_ledger
from core.state.metrics import Metric, append_metrics
from core.state.trainer_state import TrainerState, write_trainer_state
from core.state.training_status import TrainingStatus, write_training_status
from core.ingest import Ingestor
from data_manager.curriculum_manager import Curriculum

PROMPTS = [("What is ①⓪ + ①①?", "①⓪①"), ("Decrement ①⓪⓪.", "⓪①①"), ("Convert 6 to binary.", "①①⓪"),
           ("What is ①① × ①⓪?", "①①⓪"), ("What is ①①① - ⓪①⓪?", "①⓪①")]


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def metric_lines(steps: int, start_ts: float, seed: int = 0, eval_every: int = 50, ckpt_every: int = 500,
                 file_steps: int = 1000, overfit_after: float = 0.8):
    """Yield train/eval/checkpoint records of a plausible run: loss decays with noise; late in the run the
    validation loss turns up (so the overfitting warning has something to warn about)."""
    rng = random.Random(seed)
    for step in range(1, steps + 1):
        frac = step / steps
        base = 0.35 + 2.2 * math.exp(-step / (steps * 0.18))
        loss = max(0.01, base * (1 + rng.gauss(0, 0.06)) + (0.4 if rng.random() < 0.002 else 0.0))
        lr = 2e-4 * min(1.0, step / 100)
        ts = start_ts + step * 1.3
        fname = f"binary_L{1 + (step - 1) // file_steps}.jsonl"
        fstep = (step - 1) % file_steps + 1
        yield {"ts": ts, "type": "train", "global_step": step, "file": fname, "file_step": fstep,
               "file_total_steps": file_steps, "loss": round(loss, 5), "lr": lr,
               "grad_norm": round(abs(rng.gauss(0.8, 0.2)), 4), "tokens": 16000,
               "tokens_per_s": round(12300 + rng.gauss(0, 400), 1), "step_time_s": 1.3}
        if step % eval_every == 0:
            val = base * 1.04 + 0.02 + (max(0.0, frac - overfit_after) * 3.0) ** 1.5
            prompt, golden = PROMPTS[(step // eval_every) % len(PROMPTS)]
            answer = golden if rng.random() < min(0.95, frac + 0.2) else golden[::-1]
            yield {"ts": ts + 0.5, "type": "eval", "global_step": step, "val_loss": round(val, 5),
                   "fixed_val_loss": round(val * 1.02, 5),
                   "preview": {"prompt": prompt, "golden": golden, "answer": answer, "match": answer == golden}}
        if step % ckpt_every == 0:
            yield {"ts": ts + 1.0, "type": "checkpoint", "global_step": step, "path": f"checkpoint-{step}",
                   "reason": "save_steps"}


def write_metrics(path: Path, steps: int, start_ts: float, **kw) -> int:
    """Write the run in large blocks (fast enough for a million steps)."""
    return append_metrics(path, (Metric(**rec) for rec in metric_lines(steps, start_ts, **kw)))


def write_run(cfg, steps: int = 3000, live_pid: int | None = None, now: float | None = None) -> dict:
    """A whole demo base_dir. With `live_pid`, .pids/daemon.pid and trainer.pid name it (a stand-in daemon)."""
    layout = cfg.layout.ensure()
    now = time.time() if now is None else now
    start = now - steps * 1.3 - 5
    write_metrics(layout.metrics, steps, start)
    # checkpoints (folders with a manifest, listed like real ones)
    ckpt_steps = [s for s in range(500, steps + 1, 500)][-4:]
    for s in ckpt_steps:
        d = layout.current_model / f"checkpoint-{s}"
        (d / "training_state").mkdir(parents=True, exist_ok=True)
        atomic_write_json(d / "manifest.json", {"files": {}, "global_step": s})
        write_trainer_state(d / "training_state", TrainerState(
            global_step=s, files_done=[f"binary_L{i}.jsonl" for i in range(1, s // 1000 + 1)], reason="save_steps"))
    # ranking ledger and deployment history in management/'s formats (model_comparison_engine, deployment_orchestrator)
    entries = {}
    for i, s in enumerate(ckpt_steps):
        val = 0.35 + 2.2 * math.exp(-s / (steps * 0.18)) * 1.04 + 0.02 + (0.05 if i == len(ckpt_steps) - 1 else 0)
        acc = {"binary": round(min(0.97, 0.4 + 0.15 * i), 3), "syllo": round(0.2 + 0.1 * i, 3)}
        entries[f"checkpoint-{s}"] = {
            "checkpoint": f"checkpoint-{s}", "step": s, "content_id": f"{s:064x}", "status": "scored",
            "scored_at": _iso(now - (len(ckpt_steps) - i) * 600),
            "metrics": {"val_loss": round(val, 4), "anchor_loss": round(1.2 - 0.01 * i, 4),
                        "accuracy_mean": round(sum(acc.values()) / len(acc), 4),
                        **{f"accuracy:{k}": v for k, v in acc.items()}},
            "accuracy": {k: {"level": 2, "accuracy": v, "correct": int(v * 50), "total": 50} for k, v in acc.items()}}
    ranking = sorted(entries, key=lambda n: entries[n]["metrics"]["val_loss"])
    champion = ranking[0] if ranking else None
    deployed = champion  # the champion was deployed (and so is marked on the loss chart)
    write_ledger(layout, Ledger.model_validate({
        "format": 1, "primary_metric": "val_loss", "updated_at": _iso(now), "checkpoints": entries, "ranking": ranking,
        "champion": {"checkpoint": champion, "step": entries[champion]["step"], "reason": "best val_loss"} if champion else None}))
    if deployed:
        dstep = entries[deployed]["step"]
        version = f"v001_{time.strftime('%Y%m%d', time.gmtime(now))}_step{dstep}"
        t0 = start + dstep * 1.3 + 60
        for k, event in enumerate(("started", "copied", "verified", "loaded", "health_ok", "promoted")):
            append_deployment_event(layout, DeploymentEvent(
                ts=t0 + 2 * k, deploy_id="d1", event=event, target="local", version=version,
                content_id=entries[deployed]["content_id"], checkpoint=deployed))
        write_deployment_state(layout, DeploymentState.model_validate({"targets": {"local": {"active": {
            "version": version, "content_id": entries[deployed]["content_id"], "checkpoint": deployed,
            "path": f"models/deployed/{version}", "deployed_at": t0 + 10}, "previous": None}}, "in_progress": None}))
    # queue: genuine ingest (sidecars, reject reports)
    ingestor = Ingestor(cfg)
    src = layout.base_dir / "demo-src"
    src.mkdir(exist_ok=True)
    for i, (name, prio) in enumerate([("binary_L4.jsonl", "high"), ("syllo_L2.jsonl", "normal"),
                                      ("operator_notes.jsonl", "low")]):
        rows = [{"messages": [{"role": "user", "content": f"{p} #{i}-{k}"}, {"role": "assistant", "content": a}]}
                for k, (p, a) in enumerate(PROMPTS * 4)]
        (src / name).write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
        ingestor.ingest_path(src / name, priority=prio)
    (src / "broken_upload.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\nnot json\n')
    ingestor.ingest_path(src / "broken_upload.jsonl")
    # curriculum
    cur = Curriculum.from_config(cfg)
    for k, acc in enumerate([0.55, 0.7, 0.85, 0.9, 0.92, 0.6, 0.72]):
        cur.record_eval("binary", cur.level("binary"), acc, step=(k + 1) * 400)
    for k, acc in enumerate([0.3, 0.42, 0.5]):
        cur.record_eval("syllo", cur.level("syllo"), acc, step=(k + 1) * 400)
    # events (daemon + lifecycle; the queue and ingest wrote theirs already)
    for ev in ({"source": "daemon", "event": "started"}, {"source": "daemon", "event": "file_started",
                                                         "file": f"binary_L{steps // 1000 + 1}.jsonl"},
               {"source": "lifecycle", "event": "scored", "checkpoint": ckpt_steps[-1] if ckpt_steps else None},
               {"source": "lifecycle", "event": "deployed", "checkpoint": deployed}):
        append_event(layout, ev.pop("event"), source=ev.pop("source"), ts=now - 30, **ev)
    # status file as the trainer writes it
    last = next(r for r in reversed(list(metric_lines(steps, start))) if r["type"] == "train")
    last_eval = next(r for r in reversed(list(metric_lines(steps, start))) if r["type"] == "eval")
    write_training_status(layout.training_status, TrainingStatus(
        state="training", global_step=steps, file=last["file"], file_step=last["file_step"],
        file_total_steps=last["file_total_steps"], loss=last["loss"], val_loss=last_eval["val_loss"],
        lr=last["lr"], tokens_per_s=last["tokens_per_s"], eta_s=1.3 * (1000 - last["file_step"]),
        gpu=[], ram=None, preview=last_eval["preview"], last_checkpoint=f"checkpoint-{ckpt_steps[-1]}" if ckpt_steps else None,
        deployed_version=version if deployed else None, updated_at=now, pid=live_pid or 0))
    if live_pid:
        for name in ("daemon", "trainer"):
            layout.pid_file(name).write_text(f"{live_pid}\n")
    return {"steps": steps, "checkpoints": ckpt_steps, "champion": champion, "deployed": deployed}
