"""Deployment state on disk: the state file, the history, and what they say is deployed or was tried.

`status/deployment_state.json` (atomic) holds each target's active and
previous version and the deployment in progress with its stage;
`status/deployments.jsonl` has one line per stage event (format in
management/deployment_orchestrator.py). Readers: the orchestrator, the
comparison engine (what not to pick again), retention and the disk manager
(what never to delete), the monitor.

Library only.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from core.atomic_io import append_jsonl, atomic_write_json, read_json
from core.state.events import append_event

STATE_NAME = "deployment_state.json"
TERMINAL_EVENTS = ("promoted", "failed", "rolled_back")


def state_path(cfg) -> Path:
    return cfg.layout.status / STATE_NAME


def load_state(cfg) -> dict:
    state = read_json(state_path(cfg), None)
    if not isinstance(state, dict):
        state = {}
    state.setdefault("targets", {})
    state.setdefault("in_progress", None)
    return state


def save_state(cfg, state: dict) -> None:
    state["updated_at"] = time.time()
    atomic_write_json(state_path(cfg), state)


def record(cfg, event: str, ip: dict | None = None, **fields) -> None:
    line = {"ts": time.time(), "event": event}
    if ip:
        line.update(deploy_id=ip["deploy_id"], version=ip["version"], content_id=ip["content_id"],
                    checkpoint=ip.get("checkpoint"))
    line.update(fields)
    append_jsonl(cfg.layout.deployments, line)
    append_event(cfg.layout, event, source="deploy", ts=line["ts"], **{k: v for k, v in line.items() if k not in ("ts", "event")})


def history(cfg) -> list[dict]:
    out = []
    try:
        for line in cfg.layout.deployments.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a torn last line from a crash mid-append
    except FileNotFoundError:
        pass
    return out


def tried_content_ids(cfg) -> set[str]:
    """Content that was promoted, failed or rolled back, is active, or is being deployed: never picked again."""
    ids = {h["content_id"] for h in history(cfg) if h.get("event") in TERMINAL_EVENTS and h.get("content_id")}
    state = load_state(cfg)
    for t in state["targets"].values():
        if t.get("active"):
            ids.add(t["active"]["content_id"])
    if state["in_progress"]:
        ids.add(state["in_progress"]["content_id"])
    return ids


def active_content_id(cfg) -> str | None:
    """Content id deployed on the primary target."""
    primary = cfg.deploy.targets[0].name if cfg.deploy.targets else None
    active = (load_state(cfg)["targets"].get(primary) or {}).get("active")
    return active["content_id"] if active else None


def deployed_versions(cfg) -> list[str]:
    """Active and previous version names on every target (retention and the disk manager keep these)."""
    names = []
    state = load_state(cfg)
    for t in state["targets"].values():
        for key in ("active", "previous"):
            if t.get(key):
                names.append(t[key]["version"])
    if state["in_progress"]:
        names.append(state["in_progress"]["version"])
    return names


def deployed_checkpoints(cfg) -> list[str]:
    state = load_state(cfg)
    names = [t[k]["checkpoint"] for t in state["targets"].values() for k in ("active", "previous")
             if t.get(k) and t[k].get("checkpoint")]
    if state["in_progress"] and state["in_progress"].get("checkpoint"):
        names.append(state["in_progress"]["checkpoint"])
    return names
