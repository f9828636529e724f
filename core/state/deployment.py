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

from pydantic import Field

from core.state.base import (RecordPart, SparseRecord, StateFile, append_record, read_record, read_records,
                             tail_records, write_record)


class DeployedVersion(RecordPart):
    """A version a target serves (active) or served before it (previous, the rollback target)."""

    version: str = Field(description="The version's name (its folder on the target, the served label).")
    content_id: str = Field(description="Hash of the model files (core/manifest.py content_id): the same weights have the same id anywhere.")
    checkpoint: str | None = Field(None, description="The checkpoint the version was consolidated from.")
    path: str | None = Field(None, description="the folder as the target's server sees it (always written by the orchestrator)")
    deployed_at: float | None = Field(None, description="When it became active (epoch seconds).")


class TargetState(RecordPart):
    active: DeployedVersion | None = Field(None, description="What the target serves.")
    previous: DeployedVersion | None = Field(None, description="What it served before (the rollback target).")


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

    version: str | None = Field(None, description="The served version's label.")
    content_id: str | None = Field(None, description="The served version's content id.")


class DeploymentInProgress(RecordPart):
    deploy_id: str = Field(description="Random id shared by every history line of this deployment.")
    version: str = Field(description="The version being deployed.")
    content_id: str = Field(description="Its content id.")
    checkpoint: str | None = Field(None, description="The checkpoint it came from.")
    source: str = Field(description="the version folder on this box")
    started_at: float | None = Field(None, description="When the deployment started (epoch seconds).")
    target: str | None = Field(description="the target being deployed to; None once every target is done")
    stage: Stage = Field(description="The stage to run (or resume) next on `target`.")
    targets_done: list[str] = Field([], description="Targets finished, in order.")
    attempts: int = Field(0, description="resumptions after a crash (abandoned after 3)")
    timings: dict[str, dict[str, float | None]] = Field({}, description="target -> phase -> seconds")
    results: dict[str, str] = Field({}, description="target -> promoted | failed | rolled_back")
    linked: dict[str, bool] = Field({}, description="target -> the copy was hard-linked (nothing to verify)")
    baseline: ServedBaseline | None = Field(None, description="What the target served before the load (the server-side rollback target).")
    failure: str | None = Field(None, description="Why the deployment failed, once it did.")


class DeploymentState(SparseRecord):
    """`status/deployment_state.json`: every target's active and previous version, and the deployment in progress
    (written before each stage starts, so a restart resumes it)."""

    targets: dict[str, TargetState] = Field({}, description="Per configured target: its active and previous version.")
    in_progress: DeploymentInProgress | None = Field(None, description="The deployment being run (None when none is).")
    updated_at: float | None = Field(None, description="When the file was last written (epoch seconds).")

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

    ts: float = Field(description="When (epoch seconds).")
    event: DeployEvent = Field(description="What happened (a DeployEvent).")
    deploy_id: str | None = Field(None, description="The deployment the line belongs to.")
    version: str | None = Field(None, description="The version deployed (or converged, rolled back to).")
    content_id: str | None = Field(None, description="Its content id.")
    checkpoint: str | None = Field(None, description="The checkpoint it came from.")
    target: str | None = Field(None, description="The target the stage ran on.")
    targets: list[str] | dict[str, str] | None = Field(None, description="started: the targets; failed: target -> outcome")
    stage: str | None = Field(None, description="resumed / failed: the stage the deployment was at.")
    attempt: int | None = Field(None, description="resumed: how many times it was resumed.")
    reason: str | None = Field(None, description="Why (failed, health_failed, rolled_back, skipped).")
    note: str | None = Field(None, description="loaded: a remark (e.g. the load finished while the orchestrator was down).")
    outcome: str | None = Field(None, description="rolled_back: what the rollback did.")
    seconds: float | None = Field(None, description="copied / verified / loaded: how long the stage took.")
    server_load_seconds: float | None = Field(None, description="loaded: the server's own load time.")
    previous_version: str | None = Field(None, description="loaded: what the server served before.")
    previous: str | None = Field(None, description="promoted: the version it replaced")
    timings: dict[str, float | None] | None = Field(None, description="promoted: seconds per stage on this target.")
    status: int | None = Field(None, description="the server's HTTP status (load_rejected, converged)")
    code: str | None = Field(None, description="load_rejected: the server's error code.")
    message: str | None = Field(None, description="load_rejected: the server's error message (first 500 characters).")
    still_serving: str | None = Field(None, description="load_rejected: the version the server kept serving.")
    error: Any = Field(None, description="converged: the server's error body")
    served_before: str | None = Field(None, description="converged: what the server served before the active version was loaded again.")
    serving: str | None = Field(None, description="rolled_back: what the server serves after the rollback.")
    probes: int | None = Field(None, description="health_ok / health_failed: probes sent.")
    errors: int | None = Field(None, description="health_ok / health_failed: probes that failed.")
    median_latency_s: float | None = Field(None, description="health_ok / health_failed: median probe latency.")
    removed: list[str] | None = Field(None, description="cleanup: folders removed on the target.")
    kept: list[str] | None = Field(None, description="cleanup: versions kept (active, previous).")


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
