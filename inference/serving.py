"""Handlers for /v1/chat/completions and /v1/completions: validate, bind to a version, stream or collect.

Every client mistake is answered with a 4xx in OpenAI's error shape before
any generation starts: invalid JSON and wrong types (400), n != 1 (400), an
unknown model (404), a prompt over the context (400
context_length_exceeded), max_tokens over the cap (400), a full queue (429).
A request is bound to the active version when it is accepted; its `model`
field (`<model_name>@<version>`) and `X-Model-Version` header name that
version, even if a swap happens while it runs. A client that disconnects
aborts its sequence, which frees the batch slot at the next step.

Library only; wired up by inference/app.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from inference.engine import Event, SamplingParams, Sequence
from inference.prompt_limits import max_prompt_chars
from inference.protocol import ChatCompletionRequest, CompletionRequest, error_body, new_id, now
from inference.scheduler import QueueFull

logger = logging.getLogger(__name__)

DISCONNECT_POLL_SECONDS = 0.5
OFF_LOOP_PARSE_BYTES = 256 * 1024


class RequestError(Exception):
    """A client mistake: becomes an OpenAI-shaped 4xx."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        super().__init__(message)

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status,
                            headers=headers)


def validation_error(exc: ValidationError) -> RequestError:
    errs = exc.errors()
    first = errs[0] if errs else {}
    if first.get("type") == "json_invalid":
        return RequestError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first.get('msg'))}",
                            code="invalid_json")
    parts = []
    for e in errs:
        loc = ".".join(str(p) for p in e.get("loc", ())) or "(body)"
        parts.append(f"{loc}: {e.get('msg')}")
    param = ".".join(str(p) for p in first.get("loc", ())) or None
    return RequestError(400, "; ".join(parts), param=param, code="invalid_value")


class LoopBridge:
    """Hands scheduler-thread events to asyncio queues with one loop wake-up per batch of events, not per token
    (a decode step of 32 rows would otherwise cost 32 cross-thread wake-ups)."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list = []

    def post(self, queue: asyncio.Queue, event: Event) -> None:
        with self._lock:
            first = not self._pending
            self._pending.append((queue, event))
        if first:
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        for queue, event in batch:
            queue.put_nowait(event)


def sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class OpenAIServing:
    def __init__(self, state):
        self.state = state   # inference.app.ServerState
        self.cfg = state.cfg
        self._bridge: LoopBridge | None = None

    # ---- request -> Sequence ------------------------------------------------------------------
    def _served_id(self, engine) -> str:
        return f"{self.cfg.model.model_name}@{engine.version}"

    def _check_model(self, name: str, engine) -> None:
        allowed = {self.cfg.model.model_name, self._served_id(engine), engine.version}
        if name not in allowed:
            raise RequestError(404, f"The model `{name}` does not exist. Served: {self.cfg.model.model_name} "
                                    f"(version {engine.version}).", param="model", code="model_not_found")

    def _params(self, req, prompt_len: int, engine) -> SamplingParams:
        icfg = self.cfg.inference
        if req.n != 1:
            raise RequestError(400, "only n=1 is supported", param="n", code="invalid_value")
        asked = getattr(req, "max_completion_tokens", None) or req.max_tokens
        if prompt_len >= engine.max_context:
            raise RequestError(400, f"This model's maximum context length is {engine.max_context} tokens; "
                                    f"the prompt has {prompt_len}.", param="messages", code="context_length_exceeded")
        if asked is not None and asked > icfg.max_tokens_cap:
            raise RequestError(400, f"max_tokens {asked} is over this server's cap of {icfg.max_tokens_cap}",
                               param="max_tokens", code="invalid_value")
        if asked is not None and prompt_len + asked > engine.max_context:
            raise RequestError(400, f"This model's maximum context length is {engine.max_context} tokens; you asked for "
                                    f"{prompt_len + asked} ({prompt_len} in the prompt, {asked} to generate).",
                               param="max_tokens", code="context_length_exceeded")
        max_tokens = asked or min(icfg.default_max_tokens, engine.max_context - prompt_len)
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=icfg.default_temperature if req.temperature is None else req.temperature,
            top_p=icfg.default_top_p if req.top_p is None else req.top_p,
            stop=list(req.stop or []), seed=req.seed,
            think_penalty=icfg.think_penalty if req.think_penalty is None else req.think_penalty,
            post_stop_penalty=icfg.post_stop_penalty if req.post_stop_penalty is None else req.post_stop_penalty,
            ignore_eos=req.ignore_eos)

    def _prompt_ids(self, req, engine) -> list[int]:
        """Render and tokenise the prompt (runs in a worker thread: a long prompt must not stall the event loop)."""
        if isinstance(req, ChatCompletionRequest):
            chars = sum(len(m.as_template_message()["content"]) for m in req.messages)
        else:
            chars = len(req.prompt) if isinstance(req.prompt, str) else 0
        if chars > (bound := max_prompt_chars(engine)):
            raise RequestError(400, f"This model's maximum context length is {engine.max_context} tokens; the prompt "
                                    f"has {chars} characters, more than {bound} can fit.",
                               param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                               code="context_length_exceeded")
        if isinstance(req, ChatCompletionRequest):
            try:
                return engine.chat_prompt_ids([m.as_template_message() for m in req.messages])
            except Exception as exc:  # jinja template errors on odd message sequences are the client's
                raise RequestError(400, f"messages cannot be rendered with the chat template: {exc}",
                                   param="messages", code="invalid_value") from None
        if isinstance(req.prompt, str):
            return engine.text_prompt_ids(req.prompt)
        if any(not 0 <= t < engine.vocab_limit for t in req.prompt):
            raise RequestError(400, f"prompt token ids must be in [0, {engine.vocab_limit})", param="prompt",
                               code="invalid_value")
        return list(req.prompt)

    async def handle(self, request: Request, kind: str):
        body = await request.body()
        model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
        try:
            try:
                if len(body) > OFF_LOOP_PARSE_BYTES:  # a multi-MB body would hold the event loop for tens of ms
                    req = await asyncio.to_thread(model_cls.model_validate_json, body)
                else:
                    req = model_cls.model_validate_json(body or b"")
            except ValidationError as exc:
                raise validation_error(exc) from None
            if self.state.shutting_down:
                raise RequestError(503, "server is shutting down", type_="service_unavailable", code="shutting_down")
            if self.state.scheduler.active is None:
                raise RequestError(503, "no model loaded yet", type_="service_unavailable", code="not_ready")
        except RequestError as exc:
            self.state.metrics.count_rejected(exc.code or str(exc.status))
            return exc.response()

        engine = self.state.scheduler.acquire()
        headers = {"X-Model-Version": engine.version}
        if self._bridge is None:
            self._bridge = LoopBridge(asyncio.get_running_loop())
        bridge = self._bridge
        queue: asyncio.Queue[Event] = asyncio.Queue()
        try:
            self._check_model(req.model, engine)
            prompt_ids = await asyncio.to_thread(self._prompt_ids, req, engine)
            if not prompt_ids:
                raise RequestError(400, "the prompt is empty after tokenization", param="prompt", code="invalid_value")
            params = self._params(req, len(prompt_ids), engine)
            seq = Sequence(new_id("chatcmpl" if kind == "chat" else "cmpl"), prompt_ids, params, engine,
                           lambda ev: bridge.post(queue, ev))
            try:
                self.state.scheduler.submit(seq)
            except QueueFull as exc:
                raise RequestError(429, f"server busy: {exc}", type_="rate_limit_error", code="queue_full") from None
        except RequestError as exc:
            self.state.scheduler.unreserve(engine)
            self.state.metrics.count_rejected(exc.code or str(exc.status))
            return exc.response(headers)
        except BaseException:
            self.state.scheduler.unreserve(engine)
            raise

        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._stream(kind, seq, queue, include_usage), media_type="text/event-stream",
                                     headers={**headers, "Cache-Control": "no-cache"})
        return await self._collect(kind, seq, queue, request, headers)

    # ---- responses ---------------------------------------------------------------------------------
    def _usage(self, ev: Event) -> dict:
        return {"prompt_tokens": ev.prompt_tokens, "completion_tokens": ev.completion_tokens,
                "total_tokens": ev.prompt_tokens + ev.completion_tokens}

    async def _collect(self, kind, seq, queue, request, headers):
        text = []
        while True:
            try:
                ev = await asyncio.wait_for(queue.get(), timeout=DISCONNECT_POLL_SECONDS)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    seq.abort()
                    self.state.scheduler.wake()
                    return JSONResponse(error_body("client disconnected", code="client_closed"), status_code=499)
                continue
            if ev.error:
                return JSONResponse(error_body(ev.error, "server_error", code="generation_failed"), status_code=500,
                                    headers=headers)
            text.append(ev.text)
            if ev.finish_reason:
                break
        content = "".join(text)
        model = self._served_id(seq.engine)
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": None,
                      "finish_reason": ev.finish_reason}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": ev.finish_reason}
            obj = "text_completion"
        return JSONResponse({"id": seq.request_id, "object": obj, "created": now(), "model": model,
                             "system_fingerprint": seq.engine.version, "choices": [choice],
                             "usage": self._usage(ev)}, headers=headers)

    async def _stream(self, kind, seq, queue, include_usage):
        model = self._served_id(seq.engine)
        created = now()
        base = {"id": seq.request_id, "created": created, "model": model, "system_fingerprint": seq.engine.version}
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict:
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            else:
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
            out = {**base, "object": obj, "choices": [choice]}
            if include_usage:
                out["usage"] = None
            return out

        try:
            if kind == "chat":
                yield sse(chunk(None, None, first=True))
            while True:
                ev = await queue.get()
                if ev.error:
                    yield sse(error_body(ev.error, "server_error", code="generation_failed"))
                    break
                if ev.finish_reason:
                    if ev.text:
                        yield sse(chunk(ev.text, None))
                    yield sse(chunk(None, ev.finish_reason))
                    if include_usage:
                        yield sse({**base, "object": obj, "choices": [], "usage": self._usage(ev)})
                    break
                if ev.text:
                    yield sse(chunk(ev.text, None))
            yield "data: [DONE]\n\n"
        finally:
            if not seq.finished:  # the client went away mid-stream: free the slot
                seq.abort()
                self.state.scheduler.wake()
