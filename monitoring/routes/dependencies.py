"""What the monitor's routes take from the app (FastAPI dependencies): config, live feed, HTTP client, admin token.

create_app (monitoring/app.py) puts the config on `app.state.cfg`; its
lifespan adds the live feed (`app.state.feed`) and the client for box B
(`app.state.http`). A route names what it needs as a typed parameter
(`cfg: Cfg`, `feed: Feed`); a mutating route lists `Depends(require_token)`.

Library only.
"""
from __future__ import annotations

from typing import Annotated

import httpx
from fastapi import Depends, Request

from core.auth import admin_token, bearer_token, token_matches
from core.config import CadenceConfig
from monitoring.feed import LiveFeed
from monitoring.protocol import ApiError

NAME_MAX_BYTES = 255  # a queue name is a file name


def get_cfg(request: Request) -> CadenceConfig:
    return request.app.state.cfg


def get_feed(request: Request) -> LiveFeed:
    return request.app.state.feed


def get_http(request: Request) -> httpx.AsyncClient:
    return request.app.state.http


Cfg = Annotated[CadenceConfig, Depends(get_cfg)]
Feed = Annotated[LiveFeed, Depends(get_feed)]
Http = Annotated[httpx.AsyncClient, Depends(get_http)]


async def require_token(request: Request) -> None:
    """The admin token as `Authorization: Bearer <token>` (or X-Admin-Token): 401 without one, 403 with a wrong one."""
    presented = bearer_token(request.headers.get("authorization")) or request.headers.get("x-admin-token")
    if not presented:
        raise ApiError(401, "admin token required: send Authorization: Bearer <token> "
                            "(the token is in auth.admin_token_file, control/admin.token by default)", "missing_token")
    if not token_matches(presented, admin_token(request.app.state.cfg)):
        raise ApiError(403, "wrong admin token", "invalid_token")


def queue_key(name: str) -> str:
    """A queue file name (or original name / id prefix) from the URL; 400 for what cannot be a file name."""
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise ApiError(400, f"a queue file name is at most {NAME_MAX_BYTES} bytes (got {len(name)} characters)",
                       "invalid_name")
    if "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ApiError(400, "a queue file name has no '/' and no control characters", "invalid_name")
    return name


QueueName = Annotated[str, Depends(queue_key)]
