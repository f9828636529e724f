"""App factory of the monitor: JSON API, SSE live feed, token-protected controls, the web page.

Read endpoints (open; the server binds loopback by default):
  GET  /api/health                     the monitor itself
  GET  /api/status                     the honest status (dead pid => "daemon not running") + overfitting check
  GET  /api/summary                    latest train/eval records, recent eval previews, checkpoint markers
  GET  /api/metrics?kind=train|eval&fields=loss,loss_ema&max_points=2000&step_min=&step_max=
                                       history from the in-memory index, min-max downsampled
  GET  /api/queue, /api/queue/{name}   files per state with sidecars; one file with its validation report
  GET  /api/checkpoints                on disk, joined with the ranking ledger; champion and deployed marked
  GET  /api/deployments?limit=100      status/deployments.jsonl, newest first (tail read)
  GET  /api/curriculum                 level per skill, accuracy history
  GET  /api/events?limit=200&source=   status/events.jsonl, newest first
  GET  /api/system                     CPU/RAM/disk/GPU, latest + recent samples
  GET  /api/inference                  box B: /v1/models and /metrics, or why it does not answer
  GET  /api/stream                     SSE; `Last-Event-ID` (or ?last_event_id=) replays what was missed
Mutating endpoints (Authorization: Bearer <admin token>; 401 without, 403 with a wrong one):
  GET  /api/auth                       check a token (the page uses it before storing one)
  POST /api/control/{pause|resume|stop|stop_after_file|skip}   {"reason": "..."}
  POST /api/queue/{name}/priority      {"priority": "high|normal|low"}
  POST /api/queue/{name}/retry         {"priority": optional}
  DELETE /api/queue/{name}
  POST /api/upload?filename=NAME.jsonl[&priority=][&schema_id=]   raw body: into inbox/, validated like a drop
The page: GET / (static files under /static, the chart library under /vendor/uplot from node_modules).

Every request first passes core/http_guard.py: the Host must be allowed (monitor.allowed_hosts), a POST needs
Content-Type application/json (the upload: application/octet-stream, application/x-ndjson, application/jsonl or
none), bodies are bounded (monitor.max_body_bytes; the upload by monitor.upload_max_bytes) and must arrive within
monitor.read_timeout; a 5xx closes its connection.

Library only; run with `python -m monitoring`.
"""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import httpx
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.atomic_io import atomic_write_json
from core.auth import admin_token, bearer_token, token_matches
from core.config import REPO_ROOT
from core.http_guard import GuardPolicy, JsonBodyError, allowed_hosts, install_guard, parse_json_object
from core.control import request as control_request
from core.procs import live_pid
from core.queue_store import PRIORITIES, QueueError
from core.watcher import JOB_SUFFIX, queue_name
from monitoring import sources
from monitoring.feed import LiveFeed, finite

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
UPLOT_DIST = "uplot/dist"
UPLOT_FILES = {"uPlot.iife.min.js": "text/javascript", "uPlot.min.css": "text/css"}
CONTROL_ACTIONS = ("pause", "resume", "stop", "stop_after_file", "skip")
UPLOAD_TYPES = ("", "application/octet-stream", "application/x-ndjson", "application/jsonl", "application/json")
NAME_MAX_BYTES = 255  # a queue name is a file name
SSE_RETRY_MS = 1000
SSE_PING_S = 15


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str):
        self.status, self.message, self.code = status, message, code
        super().__init__(message)


def error_body(message: str, code: str) -> dict:
    return {"error": {"message": message, "code": code}}


def node_modules_dir() -> Path:
    """Where scripts/setup.sh ran `npm ci` (the repo root); CADENCE_NODE_MODULES overrides."""
    return Path(os.environ.get("CADENCE_NODE_MODULES") or REPO_ROOT / "node_modules")


# --------------------------------------------------------------------- auth
async def require_token(request: Request) -> None:
    presented = bearer_token(request.headers.get("authorization")) or request.headers.get("x-admin-token")
    if not presented:
        raise ApiError(401, "admin token required: send Authorization: Bearer <token> "
                            "(the token is in auth.admin_token_file, control/admin.token by default)", "missing_token")
    if not token_matches(presented, admin_token(request.app.state.cfg)):
        raise ApiError(403, "wrong admin token", "invalid_token")


async def _json_body(request: Request) -> dict:
    try:
        return parse_json_object(await request.body())
    except JsonBodyError as exc:
        raise ApiError(400, str(exc), exc.code) from None


def _queue_key(name: str) -> str:
    """A queue file name (or original name / id prefix) from the URL; 400 for what cannot be a file name."""
    if len(name.encode("utf-8", "surrogatepass")) > NAME_MAX_BYTES:
        raise ApiError(400, f"a queue file name is at most {NAME_MAX_BYTES} bytes (got {len(name)} characters)",
                       "invalid_name")
    if "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ApiError(400, "a queue file name has no '/' and no control characters", "invalid_name")
    return name


def _reason(request: Request, data: dict, action: str) -> str:
    reason = data.get("reason")
    client = request.client.host if request.client else "?"
    if reason is not None and not isinstance(reason, str):
        raise ApiError(400, "`reason` must be a string", "invalid_value")
    return f"{(reason or action + ' from the monitor').strip()[:500]} (monitor, client {client})"


def _feed(request: Request) -> LiveFeed:
    return request.app.state.feed


# ------------------------------------------------------------------- upload
_upload_lock = threading.Lock()


def _upload_name(raw: str | None) -> str:
    """A safe inbox name from a client-supplied file name, or ApiError (same rules as the inbox watcher)."""
    if not raw or not raw.strip():
        raise ApiError(400, "`filename` query parameter is required", "missing_filename")
    base = raw.replace("\\", "/").rsplit("/", 1)[-1].strip()  # never a path: only the last component
    if not base.endswith(".jsonl"):
        raise ApiError(400, f"{base!r}: only .jsonl files are accepted", "unsupported_extension")
    # control characters, shell metacharacters, '..' and leading dots become '_' or go, as for a drop
    return queue_name([base])


def _free_inbox_name(feed: LiveFeed, name: str) -> str:
    """`name`, or name-2.jsonl, ... free in inbox/ and in every queue state (so the queue keeps it as is)."""
    inbox = feed.layout.inbox
    stem = name[: -len(".jsonl")]
    n = 1
    candidate = name
    while True:
        if not (inbox / candidate).exists() and feed.queue.unique_name(candidate) == candidate:
            return candidate
        n += 1
        candidate = f"{stem}-{n}.jsonl"


async def _receive_upload(request: Request, feed: LiveFeed, name: str, limit: int) -> tuple[Path, int, str]:
    inbox = feed.layout.inbox
    inbox.mkdir(parents=True, exist_ok=True)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"upload is {int(declared)} bytes; the limit is {limit} (monitor.upload_max_bytes)",
                       "too_large")
    # hidden + .part: the watcher ignores it until the rename below
    tmp = inbox / f".upload-{os.getpid()}-{time.time_ns()}.part"
    size = 0
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as fh:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"upload exceeds {limit} bytes (monitor.upload_max_bytes)", "too_large")
                digest.update(chunk)
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if size == 0:
        tmp.unlink(missing_ok=True)
        raise ApiError(400, "empty upload", "empty_file")
    return tmp, size, digest.hexdigest()


# ------------------------------------------------------------------- router
def build_router() -> APIRouter:
    r = APIRouter()

    @r.get("/api/health")
    async def health(request: Request):
        feed = _feed(request)
        return {"status": "ok", "boot": feed.boot, "seq": feed.seq, "poll_interval": request.app.state.cfg.monitor.poll_interval,
                "ema_smoothing": request.app.state.cfg.monitor.ema_smoothing,
                "metric_lines_indexed": feed.index.lines, "base_dir": str(feed.layout.base_dir)}

    @r.get("/api/status")
    async def status(request: Request):
        return JSONResponse(finite(await asyncio.to_thread(sources.status, request.app.state.cfg,
                                                           _feed(request).index.summary())))

    @r.get("/api/summary")
    async def summary(request: Request):
        return JSONResponse(finite(_feed(request).index.summary()))

    @r.get("/api/metrics")
    async def metrics(request: Request, kind: str = "train", fields: str = "loss,loss_ema",
                      max_points: int | None = Query(None, ge=10), step_min: float | None = None,
                      step_max: float | None = None):
        cfg = request.app.state.cfg
        budget = min(max_points or cfg.monitor.history_max_points, cfg.monitor.history_max_points)
        names = [f.strip() for f in fields.split(",") if f.strip()]
        if not names:
            raise ApiError(400, "`fields` must name at least one field", "invalid_value")
        try:
            # a JSONResponse skips FastAPI's per-element encoder (20+ ms on a few thousand points)
            return JSONResponse(_feed(request).index.query(kind, names, budget, step_min, step_max))
        except ValueError as exc:
            raise ApiError(400, str(exc), "invalid_value") from None

    @r.get("/api/queue")
    async def queue(request: Request):
        return await asyncio.to_thread(sources.queue_listing, _feed(request).queue)

    @r.get("/api/queue/{name}")
    async def queue_file(request: Request, name: str):
        name = _queue_key(name)
        try:
            return await asyncio.to_thread(sources.queue_detail, _feed(request).queue, name)
        except QueueError as exc:
            raise ApiError(404, str(exc), "not_found") from None

    @r.get("/api/checkpoints")
    async def checkpoints(request: Request):
        return await asyncio.to_thread(sources.checkpoints, request.app.state.cfg)

    @r.get("/api/deployments")
    async def deployments(request: Request, limit: int = Query(100, ge=1, le=1000)):
        return await asyncio.to_thread(sources.deployments, request.app.state.cfg, limit)

    @r.get("/api/curriculum")
    async def curriculum(request: Request):
        return await asyncio.to_thread(sources.curriculum, request.app.state.cfg)

    @r.get("/api/events")
    async def events(request: Request, limit: int = Query(200, ge=1, le=2000), source: str | None = None):
        return {"events": _feed(request).events.recent(limit, source)}

    @r.get("/api/system")
    async def system(request: Request):
        return _feed(request).system.snapshot()

    @r.get("/api/inference")
    async def inference(request: Request):
        return await sources.inference_state(request.app.state.cfg, request.app.state.http)

    @r.get("/api/stream")
    async def stream(request: Request, last_event_id: str | None = None):
        feed = _feed(request)
        seq, replayable = feed.resume_point(request.headers.get("last-event-id") or last_event_id)

        async def messages():
            nonlocal seq
            if replayable:
                yield ServerSentEvent(json.dumps({"boot": feed.boot, "replay_from": seq}), event="replay",
                                      retry=SSE_RETRY_MS)
            else:
                # a fresh client, another monitor boot, or older than the buffer: start from a snapshot
                hello = {"boot": feed.boot, "seq": seq, "status": feed.current_status(),
                         "reset": bool(request.headers.get("last-event-id") or last_event_id)}
                yield ServerSentEvent(json.dumps(finite(hello), default=str), event="hello", id=feed.event_id(seq),
                                      retry=SSE_RETRY_MS)
            while not feed.closing:
                for m in feed.after(seq):
                    seq = m.seq
                    yield ServerSentEvent(m.data, event=m.event, id=feed.event_id(m.seq))
                await feed.wait_after(seq, SSE_PING_S)

        return EventSourceResponse(messages(), ping=SSE_PING_S, headers={"Cache-Control": "no-store",
                                                                         "X-Accel-Buffering": "no"})

    # ------------------------------------------------------------ mutating
    @r.get("/api/auth", dependencies=[Depends(require_token)])
    async def auth_check():
        return {"ok": True}

    @r.post("/api/control/{action}", dependencies=[Depends(require_token)])
    async def control(request: Request, action: str):
        if action not in CONTROL_ACTIONS:
            raise ApiError(404, f"unknown action {action!r}; one of {', '.join(CONTROL_ACTIONS)}", "unknown_action")
        data = await _json_body(request)
        cfg = request.app.state.cfg
        state = await asyncio.to_thread(control_request, cfg.layout, action, _reason(request, data, action))
        running = live_pid(cfg.layout.pid_file("daemon")) is not None
        logger.info("control %s requested from %s", action, request.client.host if request.client else "?")
        return {"requested": action, "control": state, "daemon_running": running,
                "applies": "at the next step boundary" if running else "when the daemon starts (it is not running)"}

    @r.post("/api/queue/{name}/priority", dependencies=[Depends(require_token)])
    async def set_priority(request: Request, name: str):
        name = _queue_key(name)
        data = await _json_body(request)
        prio = data.get("priority")
        if prio not in PRIORITIES:
            raise ApiError(400, f"`priority` must be one of {', '.join(PRIORITIES)}", "invalid_value")
        return await _queue_op(request, lambda q: q.set_priority(name, prio))

    @r.post("/api/queue/{name}/retry", dependencies=[Depends(require_token)])
    async def retry(request: Request, name: str):
        name = _queue_key(name)
        data = await _json_body(request)
        prio = data.get("priority")
        if prio is not None and prio not in PRIORITIES:
            raise ApiError(400, f"`priority` must be one of {', '.join(PRIORITIES)}", "invalid_value")
        return await _queue_op(request, lambda q: q.retry(name, prio))

    @r.delete("/api/queue/{name}", dependencies=[Depends(require_token)])
    async def remove(request: Request, name: str):
        name = _queue_key(name)
        return await _queue_op(request, lambda q: q.remove(name))

    @r.post("/api/upload", dependencies=[Depends(require_token)], status_code=202)
    async def upload(request: Request, filename: str | None = None, priority: str | None = None,
                     schema_id: str | None = None):
        cfg = request.app.state.cfg
        feed = _feed(request)
        if priority is not None and priority not in PRIORITIES:
            raise ApiError(400, f"`priority` must be one of {', '.join(PRIORITIES)}", "invalid_value")
        name = _upload_name(filename)
        tmp, size, sha = await _receive_upload(request, feed, name, cfg.monitor.upload_max_bytes)
        job = {k: v for k, v in {"priority": priority, "schema_id": schema_id}.items() if v}
        inbox = feed.layout.inbox

        def place() -> str:
            with _upload_lock:
                final = _free_inbox_name(feed, name)
                if job:  # the sidecar first: the watcher takes a data file together with its NAME.job.json
                    atomic_write_json(inbox / (final[: -len(".jsonl")] + JOB_SUFFIX), job)
                os.rename(tmp, inbox / final)  # a rename into place: the watcher's cue that the file is complete
                return final

        try:
            final = await asyncio.to_thread(place)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        running = live_pid(feed.layout.pid_file("daemon")) is not None
        logger.info("upload %r -> inbox/%s (%d bytes)", filename, final, size)
        return {"inbox_name": final, "original_name": filename, "bytes": size, "sha256": sha, "job": job or None,
                "daemon_running": running,
                "message": (f"placed in inbox/{final}; the daemon validates it (spec + QUICK) like any dropped file "
                            "and the events log shows 'enqueued' or 'rejected' with the reason")
                           + ("" if running else "; the daemon is NOT running: it will be validated when it starts")}

    return r


async def _queue_op(request: Request, op) -> dict:
    queue = _feed(request).queue
    try:
        entry = await asyncio.to_thread(op, queue)
    except QueueError as exc:
        msg = str(exc)
        raise ApiError(404 if "no such file" in msg else 409, msg, "not_found" if "no such file" in msg else "conflict") from None
    except FileNotFoundError as exc:
        raise ApiError(409, f"the file moved while being changed: {exc}", "conflict") from None
    return {"ok": True, "name": entry.name, "state": entry.state, "priority": entry.meta.get("priority")}


# --------------------------------------------------------------------- page
def _mount_page(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def index():
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/vendor/uplot/{name}", include_in_schema=False)
    async def uplot(name: str):
        if name not in UPLOT_FILES:
            raise ApiError(404, f"{name}: not served", "not_found")
        path = node_modules_dir() / UPLOT_DIST / name
        if not path.is_file():
            raise ApiError(404, "chart library not installed: run scripts/setup.sh on a machine with npm "
                                "(it runs `npm ci`, installing the pinned uplot into node_modules/)", "chart_library_missing")
        return FileResponse(path, media_type=UPLOT_FILES[name], headers={"Cache-Control": "max-age=3600"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.message, exc.code), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_body(str(exc.detail), getattr(exc, "code", None) or "http_error"),
                            status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception):
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "internal_error"), status_code=500)

    from fastapi.exceptions import RequestValidationError

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        msgs = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_body(msgs, "invalid_value"), status_code=400)


def create_app(cfg, start_feed: bool = True) -> FastAPI:
    """The monitor app; the live feed's poller runs for the app's lifespan (start_feed=False: tests drive tick())."""
    cfg.layout.ensure()
    admin_token(cfg)  # create the token file now (0600) so the operator can read it before the first control

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        feed = LiveFeed(cfg)
        app.state.feed = feed
        app.state.http = httpx.AsyncClient()
        if start_feed:
            await asyncio.to_thread(feed.start, None)
            feed.loop = asyncio.get_running_loop()
        else:
            feed.loop = asyncio.get_running_loop()
        try:
            yield
        finally:
            feed.stop()
            await app.state.http.aclose()

    app = FastAPI(title="Cadence monitor", lifespan=lifespan, docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.cfg = cfg
    _install_error_handlers(app)
    mcfg = cfg.monitor
    install_guard(app, GuardPolicy(allowed_hosts(mcfg.host, mcfg.allowed_hosts), mcfg.max_body_bytes, mcfg.read_timeout,
                                   raw_body_routes={"/api/upload": (mcfg.upload_max_bytes, UPLOAD_TYPES)}),
                  lambda status, message, code: error_body(message, code))
    app.include_router(build_router())
    _mount_page(app)

    return app
