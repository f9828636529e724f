"""App factory of the inference server: routes, auth, error shape, lifespan (scheduler + first model).

`create_app(cfg)` returns a FastAPI app. Its lifespan starts the scheduler
thread and loads the start-up model (`inference.model_path`, else
`model.base_model` as version "base") in a worker thread, so `/health`
answers at once and `/ready` turns 200 after the model has passed its smoke
prompt. On shutdown it stops taking requests, lets in-flight ones finish
within `inference.drain_timeout`, then stops the scheduler.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /v1/models/{id},
GET /health, GET /ready, GET /metrics; admin (token required):
GET /admin/models, POST /admin/models/load (LoadRequest {path, version?}),
POST /admin/models/rollback (RollbackRequest {version?}). Typed bodies follow
core/http_json.py; the models are in inference/protocol.py.

Every request first passes core/http_guard.py (Host allow-list, JSON
Content-Type on POST, inference.max_body_bytes, inference.read_timeout,
`Connection: close` on every 5xx). Admin load paths follow
inference/load_policy.py.

Run with `python -m inference` (inference/__main__.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.auth import admin_token, bearer_token, token_matches
from core.http_guard import GuardPolicy, allowed_hosts, install_guard
from core.http_json import JsonBody, JsonBodyError
from core.version_label import InvalidLabel, check_label
from inference.load_policy import InvalidPath, check_load_folder, check_path_text
from inference.loader import ModelLoadError
from inference.metrics import Metrics
from inference.protocol import LoadRequest, RollbackRequest, error_body
from inference.registry import ModelRegistry
from inference.scheduler import Scheduler
from inference.serving import OpenAIServing, RequestError
from inference.vllm_engine import VllmPool
from inference.vllm_proxy import VllmProxy, passthrough_router

logger = logging.getLogger(__name__)

LOAD_ERROR_STATUS = {"busy": 409, "no_previous": 409, "not_found": 404, "invalid_version": 400, "path_not_allowed": 403}


@dataclass
class ServerState:
    cfg: object
    scheduler: Scheduler
    registry: ModelRegistry
    metrics: Metrics
    admin_token: str
    ready: bool = False
    startup_error: str | None = None
    shutting_down: bool = False
    started_at: float = field(default_factory=time.time)


def _state(request: Request) -> ServerState:
    return request.app.state.cadence


async def require_api_key(request: Request) -> None:
    keys = _state(request).cfg.inference.api_keys
    if not keys:
        return
    presented = bearer_token(request.headers.get("authorization"))
    if not any(token_matches(presented, k) for k in keys):
        raise RequestError(401, "Incorrect API key provided.", code="invalid_api_key")


async def require_admin(request: Request) -> None:
    state = _state(request)
    presented = bearer_token(request.headers.get("authorization")) or request.headers.get("x-admin-token")
    if not token_matches(presented, state.admin_token):
        raise RequestError(401, "admin token required (Authorization: Bearer <token>)", code="invalid_admin_token",
                           type_="authentication_error")


def _label(value, key: str = "version") -> str | None:
    try:
        return None if value is None else check_label(value, f"`{key}`")
    except InvalidLabel as exc:
        raise RequestError(400, str(exc), param=key, code="invalid_version") from None


LOAD_BODY = JsonBody(LoadRequest)
ROLLBACK_BODY = JsonBody(RollbackRequest)


def build_router() -> APIRouter:
    router = APIRouter()

    @router.post("/v1/chat/completions", dependencies=[Depends(require_api_key)])
    async def chat_completions(request: Request):
        return await _state(request).serving.handle(request, "chat")

    @router.post("/v1/completions", dependencies=[Depends(require_api_key)])
    async def completions(request: Request):
        return await _state(request).serving.handle(request, "completion")

    @router.get("/v1/models", dependencies=[Depends(require_api_key)])
    async def list_models(request: Request):
        state = _state(request)
        engine = state.scheduler.active
        data = [state.serving.model_card(engine)] if engine is not None else []
        headers = {"X-Model-Version": engine.version} if engine else None
        return JSONResponse({"object": "list", "data": data}, headers=headers)

    @router.get("/v1/models/{model_id:path}", dependencies=[Depends(require_api_key)])
    async def retrieve_model(request: Request, model_id: str):
        card = _state(request).serving.retrieve_model(model_id)
        return JSONResponse(card, headers={"X-Model-Version": card["version"]})

    @router.get("/health")
    async def health(request: Request):
        return {"status": "ok"}

    @router.get("/ready")
    async def ready(request: Request):
        state = _state(request)
        engine = state.scheduler.active
        if state.ready and engine is not None and not state.shutting_down:
            return {"status": "ready", "version": engine.version}
        reason = "shutting down" if state.shutting_down else (state.startup_error or "loading model")
        return JSONResponse(error_body(reason, "service_unavailable", code="not_ready"), status_code=503)

    @router.get("/metrics")
    async def metrics(request: Request):
        state = _state(request)
        if state.cfg.inference.engine == "vllm":
            text = await state.serving.metrics_text()
        else:
            text = state.metrics.render(state.scheduler.running, state.scheduler.waiting, state.scheduler.active,
                                        state.scheduler.draining())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @router.get("/admin/models", dependencies=[Depends(require_admin)])
    async def admin_models(request: Request):
        return _state(request).registry.describe()

    @router.post("/admin/models/load", dependencies=[Depends(require_admin)], openapi_extra=LOAD_BODY.openapi)
    async def admin_load(request: Request, body: Annotated[LoadRequest, Depends(LOAD_BODY)]):
        state = _state(request)
        try:
            check_path_text(body.path)
        except InvalidPath as exc:
            raise RequestError(400, str(exc), param="path", code="invalid_value") from None
        version = _label(body.version)
        return await _run_load(state, lambda: state.registry.load(check_load_folder(state.cfg, body.path), version))

    @router.post("/admin/models/rollback", dependencies=[Depends(require_admin)], openapi_extra=ROLLBACK_BODY.openapi)
    async def admin_rollback(request: Request, body: Annotated[RollbackRequest, Depends(ROLLBACK_BODY)]):
        state = _state(request)
        version = _label(body.version)
        return await _run_load(state, lambda: state.registry.rollback(version))

    return router


async def _run_load(state: ServerState, fn):
    try:
        report = await asyncio.to_thread(fn)
    except ModelLoadError as exc:
        active = state.scheduler.active
        status = LOAD_ERROR_STATUS.get(exc.code, 422)
        return JSONResponse(error_body(str(exc), "model_load_error", code=exc.code,
                                       active_version=active.version if active else None), status_code=status)
    state.ready = True
    return JSONResponse(report, headers={"X-Model-Version": report["version"]})


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError):
        return exc.response()

    @app.exception_handler(JsonBodyError)
    async def _body_error(request: Request, exc: JsonBodyError):
        return RequestError.from_body(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(error_body(str(exc.detail), type_, code=getattr(exc, "code", None) or exc.status_code),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse(error_body(str(exc.errors()), code="invalid_value"), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)


def startup_model(cfg) -> tuple[Path, str | None]:
    """The folder served at start and its version label: inference.model_path, else model.base_model as "base"."""
    if cfg.inference.model_path:
        return cfg.resolve(cfg.inference.model_path), None
    return cfg.resolve(cfg.model.base_model), "base"


async def _load_startup_model(state: ServerState) -> None:
    path, version = startup_model(state.cfg)
    try:
        await asyncio.to_thread(state.registry.load, path, version, False, "startup")
        state.ready = True
    except ModelLoadError as exc:
        state.startup_error = f"start-up model failed to load ({exc.code}): {exc}"
        logger.error("%s; the server stays up for /admin/models/load", state.startup_error)


async def drain(state: ServerState, timeout: float) -> bool:
    """Refuse new requests; wait until nothing runs or waits (or `timeout`). True when fully drained."""
    state.shutting_down = True
    deadline = time.monotonic() + timeout
    while state.scheduler.running or state.scheduler.waiting:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


def create_app(cfg, load_model: bool = True) -> FastAPI:
    """The inference server app for `cfg` (a CadenceConfig). `load_model=False` skips the start-up load (tests)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        if cfg.inference.torch_threads:
            import torch
            torch.set_num_threads(cfg.inference.torch_threads)
        metrics = Metrics(cfg.model.model_name)
        if cfg.inference.engine == "vllm":
            # Each version is a vLLM server (inference/vllm_engine.py); this process verifies, pins and relays.
            scheduler = VllmPool()
            registry = ModelRegistry(cfg, scheduler, metrics, loader=scheduler.load_version)
        else:
            scheduler = Scheduler(metrics, cfg.inference.max_batch_size, cfg.inference.max_queue).start()
            registry = ModelRegistry(cfg, scheduler, metrics)
        state = ServerState(cfg, scheduler, registry, metrics, admin_token(cfg))
        state.serving = VllmProxy(state) if cfg.inference.engine == "vllm" else OpenAIServing(state)
        app.state.cadence = state
        loader = asyncio.create_task(_load_startup_model(state)) if load_model else None
        try:
            yield
        finally:
            if loader and not loader.done():
                loader.cancel()
            drained = await drain(state, cfg.inference.drain_timeout)
            if not drained:
                logger.warning("drain timeout (%.0fs): aborting %d running and %d waiting requests",
                               cfg.inference.drain_timeout, scheduler.running, scheduler.waiting)
            await asyncio.to_thread(scheduler.stop, 5.0)
            if hasattr(state.serving, "aclose"):
                await state.serving.aclose()

    app = FastAPI(title="Cadence inference", lifespan=lifespan, docs_url=None, redoc_url=None)
    _install_error_handlers(app)
    icfg = cfg.inference
    install_guard(app, GuardPolicy(allowed_hosts(icfg.host, icfg.allowed_hosts), icfg.max_body_bytes, icfg.read_timeout),
                  lambda status, message, code: error_body(message, "server_error" if status >= 500 else
                                                           "invalid_request_error", code=code))
    app.include_router(build_router())
    if cfg.inference.engine == "vllm":
        app.include_router(passthrough_router(require_api_key))  # vLLM's other POST /v1/* routes, after Cadence's own
    return app
