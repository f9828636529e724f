"""Deployment records: what each inference target serves (`status/deployment_state.json`) and the history of every
deployment stage (`status/deployments.jsonl`).

The orchestrator (management/deployment_orchestrator.py, through management/deployment_state.py's transaction
helpers) is the only writer; the comparison engine, retention, the disk manager, `live_status` and the monitor read
them here. `DeployEvent` is the closed list of history events: a reader asks `event is DeployEvent.promoted`, it
never guesses among promotion-like words.

    read_deployment_state(layout) -> DeploymentState      (empty when no deployment ever ran)
    write_deployment_state(layout, state)
    append_deployment_event(layout, event)
    deployment_events(layout) / recent_deployment_events(layout, limit)
"""
from __future__ import annotations

from enum import StrEnum
from typing import Any, Iterator

from core.state.base import (RecordPart, SparseRecord, StateFile, append_record, read_record, read_records,
                             tail_records, write_record)


class DeployedVersion(RecordPart):
    """A version a target serves (active) or served before it (previous, the rollback target)."""

    version: str
    content_id: str
    checkpoint: str | None = None
    path: str | None = None  # the folder as the target's server sees it (always written by the orchestrator)
    deployed_at: float | None = None


class TargetState(RecordPart):
    active: DeployedVersion | None = None
    previous: DeployedVersion | None = None


class Stage(StrEnum):
    """Where an interrupted deployment resumes (management/deployment_orchestrator.py's stages)."""

    copy = "copy"
    verify = "verify"
    load = "load"
    health = "health"
    promote = "promote"
    rollback = "rollback"
    done = "done"


class ServedBaseline(RecordPart):
    """What the target served before the load (the server-side rollback target)."""

    version: str | None = None
    content_id: str | None = None


class DeploymentInProgress(RecordPart):
    deploy_id: str
    version: str
    content_id: str
    checkpoint: str | None = None
    source: str  # the version folder on this box
    started_at: float | None = None
    target: str | None  # the target being deployed to; None once every target is done
    stage: Stage
    targets_done: list[str] = []
    attempts: int = 0  # resumptions after a crash (abandoned after 3)
    timings: dict[str, dict[str, float | None]] = {}  # target -> phase -> seconds
    results: dict[str, str] = {}  # target -> promoted | failed | rolled_back
    linked: dict[str, bool] = {}  # target -> the copy was hard-linked (nothing to verify)
    baseline: ServedBaseline | None = None
    failure: str | None = None


class DeploymentState(SparseRecord):
    """`status/deployment_state.json`: every target's active and previous version, and the deployment in progress
    (written before each stage starts, so a restart resumes it)."""

    targets: dict[str, TargetState] = {}
    in_progress: DeploymentInProgress | None = None
    updated_at: float | None = None

    def active(self, target: str | None) -> DeployedVersion | None:
        t = self.targets.get(target) if target is not None else None
        return t.active if t else None


class DeployEvent(StrEnum):
    """One line of the history per stage event (the orchestrator's docstring says when each is written)."""

    started = "started"
    copied = "copied"
    verified = "verified"
    loaded = "loaded"
    load_rejected = "load_rejected"
    health_ok = "health_ok"
    health_failed = "health_failed"
    promoted = "promoted"
    rolled_back = "rolled_back"
    failed = "failed"
    resumed = "resumed"
    cleanup = "cleanup"
    converged = "converged"
    skipped = "skipped"


# content that reached one of these was tried: it is never picked again
TERMINAL_EVENTS = (DeployEvent.promoted, DeployEvent.failed, DeployEvent.rolled_back)


class DeploymentEvent(SparseRecord):
    """One line of `status/deployments.jsonl`: the deployment it belongs to and what the stage reported."""

    ts: float
    event: DeployEvent
    deploy_id: str | None = None
    version: str | None = None
    content_id: str | None = None
    checkpoint: str | None = None
    target: str | None = None
    targets: list[str] | dict[str, str] | None = None  # started: the targets; failed: target -> outcome
    stage: str | None = None
    attempt: int | None = None
    reason: str | None = None
    note: str | None = None
    outcome: str | None = None
    seconds: float | None = None
    server_load_seconds: float | None = None
    previous_version: str | None = None
    previous: str | None = None  # promoted: the version it replaced
    timings: dict[str, float | None] | None = None
    status: int | None = None  # the server's HTTP status (load_rejected, converged)
    code: str | None = None
    message: str | None = None
    still_serving: str | None = None
    error: Any = None  # converged: the server's error body
    served_before: str | None = None
    serving: str | None = None
    probes: int | None = None
    errors: int | None = None
    median_latency_s: float | None = None
    removed: list[str] | None = None
    kept: list[str] | None = None


def read_deployment_state(layout) -> DeploymentState:
    """The deployment state; an empty one (no targets, nothing in progress) when no deployment ever ran."""
    return read_record(DeploymentState, layout.deployment_state) or DeploymentState()


def write_deployment_state(layout, state: DeploymentState) -> None:
    write_record(layout.deployment_state, state)


def append_deployment_event(layout, event: DeploymentEvent) -> None:
    append_record(layout.deployments, event)


def deployment_events(layout) -> Iterator[DeploymentEvent]:
    """The whole history, oldest first (a torn last line from a crash mid-append is skipped with a warning)."""
    return read_records(DeploymentEvent, layout.deployments)


def recent_deployment_events(layout, limit: int) -> list[DeploymentEvent]:
    """The last `limit` events, oldest first, read from the end of the file."""
    return tail_records(DeploymentEvent, layout.deployments, limit)


FILES = [
    StateFile(pattern="status/deployment_state.json", model=DeploymentState,
              writers=("management.deployment_state",),
              readers=("management.deployment_state", "management.deployment_orchestrator", "core.live_status",
                       "monitoring.sources"),
              description="Each target's active and previous version and the deployment in progress with its stage."),
    StateFile(pattern="status/deployments.jsonl", model=DeploymentEvent, kind="jsonl",
              writers=("management.deployment_state",),
              readers=("management.deployment_state", "monitoring.sources", "benchmarks.curriculum"),
              description="One line per deployment stage event (started ... promoted / rolled_back / failed)."),
]
