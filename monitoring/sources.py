"""What the monitor reads, each from its owner's files or library: status, queue, checkpoints, rankings,
deployments, curriculum, events, host metrics, and box B's inference server.

Every reader tolerates a missing file (it returns an empty answer that says
so); the shared records (the ranking ledger, the deployment state and history)
are read through their models in core/state/, and an invalid one is reported
in the answer's `error`, never as a 500.

Library only; the app calls these functions.
"""
from __future__ import annotations

import logging
import re
import time
from typing import Any

import psutil

from core.system_metrics import disk_stats, gpu_stats, ram_stats
from core.live_status import live_status
from core.queue_store import PRIORITIES, STATES, TrainingQueue, stem_of
from core.state.base import StateError
from core.state.curriculum import read_curriculum
from core.state.deployment import DeployEvent, DeploymentState, read_deployment_state, recent_deployment_events
from core.state.ledger import LedgerEntry, read_ledger
from core.state.queue_records import read_job_sidecar
from core.state.training_status import TrainingStatus, read_training_status
from data_manager.curriculum_manager import Curriculum
from trainer.checkpoint import list_checkpoints

logger = logging.getLogger(__name__)

TERMINAL_SHOWN = 100
STEP_RE = re.compile(r"checkpoint-(\d+)")


# ------------------------------------------------------------------ files
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
def _accuracy_map(entry: LedgerEntry) -> dict | None:
    """{skill: 0.85}: each skill's accuracy on its current ladder rung."""
    return {skill: acc.accuracy for skill, acc in (entry.accuracy or {}).items()} or None


def _ladder_map(entry: LedgerEntry) -> dict | None:
    """{skill: {level: accuracy}} from the per-set results (the held-out ladder, same items for every checkpoint)."""
    out: dict = {}
    for r in (entry.sets or {}).values():
        if r.kind == "ladder" and r.accuracy is not None:
            out.setdefault(str(r.skill), {})[int(r.level or 0)] = r.accuracy
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())} or None


def _set_summary(entry: LedgerEntry) -> dict | None:
    """{set id: {kind, n, accuracy, mean_loss}}: the per-set results without the per-item lists."""
    return {k: {"kind": r.kind, "n": r.n, "accuracy": r.accuracy, "mean_loss": r.mean_loss}
            for k, r in (entry.sets or {}).items()} or None


def _last_verdict(entry: LedgerEntry) -> dict | None:
    """The newest judgement against the deployed version: {baseline, baseline_checkpoint, at, paired, margin}."""
    if not entry.verdicts:
        return None
    return {k: v for k, v in entry.verdicts[-1].model_dump(mode="json").items() if k != "key"}


def _state_error(what: str, exc: StateError) -> str:
    logger.error("%s: %s", what, exc)
    return str(exc)


def rankings(cfg) -> dict:
    """The ranking ledger (core/state/ledger.py, written by management/model_comparison_engine.py): records in
    the ledger's ranking order, then the unranked ones; champion, and the version actually deployed."""
    error = None
    try:
        ledger = read_ledger(cfg.layout)
    except StateError as exc:  # shown on the page, never a 500
        ledger, error = None, _state_error("ranking ledger", exc)
    records = []
    for name, e in (ledger.checkpoints.items() if ledger else ()):
        records.append({"name": name, "global_step": e.step, "val_loss": e.metric("val_loss"),
                        "anchor_loss": e.metric("anchor_loss"), "accuracy_mean": e.metric("accuracy_mean"),
                        "accuracy": _accuracy_map(e), "status": e.status.value, "error": e.error,
                        "scored_at": e.scored_at, "ladder": _ladder_map(e), "sets": _set_summary(e),
                        "verdict": _last_verdict(e)})
    order = {n: i for i, n in enumerate(ledger.ranking)} if ledger else {}
    records.sort(key=lambda r: (order.get(r["name"], 1 << 30), -(r["global_step"] or 0)))
    n = 0
    for r in records:
        if r["name"] in order:
            n += 1
            r["position"] = n
        else:
            r["position"] = None  # failed or not scored yet: listed, not ranked
    return {"present": ledger is not None, "primary_metric": (ledger and ledger.primary_metric) or cfg.comparison.primary_metric,
            "rule": (ledger and ledger.rule) or cfg.comparison.rule, "records": records,
            "champion": ledger.champion.checkpoint if ledger and ledger.champion else None,
            "deployed": deployed_checkpoint(cfg), "updated_at": ledger.updated_at if ledger else None,
            "error": error}


def _deployment_state(cfg) -> tuple[DeploymentState, str | None]:
    try:
        return read_deployment_state(cfg.layout), None
    except StateError as exc:  # shown on the page, never a 500
        return DeploymentState(), _state_error("deployment state", exc)


def deployed_checkpoint(cfg, state: DeploymentState | None = None) -> str | None:
    """The checkpoint box B's primary target serves: deployment_state.json's active version on the first configured
    target (or the first in the file: a monitor may run with a config that lists no targets), else the last
    promotion in deployments.jsonl (None when nothing was deployed)."""
    state = state if state is not None else _deployment_state(cfg)[0]
    if state.targets:
        primary = cfg.deploy.targets[0].name if cfg.deploy.targets else next(iter(state.targets))
        active = state.active(primary)
        if active is not None:
            return active.checkpoint
    for event in reversed(recent_deployment_events(cfg.layout, 500)):
        if event.event is DeployEvent.promoted:
            return event.checkpoint
    return None


def checkpoints(cfg) -> dict:
    """Checkpoints on disk (newest first) joined with their ranking; champion and deployed marked."""
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
                    "position": r.get("position"), "val_loss": r.get("val_loss"),
                    "accuracy": r.get("accuracy"), "accuracy_mean": r.get("accuracy_mean"), "status": r.get("status"),
                    "ladder": r.get("ladder"), "sets": r.get("sets"), "verdict": r.get("verdict"),
                    "champion": ckpt.path.name == ranks["champion"], "deployed": ckpt.path.name == ranks["deployed"]})
    on_disk = {c["name"] for c in out}
    ranked_gone = [dict(r, on_disk=False,
                        champion=r["name"] == ranks["champion"], deployed=r["name"] == ranks["deployed"])
                   for r in ranks["records"] if r["name"] not in on_disk]
    return {"checkpoints": out, "ranking": ranks["records"],
            "ranked_not_on_disk": ranked_gone, "champion": ranks["champion"], "deployed": ranks["deployed"],
            "ledger_present": ranks["present"], "primary_metric": ranks["primary_metric"], "rule": ranks["rule"]}


def deployments(cfg, limit: int = 100) -> dict:
    """deployments.jsonl newest first (one line per stage event), the promotions (the loss chart's markers)
    and what each target serves now."""
    events = recent_deployment_events(cfg.layout, max(limit, 1000))
    recs = [dict(e.to_json(), global_step=step_of({"checkpoint": e.checkpoint, "version": e.version})) for e in events]
    promotions = [r for r, e in zip(recs, events) if e.event is DeployEvent.promoted]
    state, error = _deployment_state(cfg)
    return {"present": cfg.layout.deployments.exists(), "deployments": recs[::-1][:limit],
            "promotions": promotions[-200:], "deployed": deployed_checkpoint(cfg, state),
            "targets": {name: t.model_dump(mode="json") for name, t in state.targets.items()} if error is None else None,
            "in_progress": state.in_progress.model_dump(mode="json") if state.in_progress else None,
            "error": error}


# ---------------------------------------------------------------- curriculum
def curriculum(cfg) -> dict:
    cur = Curriculum.from_config(cfg)
    skills = [s.name for s in cfg.data_manager.skills]
    out = cur.status(skills)
    try:
        state = read_curriculum(cur.path)
    except StateError as exc:  # the levels above are the curriculum's own fallback (level 1); the page says why
        state, out["error"] = None, _state_error("curriculum", exc)
    for name, entry in out["skills"].items():
        progress = state.skills.get(name) if state else None
        entry["history"] = [h.model_dump(mode="json") for h in progress.history[-50:]] if progress else []
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
           "curriculum", "SystemSampler", "inference_state", "parse_prometheus",
           "step_of", "PRIORITIES", "stem_of"]
