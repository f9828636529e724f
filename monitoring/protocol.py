"""The monitor's wire format: typed request bodies and the error shape `{"error": {"message", "code"}}`.

Bodies are read by core/http_json.py (one parser for both servers): strict
types, unknown fields refused by name (`unknown_field`), no NaN. An empty body
is `{}`, so `POST /api/control/resume` needs none. Every refusal, a body's
included, is answered by monitoring/app.py in `error_body`'s shape.

Library only.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from core.http_json import RequestBody
from core.queue_store import PRIORITIES

Priority = Literal[PRIORITIES]  # the queue's own priorities: high, normal, low
CONTROL_ACTIONS = ("pause", "resume", "stop", "stop_after_file", "skip")


class ApiError(Exception):
    """A refusal with its HTTP status and machine-readable code; answered as `error_body(message, code)`."""

    def __init__(self, status: int, message: str, code: str):
        self.status, self.message, self.code = status, message, code
        super().__init__(message)


def error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "code": code}}


class ControlRequest(RequestBody):
    """POST /api/control/{action}: ask the daemon to pause, resume, stop, stop after the file, or skip it."""

    reason: str | None = Field(None, description="why, for control/state.json and the events log (first 500 "
                                                 "characters; default: '<action> from the monitor')")


class PriorityRequest(RequestBody):
    """POST /api/queue/{name}/priority: move a queued file to another priority."""

    priority: Priority = Field(description="the new priority: high, normal or low")


class RetryRequest(RequestBody):
    """POST /api/queue/{name}/retry: a failed file is queued again, a rejected one goes back to inbox/."""

    priority: Priority | None = Field(None, description="a failed file: the priority it is queued with (default: "
                                                        "its own). Not used for a rejected file, which is validated "
                                                        "again from inbox/ with its job sidecar")
