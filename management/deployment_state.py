"""Deployment state on disk: the state file, the history, and what they say is deployed or was tried.

`status/deployment_state.json` (atomic) holds each target's active and
previous version and the deployment in progress with its stage;
`status/deployments.jsonl` has one line per stage event; both records are
defined, read and written in core/state/deployment.py, these are the
orchestrator's transaction helpers over them. Readers: the orchestrator, the
comparison engine (what not to pick again), retention and the disk manager
(what never to delete), the monitor.

Library only.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from core.state.base import StateError, parse_record
from core.state.deployment import (TERMINAL_EVENTS, DeploymentEvent, DeploymentState, append_deployment_event,  # noqa: F401
                                   deployment_events, read_deployment_state, write_deployment_state)
from core.state.events import append_event

logger = logging.getLogger(__name__)


def state_path(cfg) -> Path:
    return cfg.layout.deployment_state


def _read(cfg) -> DeploymentState:
    try:
        return read_deployment_state(cfg.layout)
    except StateError as exc:  # as before the state package: a torn or invalid file counts as no deployment
        logger.error("%s: treated as empty", exc)
        return DeploymentState()


def load_state(cfg) -> dict:
    """The state as the orchestrator's transaction edits it: a dict checked against DeploymentState on every load
    and save (core/state/deployment.py), always with `targets` and `in_progress`."""
    state = _read(cfg).to_json()
    state.setdefault("targets", {})
    state.setdefault("in_progress", None)
    return state


def save_state(cfg, state: dict) -> None:
    state["updated_at"] = time.time()
    write_deployment_state(cfg.layout, parse_record(DeploymentState, state, str(state_path(cfg))))


def record(cfg, event: str, ip: dict | None = None, **fields) -> None:
    line = {"ts": time.time(), "event": event}
    if ip:
        line.update(deploy_id=ip["deploy_id"], version=ip["version"], content_id=ip["content_id"],
                    checkpoint=ip.get("checkpoint"))
    line.update(fields)
    entry = parse_record(DeploymentEvent, line, str(cfg.layout.deployments))
    append_deployment_event(cfg.layout, entry)
    append_event(cfg.layout, event, source="deploy", ts=line["ts"], **{k: v for k, v in line.items() if k not in ("ts", "event")})


def history(cfg) -> list[dict]:
    """Every line of the history, oldest first, as dicts (the CLI prints them; a torn last line is skipped)."""
    return [e.to_json() for e in deployment_events(cfg.layout)]


def tried_content_ids(cfg) -> set[str]:
    """Content that was promoted, failed or rolled back, is active, or is being deployed: never picked again."""
    ids = {e.content_id for e in deployment_events(cfg.layout) if e.event in TERMINAL_EVENTS and e.content_id}
    state = _read(cfg)
    ids.update(t.active.content_id for t in state.targets.values() if t.active)
    if state.in_progress:
        ids.add(state.in_progress.content_id)
    return ids


def active_content_id(cfg) -> str | None:
    """Content id deployed on the primary target."""
    primary = cfg.deploy.targets[0].name if cfg.deploy.targets else None
    active = _read(cfg).active(primary)
    return active.content_id if active else None


def deployed_versions(cfg) -> list[str]:
    """Active and previous version names on every target (retention and the disk manager keep these)."""
    state = _read(cfg)
    names = [v.version for t in state.targets.values() for v in (t.active, t.previous) if v]
    if state.in_progress:
        names.append(state.in_progress.version)
    return names


def deployed_checkpoints(cfg) -> list[str]:
    state = _read(cfg)
    names = [v.checkpoint for t in state.targets.values() for v in (t.active, t.previous) if v and v.checkpoint]
    if state.in_progress and state.in_progress.checkpoint:
        names.append(state.in_progress.checkpoint)
    return names
