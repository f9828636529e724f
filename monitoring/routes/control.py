"""Operator controls: check a token, ask the daemon to pause, resume, stop, stop after the file, or skip it.

    GET  /api/auth                 token  check a token (the page does before storing one)
    POST /api/control/{action}     token  ControlRequest {reason?}; action: pause|resume|stop|stop_after_file|skip

A request lands in control/state.json (core/control.py); the daemon applies it
at the next step boundary, or when it starts if it is not running.

Library only; composed by monitoring/app.py.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from core.control import request as control_request
from core.http_json import JsonBody
from core.procs import live_pid
from monitoring.protocol import CONTROL_ACTIONS, ApiError, ControlRequest
from monitoring.routes.dependencies import Cfg, require_token

logger = logging.getLogger(__name__)

router = APIRouter(tags=["control"], dependencies=[Depends(require_token)])
CONTROL_BODY = JsonBody(ControlRequest)


def control_action(action: str) -> str:
    """The {action} of the path, or 404 (checked before the body is read)."""
    if action not in CONTROL_ACTIONS:
        raise ApiError(404, f"unknown action {action!r}; one of {', '.join(CONTROL_ACTIONS)}", "unknown_action")
    return action


@router.get("/api/auth")
async def auth_check():
    return {"ok": True}


@router.post("/api/control/{action}", openapi_extra=CONTROL_BODY.openapi)
async def control(request: Request, cfg: Cfg, action: Annotated[str, Depends(control_action)],
                  body: Annotated[ControlRequest, Depends(CONTROL_BODY)]):
    client = request.client.host if request.client else "?"
    reason = f"{(body.reason or action + ' from the monitor').strip()[:500]} (monitor, client {client})"
    state = await asyncio.to_thread(control_request, cfg.layout, action, reason)
    running = live_pid(cfg.layout.pid_file("daemon")) is not None
    logger.info("control %s requested from %s", action, client)
    return {"requested": action, "control": state, "daemon_running": running,
            "applies": "at the next step boundary" if running else "when the daemon starts (it is not running)"}
