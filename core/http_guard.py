"""The HTTP front door shared by both servers (inference and monitor): what a request must be before an app sees it.

`install_guard(app, policy, render)` wraps a FastAPI app, OUTSIDE Starlette's
own ServerErrorMiddleware, in `RequestGuard`, which for every HTTP request:

- refuses a `Host` that is not allowed (400 `invalid_host`): loopback names,
  the bind address and `allowed_hosts` from the config. A DNS-rebinding page
  reaches the server under its own name, so it is refused even though the
  TCP peer is 127.0.0.1;
- refuses a POST/PUT/PATCH whose Content-Type is not JSON (415
  `unsupported_media_type`): a web page can send `text/plain` or a form
  without a CORS preflight, never `application/json`. A POST with no body and
  no Content-Type is allowed; routes listed in `raw_body_types` (the monitor's
  upload) accept their own types;
- bounds the body: a declared Content-Length over the limit is answered 413
  before one byte is read; a body without one is counted while it streams in
  and refused (413 `body_too_large`) as soon as it passes the limit;
- bounds the time a body may take to arrive (`read_timeout`, 408
  `read_timeout`), so a client that sends headers and stalls does not hold a
  task and a buffer forever. (A client that never finishes its headers is
  timed out by the server protocol in core/http_server.py.);
- adds `Connection: close` to every 5xx and to the 408/413 it caused, and
  swallows an exception re-raised after a 500 was sent, so uvicorn ends the
  connection with a complete response instead of cutting it: a client's
  pooled connection never dies under its next request.

Errors keep each server's shape: the guard's own answers go through
`render(status, message, code)`; the body limit and read timeout, hit inside
the app while it reads the body, are raised as `GuardRejection` (an
HTTPException) and answered by the app's own handler.

What a JSON body must be once it has arrived is core/http_json.py's job.

Library only.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
CLOSE = (b"connection", b"close")


class GuardRejection(StarletteHTTPException):
    """A request the guard refuses from inside the app (body too large, too slow); `code` is machine-readable."""

    def __init__(self, status: int, message: str, code: str):
        super().__init__(status, message)
        self.code = code


def allowed_hosts(bind_host: str, configured: list[str]) -> frozenset[str]:
    """Host names a request may carry: loopback names, a specific bind address, and the configured ones ("*" = any)."""
    names = set(LOOPBACK_HOSTS) | {h.strip().lower().rstrip(".") for h in configured if h.strip()}
    bind = bind_host.strip().lower().strip("[]")
    if bind not in WILDCARD_BINDS:
        names.add(bind)
    return frozenset(names)


def host_name(header: str) -> str:
    """The name of a Host header without port or brackets, lowercased: "[::1]:8765" -> "::1"."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


@dataclass(frozen=True)
class GuardPolicy:
    allowed_hosts: frozenset[str]
    max_body_bytes: int
    read_timeout: float
    # path -> (body size limit, accepted media types; "" = no Content-Type) for routes whose body is not JSON
    raw_body_routes: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def is_json_type(media: str) -> bool:
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


Render = Callable[[int, str, str], dict]


class RequestGuard:
    """Pure ASGI middleware (no BaseHTTPMiddleware: the body must stream through, not be buffered)."""

    def __init__(self, app, policy: GuardPolicy, render: Render):
        self.app = app
        self.policy = policy
        self.render = render

    async def _refuse(self, send, status: int, message: str, code: str) -> None:
        response = JSONResponse(self.render(status, message, code), status_code=status)
        response.headers["connection"] = "close"
        await response({"type": "http"}, _no_receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or ():
            headers.setdefault(k.decode("latin-1").lower(), v.decode("latin-1"))
        policy = self.policy
        host = headers.get("host")
        if host is None:
            return await self._refuse(send, 400, "a Host header is required", "invalid_host")
        if "*" not in policy.allowed_hosts and host_name(host) not in policy.allowed_hosts:
            return await self._refuse(
                send, 400, f"Host {host[:100]!r} is not served here; allowed: {', '.join(sorted(policy.allowed_hosts))}"
                           " (add it to allowed_hosts in the config)", "invalid_host")
        limit = policy.max_body_bytes
        raw = policy.raw_body_routes.get(scope.get("path", ""))
        method = scope.get("method", "GET")
        declared = headers.get("content-length")
        has_body = (declared not in (None, "0")) or "transfer-encoding" in headers
        if method in BODY_METHODS:
            media = _media_type(headers.get("content-type", ""))
            if raw is not None:
                limit, accepted = raw
                if media not in accepted:
                    shown = ", ".join(a or "(none)" for a in accepted)
                    return await self._refuse(send, 415, f"Content-Type {media or '(none)'!r} is not accepted here; "
                                                         f"send one of: {shown}", "unsupported_media_type")
            elif (media or has_body) and not is_json_type(media):
                return await self._refuse(send, 415, f"Content-Type {media or '(none)'!r} is not accepted: send "
                                                     "application/json", "unsupported_media_type")
        if declared is not None:
            if not declared.strip().isdigit():
                return await self._refuse(send, 400, "invalid Content-Length", "invalid_content_length")
            if int(declared) > limit:
                return await self._refuse(send, 413, f"request body is {int(declared)} bytes; the limit is {limit}",
                                          "body_too_large")

        received = 0
        body_done = not has_body and method not in BODY_METHODS
        close = False
        started, status = False, 0

        async def guarded_receive():
            nonlocal received, body_done, close
            if body_done:  # after the body, receive() only waits for a disconnect (streaming responses): no limit
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), policy.read_timeout)
            except asyncio.TimeoutError:
                close = True
                raise GuardRejection(408, f"the request body did not arrive within {policy.read_timeout:g} s",
                                     "read_timeout") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    close = True
                    raise GuardRejection(413, f"request body exceeds the limit of {limit} bytes", "body_too_large")
                if not message.get("more_body", False):
                    body_done = True
            else:
                body_done = True
            return message

        async def guarded_send(message):
            nonlocal started, status
            if message["type"] == "http.response.start":
                started, status = True, message["status"]
                if close or message["status"] >= 500:
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except Exception:
            if not started:
                logger.exception("unhandled error on %s", scope.get("path"))
                await self._refuse(send, 500, "internal error", "internal_error")
            elif status < 500:  # a streaming response broke mid-way: uvicorn closes the unfinished response
                logger.exception("error on %s after the response started", scope.get("path"))
            # else: the app's handler has logged it and sent its 500 with Connection: close; re-raising would make
            # uvicorn cut the connection instead of closing it after the response


async def _no_receive():
    return {"type": "http.disconnect"}


def install_guard(app, policy: GuardPolicy, render: Render) -> None:
    """Put RequestGuard outside everything Starlette builds for `app` (ServerErrorMiddleware included), so it also
    sees the 500 that middleware sends and the exception it re-raises."""
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: RequestGuard(build(), policy, render)
