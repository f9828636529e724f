"""The OpenAI routes with inference.engine = "vllm": check, pin to a version, relay vLLM's answer byte for byte.

The front keeps what the builtin engine's handlers promise: every client
mistake it can see is a 4xx in OpenAI's error shape before anything reaches
vLLM (invalid JSON, an unknown model, a field this vLLM does not implement,
max_tokens over inference.max_tokens_cap); a request is bound to the version
active when it is accepted and its `X-Model-Version` header names it; the
sampling defaults of inference.* apply when the request gives none. The
response (streamed or not) is relayed chunk by chunk as vLLM writes it, never
buffered, and a client that disconnects closes the upstream request, which
vLLM aborts.

GET /metrics is the active vLLM's own families (its Grafana dashboard works
unchanged) plus Cadence's (`cadence:model_info`, swaps, load failures,
rejections).

Library only; wired up by inference/app.py.
"""
from __future__ import annotations

import asyncio
import json
import logging

import httpx
from fastapi import Request
from fastapi.responses import Response

from core.http_json import JsonBodyError, read_json_body
from inference.protocol import UNSUPPORTED, error_body
from inference.serving import ModelLookup, RequestError

logger = logging.getLogger(__name__)

ROUTES = {"chat": "/v1/chat/completions", "completion": "/v1/completions"}
# Cadence extensions of the builtin engine that vLLM has no equivalent for.
BUILTIN_ONLY_FIELDS = ("think_penalty", "post_stop_penalty")
RELAYED_HEADERS = ("content-type", "x-request-id")


class UpstreamResponse(Response):
    """An ASGI response that sends the pinned version's request and relays its status, headers and body as they
    arrive; it ends the upstream request when the client disconnects and releases the version exactly once."""

    def __init__(self, client: httpx.AsyncClient, served, path: str, body: bytes, release):
        # Not Response.__init__: status and headers are vLLM's, known only once it answers.
        self.client, self.served, self.path, self.body, self._release = client, served, path, body, release
        self.background = None

    async def __call__(self, scope, receive, send) -> None:
        relay = asyncio.ensure_future(self._relay(send))
        watch = asyncio.ensure_future(self._watch_disconnect(receive))
        try:
            await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
            if watch.done() and not relay.done():
                logger.info("client left %s on version %s: ending the upstream request", self.path,
                            self.served.version)
        finally:
            for task in (relay, watch):
                task.cancel()
            await asyncio.gather(relay, watch, return_exceptions=True)
            self._release(self.served)
        if relay.done() and not relay.cancelled() and relay.exception() is not None:
            raise relay.exception()

    @staticmethod
    async def _watch_disconnect(receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _relay(self, send) -> None:
        request = self.client.build_request("POST", self.served.base_url + self.path, content=self.body,
                                            headers={"content-type": "application/json"})
        try:
            upstream = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            logger.error("vLLM for %s did not answer %s: %r", self.served.version, self.path, exc)
            body = json.dumps(error_body(f"the engine serving version {self.served.version} is not answering",
                                         "server_error", code="engine_unavailable")).encode()
            await send({"type": "http.response.start", "status": 502, "headers": [
                (b"content-type", b"application/json"), (b"x-model-version", self.served.version.encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            headers = [(k.encode(), v.encode()) for k, v in upstream.headers.items() if k.lower() in RELAYED_HEADERS]
            headers.append((b"x-model-version", self.served.version.encode()))
            if upstream.headers.get("content-type", "").startswith("text/event-stream"):
                headers.append((b"cache-control", b"no-cache"))
            await send({"type": "http.response.start", "status": upstream.status_code, "headers": headers})
            async for chunk in upstream.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await upstream.aclose()


class VllmProxy(ModelLookup):
    def __init__(self, state):
        self.state = state   # inference.app.ServerState; state.scheduler is a VllmPool
        self.cfg = state.cfg
        self._client: httpx.AsyncClient | None = None

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:  # created on the event loop that uses it
            self._client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10),
                                             limits=httpx.Limits(max_connections=None, max_keepalive_connections=256))
        return self._client

    def model_ids(self, served) -> set[str]:
        return {self.cfg.model.model_name, served.served_id, served.version}

    def model_card(self, served) -> dict:
        """The /v1/models entry of the active version: the same card as the builtin engine's, plus `engine`."""
        return {"id": self.cfg.model.model_name, "object": "model", "created": int(served.loaded_at),
                "owned_by": "cadence", "version": served.version, "global_step": served.global_step,
                "source_path": served.source_path, "served_id": served.served_id, "content_id": served.content_id,
                "max_model_len": served.max_context, "engine": "vllm"}

    def _check(self, data: dict, kind: str, served) -> bytes | None:
        """Raise RequestError for what the front refuses; returns the body to send when it had to add defaults."""
        icfg = self.cfg.inference
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError(400, "`model` is required (a non-empty string)", param="model", code="invalid_value")
        if model not in self.model_ids(served):
            raise RequestError(404, f"The model `{model}` does not exist. Served: {self.cfg.model.model_name} "
                                    f"(version {served.version}).", param="model", code="model_not_found")
        for key in BUILTIN_ONLY_FIELDS:
            if key in data:
                raise RequestError(400, f"`{key}` is a builtin-engine extension; inference.engine=vllm does not "
                                        "implement it", param=key, code="unsupported_parameter")
        known, dropped = served.accepted_fields.get(kind), set()
        if known is not None:
            dropped = _openai_fields_vllm_lacks(data, known)
            unknown = sorted(k for k in data if k not in known and k not in dropped)
            if unknown:
                raise RequestError(400, f"unrecognized request field(s) {', '.join(unknown)}: vLLM would ignore them",
                                   param=unknown[0], code="unknown_parameter")
        # OpenAI reads null (and `tools: []`) as "not given"; vLLM's schema refuses null for some fields (`n`) and an
        # empty tools list, so they are dropped, as are OpenAI fields at the value that means "off" (`dropped`).
        dropped |= {k for k, v in data.items() if v is None or (k == "tools" and v == [])}
        if dropped:
            data = {k: v for k, v in data.items() if k not in dropped}
        if kind == "chat":
            _check_chat_template_parts(data, served)
        asked = data.get("max_completion_tokens") or data.get("max_tokens")
        if isinstance(asked, int) and asked > icfg.max_tokens_cap:
            raise RequestError(400, f"max_tokens {asked} is over this server's cap of {icfg.max_tokens_cap}",
                               param="max_tokens", code="invalid_value")
        defaults = {"temperature": icfg.default_temperature, "top_p": icfg.default_top_p}
        if data.get("max_tokens") is None and data.get("max_completion_tokens") is None:
            defaults["max_tokens"] = icfg.default_max_tokens
        added = {k: v for k, v in defaults.items() if data.get(k) is None}
        if not added and not dropped:
            return None
        return json.dumps({**data, **added}).encode()

    async def handle(self, request: Request, kind: str):
        return await self.relay(request, kind, ROUTES[kind])

    async def relay(self, request: Request, kind: str, path: str):
        try:
            try:
                data = await read_json_body(request, allow_empty=False)
            except JsonBodyError as exc:
                raise RequestError.from_body(exc) from None
            if self.state.shutting_down:
                raise RequestError(503, "server is shutting down", type_="service_unavailable", code="shutting_down")
            if self.state.scheduler.active is None:
                raise RequestError(503, "no model loaded yet", type_="service_unavailable", code="not_ready")
        except RequestError as exc:
            self.state.metrics.count_rejected(exc.code or str(exc.status))
            return exc.response()
        pool = self.state.scheduler
        served = pool.acquire()
        try:
            rewritten = self._check(data, kind, served) if kind in ROUTES else None
        except RequestError as exc:
            pool.release(served)
            self.state.metrics.count_rejected(exc.code or str(exc.status))
            return exc.response({"X-Model-Version": served.version})
        return UpstreamResponse(self.client, served, path, rewritten or await request.body(), pool.release)

    async def metrics_text(self) -> str:
        """The active vLLM's /metrics, then Cadence's families."""
        state = self.state
        active = state.scheduler.active
        upstream = ""
        if active is not None:
            try:
                r = await self.client.get(active.base_url + "/metrics", timeout=10)
                upstream = r.text if r.status_code == 200 else ""
            except httpx.HTTPError as exc:
                logger.warning("vLLM /metrics of %s unreadable: %r", active.version, exc)
        return upstream.rstrip("\n") + ("\n" if upstream else "") + cadence_families(
            state.metrics, active, state.scheduler.draining())

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def _openai_fields_vllm_lacks(data: dict, known: frozenset) -> set[str]:
    """The fields of `data` that OpenAI defines but this vLLM's schema lacks, all at their neutral value (dropped
    before relaying: null, `store: false`, `service_tier: "auto"`, ...). One at any other value is refused by name,
    exactly as the builtin engine refuses it (inference/protocol.py UNSUPPORTED)."""
    dropped = set()
    for key in sorted(data):
        if key in known or key not in UNSUPPORTED:
            continue
        neutral, why = UNSUPPORTED[key]
        if not neutral(data[key]):
            raise RequestError(400, f"{why} by this vLLM (its API schema has no `{key}`)", param=key,
                               code="unsupported_parameter")
        dropped.add(key)
    return dropped


def _check_chat_template_parts(data: dict, served) -> None:
    """Refuse by name what vLLM would hand to a chat template that never renders it (the model would not see it),
    and message keys vLLM's schema does not define (it would drop them silently)."""
    reads = served.template_reads
    tools, choice = data.get("tools"), data.get("tool_choice")
    # A required or named tool_choice is honoured without the template: vLLM constrains the output to a call.
    if tools and "tools" not in reads and choice not in ("none", "required") and not isinstance(choice, dict):
        raise RequestError(400, "this version's chat template does not render `tools`, so the model would never see "
                                "them; use tool_choice \"required\" or a named tool (vLLM then constrains the answer "
                                "to a call), or serve a model whose template renders tools", param="tools",
                           code="unsupported_parameter")
    if data.get("reasoning_effort") is not None and "reasoning_effort" not in reads:
        raise RequestError(400, "this version's chat template does not read `reasoning_effort`",
                           param="reasoning_effort", code="unsupported_parameter")
    messages = data.get("messages")
    if not isinstance(messages, list):
        return  # vLLM's own validation answers
    allowed = served.message_fields
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            continue
        if allowed is not None:
            for key in sorted(message):
                if key not in allowed:
                    raise RequestError(400, f"unrecognized message field `{key}`: vLLM would ignore it",
                                       param=f"messages.{i}.{key}", code="unknown_parameter")
        if message.get("name") is not None and "name" not in reads:
            raise RequestError(400, "this version's chat template does not render a message's `name`",
                               param=f"messages.{i}.name", code="unsupported_parameter")


def _esc(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def cadence_families(metrics, active, draining: list) -> str:
    """Cadence's own families (the builtin engine renders the same ones in inference/metrics.py)."""
    m = f'model_name="{_esc(metrics.model_name)}"'
    out = ["# HELP cadence:model_info The model version serving new requests (value 1).",
           "# TYPE cadence:model_info gauge"]
    if active is not None:
        out.append(f'cadence:model_info{{{m},version="{_esc(active.version)}",global_step="{_esc(active.global_step)}",'
                   f'source_path="{_esc(active.source_path)}",engine="vllm"}} 1')
    with metrics._lock:
        out += ["# HELP cadence:model_versions_draining Retired versions still finishing in-flight requests.",
                "# TYPE cadence:model_versions_draining gauge", f"cadence:model_versions_draining{{{m}}} {len(draining)}",
                "# HELP cadence:model_swaps_total Successful model swaps.",
                "# TYPE cadence:model_swaps_total counter", f"cadence:model_swaps_total{{{m}}} {metrics.swaps}",
                "# HELP cadence:model_load_failures_total Rejected model loads by reason.",
                "# TYPE cadence:model_load_failures_total counter"]
        out += [f'cadence:model_load_failures_total{{{m},code="{_esc(c)}"}} {n}' for c, n in sorted(metrics.load_failures.items())]
        out += ["# HELP cadence:requests_rejected_total Requests refused before generation, by reason.",
                "# TYPE cadence:requests_rejected_total counter"]
        out += [f'cadence:requests_rejected_total{{{m},reason="{_esc(r)}"}} {n}' for r, n in sorted(metrics.rejected.items())]
    return "\n".join(out) + "\n"


def passthrough_router(require_api_key):
    """POST /v1/<anything else> (responses, embeddings, ...) relayed to the active version with the same pinning;
    `require_api_key` is the app's API-key dependency (passed in: this module is imported by inference.app)."""
    from fastapi import APIRouter, Depends

    router = APIRouter()

    @router.post("/v1/{rest:path}", dependencies=[Depends(require_api_key)])
    async def other_openai_route(request: Request, rest: str):
        return await request.app.state.cadence.serving.relay(request, "other", "/v1/" + rest)

    return router
