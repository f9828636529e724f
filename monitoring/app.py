"""App factory of the monitor: JSON API, SSE live feed, token-protected controls, the web page.

Routes: one APIRouter per resource under monitoring/routes/ (its __init__
lists them; each module's docstring lists its routes; GET /api/openapi.json
is the reference). Reads are open (the server binds loopback by default);
mutating routes need the admin token (Authorization: Bearer <token>: 401
without, 403 with a wrong one). Typed request bodies (extra="forbid", read by
core/http_json.py) and the error shape `{"error": {"message", "code"}}` are
in monitoring/protocol.py. This module composes them: state, lifespan, error
handlers, the guard, the static mount.

Every request first passes core/http_guard.py: the Host must be allowed
(monitor.allowed_hosts), a POST needs Content-Type application/json (the
upload: application/octet-stream, application/x-ndjson, application/jsonl,
application/json or none), bodies are bounded (monitor.max_body_bytes; the
upload by monitor.upload_max_bytes) and must arrive within
monitor.read_timeout; a 5xx closes its connection.

Library only; run with `python -m monitoring`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import httpx
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.auth import admin_token
from core.http_guard import GuardPolicy, allowed_hosts, install_guard
from core.http_json import JsonBodyError
from monitoring.feed import LiveFeed
from monitoring.protocol import ApiError, error_body
from monitoring.routes import ROUTERS
from monitoring.routes.page import mount_static, node_modules_dir
from monitoring.routes.upload import UPLOAD_PATH, UPLOAD_TYPES

__all__ = ["create_app", "node_modules_dir"]

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI):
    """The live feed (its poller runs unless app.state.start_feed is False: tests drive tick()) and box B's client."""
    feed = LiveFeed(app.state.cfg)
    app.state.feed = feed
    app.state.http = httpx.AsyncClient()
    if app.state.start_feed:
        await asyncio.to_thread(feed.start, None)
    feed.loop = asyncio.get_running_loop()
    try:
        yield
    finally:
        feed.stop()
        await app.state.http.aclose()


async def _api_error(request: Request, exc: ApiError):
    return JSONResponse(error_body(exc.message, exc.code), status_code=exc.status)


async def _body_error(request: Request, exc: JsonBodyError):
    return JSONResponse(error_body(exc.message, exc.code), status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException):
    return JSONResponse(error_body(str(exc.detail), getattr(exc, "code", None) or "http_error"),
                        status_code=exc.status_code)


async def _validation_error(request: Request, exc: RequestValidationError):
    msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse(error_body(msgs, "invalid_value"), status_code=400)


async def _server_error(request: Request, exc: Exception):
    logger.exception("unhandled error on %s", request.url.path)
    return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal_error"), status_code=500)


def _guard_error(status: int, message: str, code: str) -> dict:
    """The guard's own refusals (Host, Content-Type, size, time) in the monitor's shape."""
    return error_body(message, code)


ERROR_HANDLERS = {ApiError: _api_error, JsonBodyError: _body_error, StarletteHTTPException: _http_error,
                  RequestValidationError: _validation_error, Exception: _server_error}


def create_app(cfg, start_feed: bool = True) -> FastAPI:
    """The monitor app; the live feed's poller runs for the app's lifespan (start_feed=False: tests drive tick())."""
    cfg.layout.ensure()
    admin_token(cfg)  # create the token file now (0600) so the operator can read it before the first control
    app = FastAPI(title="Cadence monitor", lifespan=lifespan, docs_url="/api/docs", openapi_url="/api/openapi.json",
                  exception_handlers=ERROR_HANDLERS)
    app.state.cfg = cfg
    app.state.start_feed = start_feed
    mcfg = cfg.monitor
    install_guard(app, GuardPolicy(allowed_hosts(mcfg.host, mcfg.allowed_hosts), mcfg.max_body_bytes, mcfg.read_timeout,
                                   raw_body_routes={UPLOAD_PATH: (mcfg.upload_max_bytes, UPLOAD_TYPES)}),
                  _guard_error)
    for router in ROUTERS:
        app.include_router(router)
    mount_static(app)
    return app
