"""What the monitor reads, each from its owner's files or library: status, queue, checkpoints, rankings,
deployments, curriculum, events, host metrics, and box B's inference server.

Every reader tolerates a missing or half-written file (it returns an empty
answer that says so); files written by parts still being built (the ranking
ledger `status/comparisons.json`, `status/deployments.jsonl`) are read
defensively, by the field names the design contract gives, with fallbacks.

Library only; the app calls these functions.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import psutil

from core.atomic_io import read_json
from core.system_metrics import disk_stats, gpu_stats, ram_stats
from core.live_status import live_status
from core.queue_store import PRIORITIES, STATES, TrainingQueue, stem_of
from core.state.base import StateError
from core.state.queue_records import read_job_sidecar
from core.state.training_status import TrainingStatus, read_training_status

logger = logging.getLogger(__name__)

TERMINAL_SHOWN = 100
STEP_RE = re.compile(r"checkpoint-(\d+)")


# ------------------------------------------------------------------ files
def tail_lines(path: Path, limit: int, max_bytes: int = 4 << 20) -> list[bytes]:
    """The last `limit` complete lines of a file, read backwards from its end (never the whole file)."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return []
    with fh:
        size = os.fstat(fh.fileno()).st_size
        block, data, pos = 65536, b"", size
        while pos > 0 and data.count(b"\n") <= limit and size - pos < max_bytes:
            step = min(block, pos)
            pos -= step
            fh.seek(pos)
            data = fh.read(step) + data
            block *= 2
    lines = data.split(b"\n")
    if pos > 0:
        lines = lines[1:]  # the first one is cut
    return [ln for ln in lines if ln.strip()][-limit:]


def tail_jsonl(path: Path, limit: int) -> list[dict]:
    out = []
    for line in tail_lines(path, limit):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def step_of(record: dict) -> int | None:
    """A record's global step: `global_step`/`step`, else the number in a `checkpoint-N` name or path."""
    for key in ("global_step", "step"):
        v = record.get(key)
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    for key in ("checkpoint", "name", "path", "source", "source_path", "version"):
        v = record.get(key)
        if isinstance(v, str) and (m := STEP_RE.search(v)):
            return int(m.group(1))
    return None


# ------------------------------------------------------------------ status
def status(cfg, index_summary: dict | None = None) -> dict:
    """live_status (the honest one: dead pid => not running) plus what the page shows beside it."""
    s = live_status(cfg)
    try:
        raw = read_training_status(cfg.layout)
    except StateError as exc:  # the page says the file is missing rather than failing
        logger.warning("%s", exc)
        raw = None
    shown = raw or TrainingStatus()
    s["preview"] = shown.preview
    s["fixed_val_loss"] = shown.fixed_val_loss
    s["deployed_version"] = shown.deployed_version or deployed_checkpoint(cfg)
    s["gpu"] = shown.gpu or []
    s["ram"] = shown.ram
    s["status_file_present"] = raw is not None
    s["liveness"] = liveness(s, cfg.monitor.stale_after_seconds)
    if index_summary is not None:
        s["overfitting"] = index_summary.get("overfitting")
    return s


def liveness(s: dict, stale_after: float) -> dict:
    """One label the page shows as is: never "training" unless a live daemon says so with a fresh status."""
    state = s.get("state") or "unknown"
    age = s.get("status_age_s")
    hb = s.get("heartbeat_age_s")
    if state.startswith("not running"):
        detail = "no live daemon pid (.pids/daemon.pid missing or dead)"
        if s.get("reported_state") not in (None, "unknown") and age is not None:
            detail += f"; the status file still says {s['reported_state']!r}, written {_age(age)} ago"
        if s.get("trainer_pid"):
            detail += f"; an orphaned trainer (pid {s['trainer_pid']}) is still alive"
        return {"label": "daemon not running", "level": "down", "detail": detail, "running": False}
    fresh = [a for a in (age, hb) if a is not None]
    if fresh and min(fresh) > stale_after:
        if state == "training":  # a very long step or eval can do this: a warning, not a verdict
            return {"label": "training stalled?", "level": "warn", "running": True,
                    "detail": f"daemon alive but no status or heartbeat for {_age(min(fresh))} (limit {stale_after:.0f}s)"}
        # an idle or paused daemon rewrites its status every few seconds: silence means it is hung, or the
        # pid in .pids/daemon.pid now belongs to another process
        return {"label": "daemon not responding", "level": "down", "running": False,
                "detail": f"pid {s.get('daemon_pid')} is alive but the daemon has written no status for "
                          f"{_age(min(fresh))} (limit {stale_after:.0f}s): hung, or the pid was reused; "
                          f"the status file says {s.get('reported_state')!r}"}
    level = {"training": "ok", "paused": "warn", "idle": "ok", "starting": "ok", "stopping": "warn",
             "crashed": "down", "stopped": "down"}.get(state, "warn")
    detail = f"daemon pid {s.get('daemon_pid')}" + (f", trainer pid {s['trainer_pid']}" if s.get("trainer_pid") else "")
    if s.get("blocked_reason"):
        detail += f"; {s['blocked_reason']}"
    return {"label": state, "level": level, "detail": detail, "running": True}


def _age(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ------------------------------------------------------------------- queue
def queue_row(entry) -> dict:
    m = entry.meta
    v = m.validation
    return {"name": entry.name, "state": entry.state, "priority": m.priority, "id": m.id,
            "original_name": m.original_name, "schema_id": m.schema_id,
            "attempts": m.attempts, "enqueued_at": m.enqueued_at, "started_at": m.started_at,
            "finished_at": m.finished_at, "examples": v.examples, "tokens": v.tokens,
            "warnings": v.warnings, "validation": v.model_dump(mode="json"),
            "retry_at": m.retry_at if m.not_before else None,
            "global_step_start": m.global_step_start, "global_step_end": m.global_step_end,
            "progress": m.progress.model_dump(mode="json") if m.progress else None,
            "last_error": m.errors[-1].error if m.errors else None, "errors": len(m.errors),
            "has_reason": entry.sidecar("reason").exists(),
            "deferred_at": m.deferred_at, "deferred_reason": m.deferred_reason}


def queue_listing(queue: TrainingQueue) -> dict:
    """Waiting and processing files in claim order; terminal and deferred ones newest first (the last 100 of each)."""
    out: dict[str, Any] = {"status": queue.status(), "files": {}}
    for state in STATES:
        rows = [queue_row(e) for e in queue.entries((state,))]
        if state not in PRIORITIES + ("processing",):
            rows.sort(key=lambda r: r.get("finished_at") or r.get("deferred_at") or r.get("enqueued_at") or "",
                      reverse=True)
            out["files"][state] = rows[:TERMINAL_SHOWN]
            out.setdefault("truncated", {})[state] = max(0, len(rows) - TERMINAL_SHOWN)
        else:
            out["files"][state] = rows
    return out


def queue_detail(queue: TrainingQueue, name: str) -> dict:
    """One file: its row, whole sidecar, job sidecar and validation (reject) report."""
    e = queue.find(name)
    out = {"file": queue_row(e), "meta": e.meta.to_json()}
    for kind, read in (("job", read_job_sidecar), ("reason", lambda _: queue.reject_report(e))):
        try:
            record = read(e.sidecar(kind))
            out[kind] = record.to_json() if record is not None else None
        except StateError as exc:  # shown as what it is, never a 500
            out[kind] = {"error": str(exc)}
    return out


# ------------------------------------------------- checkpoints and rankings
def _ledger_records(ledger: Any) -> list[dict]:
    """Per-checkpoint records from comparisons.json, whatever container the ledger uses."""
    if isinstance(ledger, list):
        return [r for r in ledger if isinstance(r, dict)]
    if not isinstance(ledger, dict):
        return []
    for key in ("checkpoints", "results", "entries", "scores", "ledger", "ranking", "rankings"):
        v = ledger.get(key)
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            return v
        if isinstance(v, dict) and v and all(isinstance(r, dict) for r in v.values()):
            return [dict(r, name=r.get("name") or k) for k, r in v.items()]
    return []


def _name_of(value: Any) -> str | None:
    if isinstance(value, dict):
        for key in ("checkpoint", "name", "path", "source", "source_path"):
            if isinstance(value.get(key), str):
                return Path(value[key]).name
        return None
    return Path(value).name if isinstance(value, str) else None


def _accuracy_map(value: Any) -> dict | None:
    """{skill: 0.85} from either {skill: 0.85} or the ledger's {skill: {"accuracy": 0.85, ...}}."""
    if not isinstance(value, dict):
        return None
    out = {}
    for skill, v in value.items():
        if isinstance(v, dict):
            v = v.get("accuracy")
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out[skill] = float(v)
    return out or None


def _ladder_map(sets: Any) -> dict | None:
    """{skill: {level: accuracy}} from the ledger's per-set results (the held-out ladder, same items for every checkpoint)."""
    if not isinstance(sets, dict):
        return None
    out: dict = {}
    for r in sets.values():
        if isinstance(r, dict) and r.get("kind") == "ladder" and isinstance(r.get("accuracy"), (int, float)):
            out.setdefault(str(r.get("skill")), {})[int(r.get("level") or 0)] = float(r["accuracy"])
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())} or None


def _set_summary(sets: Any) -> dict | None:
    """{set id: {kind, n, accuracy, mean_loss}}: the per-set results without the per-item lists."""
    if not isinstance(sets, dict):
        return None
    return {k: {f: r.get(f) for f in ("kind", "n", "accuracy", "mean_loss")} for k, r in sets.items() if isinstance(r, dict)} or None


def _last_verdict(verdicts: Any) -> dict | None:
    """The newest judgement against the deployed version: {baseline_checkpoint, at, paired, margin}."""
    if not isinstance(verdicts, list) or not verdicts or not isinstance(verdicts[-1], dict):
        return None
    return {k: v for k, v in verdicts[-1].items() if k != "key"}


def rankings(cfg) -> dict:
    """The ranking ledger (management/model_comparison_engine.py), normalised: records best first,
    champion, and the version actually deployed (status/deployment_state.json, else the history)."""
    layout = cfg.layout
    ledger = read_json(layout.comparisons)
    records = []
    for r in _ledger_records(ledger):
        name = _name_of(r)
        metrics = r.get("metrics") if isinstance(r.get("metrics"), dict) else {}
        flat = {k: v for k, v in {**r, **metrics}.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        records.append({"name": name, "global_step": step_of(r) or (step_of({"name": name}) if name else None),
                        "rank": r.get("rank"), "score": flat.get("score"), "val_loss": flat.get("val_loss"),
                        "anchor_loss": flat.get("anchor_loss"), "accuracy_mean": flat.get("accuracy_mean"),
                        "accuracy": _accuracy_map(r.get("accuracy")) or _accuracy_map(metrics.get("accuracy")),
                        "status": r.get("status") or r.get("verdict"), "error": r.get("error"),
                        "scored_at": r.get("scored_at") or r.get("ts"), "ladder": _ladder_map(r.get("sets")),
                        "sets": _set_summary(r.get("sets")), "verdict": _last_verdict(r.get("verdicts")), "raw": r})
    primary = (ledger.get("primary_metric") if isinstance(ledger, dict) else None) or cfg.comparison.primary_metric
    order = ledger.get("ranking") if isinstance(ledger, dict) else None
    if isinstance(order, list) and all(isinstance(n, str) for n in order):
        pos = {n: i for i, n in enumerate(order)}
        records.sort(key=lambda r: (pos.get(r["name"], 1 << 30), -(r["global_step"] or 0)))
        ranked = set(order)
    else:
        if any(isinstance(r["rank"], int) for r in records):
            records.sort(key=lambda r: (r["rank"] if isinstance(r["rank"], int) else 1 << 30))
        elif primary.endswith("loss"):
            records.sort(key=lambda r: (r["val_loss"] is None, r["val_loss"] if r["val_loss"] is not None else 0))
        ranked = {r["name"] for r in records if r["status"] in (None, "scored")}
    champion = _name_of(ledger.get("champion")) if isinstance(ledger, dict) else None
    deployed = deployed_checkpoint(cfg)
    n = 0
    for r in records:
        if r["name"] in ranked:
            n += 1
            r["position"] = n
        else:
            r["position"] = None  # failed or not scored yet: listed, not ranked
    rule = (ledger.get("rule") if isinstance(ledger, dict) else None) or cfg.comparison.rule
    return {"present": ledger is not None, "primary_metric": primary, "rule": rule, "records": records,
            "champion": champion, "deployed": deployed,
            "updated_at": ledger.get("updated_at") if isinstance(ledger, dict) else None}


PROMOTED = ("promoted", "deployed", "active", "success")


def is_promotion(rec: dict) -> bool:
    what = str(rec.get("event") or rec.get("outcome") or rec.get("status") or "").lower()
    return what in PROMOTED


def deployed_checkpoint(cfg) -> str | None:
    """The checkpoint box B's primary target serves: deployment_state.json's active version, else the last
    promotion in deployments.jsonl (None when nothing was deployed)."""
    state = read_json(cfg.layout.status / "deployment_state.json")
    targets = state.get("targets") if isinstance(state, dict) else None
    if isinstance(targets, dict) and targets:
        primary = cfg.deploy.targets[0].name if cfg.deploy.targets else next(iter(targets))
        active = (targets.get(primary) or {}).get("active")
        if isinstance(active, dict):
            return _name_of(active)
    for rec in reversed(tail_jsonl(cfg.layout.deployments, 500)):
        if is_promotion(rec):
            return _name_of(rec)
    return None


def checkpoints(cfg) -> dict:
    """Checkpoints on disk (newest first) joined with their ranking; champion and deployed marked."""
    from trainer.checkpoint import list_checkpoints

    ranks = rankings(cfg)
    by_name = {r["name"]: r for r in ranks["records"] if r["name"]}
    out = []
    for ckpt in reversed(list_checkpoints(cfg.layout.current_model)):
        state = ckpt.trainer_state()
        try:
            mtime = ckpt.path.stat().st_mtime
        except FileNotFoundError:
            continue
        r = by_name.get(ckpt.path.name) or {}
        out.append({"name": ckpt.path.name, "global_step": ckpt.step, "created": mtime,
                    "reason": state.reason, "files_done": len(state.files_done),
                    "position": r.get("position"), "score": r.get("score"), "val_loss": r.get("val_loss"),
                    "accuracy": r.get("accuracy"), "accuracy_mean": r.get("accuracy_mean"), "status": r.get("status"),
                    "ladder": r.get("ladder"), "sets": r.get("sets"), "verdict": r.get("verdict"),
                    "champion": ckpt.path.name == ranks["champion"], "deployed": ckpt.path.name == ranks["deployed"]})
    on_disk = {c["name"] for c in out}
    ranked_gone = [dict({k: v for k, v in r.items() if k != "raw"}, on_disk=False,
                        champion=r["name"] == ranks["champion"], deployed=r["name"] == ranks["deployed"])
                   for r in ranks["records"] if r["name"] not in on_disk]
    return {"checkpoints": out, "ranking": [{k: v for k, v in r.items() if k != "raw"} for r in ranks["records"]],
            "ranked_not_on_disk": ranked_gone, "champion": ranks["champion"], "deployed": ranks["deployed"],
            "ledger_present": ranks["present"], "primary_metric": ranks["primary_metric"], "rule": ranks["rule"]}


def deployments(cfg, limit: int = 100) -> dict:
    """deployments.jsonl newest first (one line per stage event), the promotions (the loss chart's markers)
    and what each target serves now."""
    recs = tail_jsonl(cfg.layout.deployments, max(limit, 1000))
    for r in recs:
        r.setdefault("global_step", step_of(r))
    promotions = [r for r in recs if is_promotion(r)]
    state = read_json(cfg.layout.status / "deployment_state.json")
    return {"present": cfg.layout.deployments.exists(), "deployments": recs[::-1][:limit],
            "promotions": promotions[-200:], "deployed": deployed_checkpoint(cfg),
            "targets": state.get("targets") if isinstance(state, dict) else None,
            "in_progress": state.get("in_progress") if isinstance(state, dict) else None}


# ---------------------------------------------------------------- curriculum
def curriculum(cfg) -> dict:
    from data_manager.curriculum_manager import Curriculum

    cur = Curriculum.from_config(cfg)
    skills = [s.name for s in cfg.data_manager.skills]
    out = cur.status(skills)
    state = cur.load()
    for name, entry in out["skills"].items():
        hist = (state["skills"].get(name) or {}).get("history") or []
        entry["history"] = hist[-50:]
    out["present"] = cur.path.exists()
    return out


# -------------------------------------------------------------------- system
class SystemSampler:
    """CPU/RAM/disk/GPU samples kept in memory for the system charts (this host: box A)."""

    def __init__(self, cfg, keep: int = 900):
        self.cfg = cfg
        self.keep = keep
        self.samples: list[dict] = []
        psutil.cpu_percent(None)  # prime: the first call has no interval to measure against

    def sample(self) -> dict:
        ram = ram_stats()
        try:
            disk = disk_stats(self.cfg.layout.base_dir)
        except OSError:
            disk = None
        s = {"ts": time.time(), "cpu_pct": psutil.cpu_percent(None), "ram_used_mb": ram["used_mb"],
             "ram_total_mb": ram["total_mb"], "ram_pct": ram["pct"], "disk": disk, "gpu": gpu_stats()}
        self.samples.append(s)
        if len(self.samples) > self.keep:
            del self.samples[: len(self.samples) - self.keep]
        return s

    def snapshot(self) -> dict:
        latest = self.samples[-1] if self.samples else self.sample()
        return {"latest": latest, "history": self.samples[-self.keep:], "cpu_count": psutil.cpu_count(),
                "gpu_present": bool(latest.get("gpu"))}


# ------------------------------------------------------------------ box B
def inference_url(cfg) -> str:
    targets = cfg.deploy.targets
    if targets:
        return targets[0].server_url.rstrip("/")
    return f"http://{cfg.inference.host}:{cfg.inference.port}"


_PROM_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')
_PROM_KEEP = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
              "vllm:generation_tokens_total", "vllm:request_success_total", "cadence:model_swaps_total",
              "cadence:model_versions_draining", "cadence:requests_rejected_total", "cadence:model_load_failures_total")


def parse_prometheus(text: str) -> dict:
    """Sums of the few series the page shows (labels summed away), plus model_info labels."""
    out: dict[str, Any] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _PROM_LINE.match(line.strip())
        if not m:
            continue
        name, labels, value = m.groups()
        try:
            v = float(value)
        except ValueError:
            continue
        if name in _PROM_KEEP:
            out[name] = out.get(name, 0.0) + v
        elif name == "cadence:model_info" and labels:
            out["model_info"] = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels))
    return out


async def inference_state(cfg, client) -> dict:
    """Box B seen from here: /v1/models and /metrics, or why it cannot be reached (never raises)."""
    url = inference_url(cfg)
    headers = {"Authorization": f"Bearer {cfg.inference.api_keys[0]}"} if cfg.inference.api_keys else {}
    out: dict[str, Any] = {"url": url, "reachable": False, "models": [], "metrics": None, "error": None,
                           "checked_at": time.time()}
    try:
        r = await client.get(f"{url}/v1/models", headers=headers, timeout=cfg.monitor.inference_timeout)
        out["reachable"] = True
        if r.status_code == 200:
            out["models"] = (r.json() or {}).get("data") or []
        else:
            out["error"] = f"/v1/models answered HTTP {r.status_code}"
        m = await client.get(f"{url}/metrics", timeout=cfg.monitor.inference_timeout)
        if m.status_code == 200:
            out["metrics"] = parse_prometheus(m.text)
    except Exception as exc:  # noqa: BLE001 - any failure here means "box B is not answering"
        out["error"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return out


__all__ = ["status", "liveness", "queue_listing", "queue_detail", "checkpoints", "rankings", "deployments",
           "curriculum", "SystemSampler", "inference_state", "parse_prometheus", "tail_jsonl", "tail_lines",
           "step_of", "PRIORITIES", "stem_of"]
