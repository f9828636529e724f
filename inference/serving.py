"""Handlers for /v1/chat/completions and /v1/completions: validate, bind to a version, stream or collect.

Every client mistake is answered with a 4xx in OpenAI's error shape before
any generation starts: invalid JSON and wrong types (400), a field the
builtin engine does not implement (400 unsupported_parameter, see
inference/protocol.py) or does not know (400 unknown_parameter), an unknown
model (404), a prompt over the context (400 context_length_exceeded),
max_tokens over the cap (400), a full queue (429). A request is bound to the
active version when it is accepted; its `model` field
(`<model_name>@<version>`) and `X-Model-Version` header name that version,
even if a swap happens while it runs. /v1/completions takes a list of
prompts (one choice each, `index` = position in the list). A client that
disconnects aborts its sequences, which frees their batch slots after the
decode step under way: a watcher awaits the ASGI `http.disconnect` message
instead of polling.

Library only; wired up by inference/app.py.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from core.http_json import JsonBodyError, read_json_body
from inference.engine import Event, SamplingParams, Sequence, TokenLogprob
from inference.prompt_limits import max_prompt_chars
from inference.protocol import ENGINE_HINT, ChatCompletionRequest, CompletionRequest, error_body, new_id, now
from inference.scheduler import QueueFull

logger = logging.getLogger(__name__)

# core/http_json.py's codes that OpenAI spells its own way
OPENAI_CODES = {"unknown_field": "unknown_parameter"}
UNKNOWN_PARAMETER = f"unknown field, not an OpenAI parameter the builtin engine knows ({ENGINE_HINT})"


class RequestError(Exception):
    """A client mistake: becomes an OpenAI-shaped 4xx."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type_: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_
        super().__init__(message)

    @classmethod
    def from_body(cls, exc: JsonBodyError, unknown_field: str = "unknown field") -> RequestError:
        """A request body the route does not take (core/http_json.py), in OpenAI's terms."""
        return cls(exc.status, exc.describe(unknown_field), param=exc.field, code=OPENAI_CODES.get(exc.code, exc.code))

    def response(self, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code), status_code=self.status,
                            headers=headers)


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


class _Disconnected:
    """Put on a request's queue by the disconnect watcher."""


DISCONNECTED = _Disconnected()
LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity; vLLM clamps the same way


class ModelLookup:
    """GET /v1/models/{id} for either engine's handler: it provides `state`, `cfg`, `model_ids(active)` and
    `model_card(active)`."""

    def retrieve_model(self, model_id: str) -> dict:
        """The card when `model_id` names what is served, else a 404 RequestError."""
        active = self.state.scheduler.active
        if active is None or model_id not in self.model_ids(active):
            served = f" Served: {self.cfg.model.model_name} (version {active.version})." if active else ""
            raise RequestError(404, f"The model `{model_id}` does not exist.{served}", param="model",
                               code="model_not_found")
        return self.model_card(active)


class OpenAIServing(ModelLookup):
    def __init__(self, state):
        self.state = state   # inference.app.ServerState
        self.cfg = state.cfg
        self._bridge: LoopBridge | None = None

    # ---- models ---------------------------------------------------------------------------------
    def _served_id(self, engine) -> str:
        return f"{self.cfg.model.model_name}@{engine.version}"

    def model_ids(self, engine) -> set[str]:
        return {self.cfg.model.model_name, self._served_id(engine), engine.version}

    def model_card(self, engine) -> dict:
        """The /v1/models entry of the active version (OpenAI's Model object plus Cadence's version fields)."""
        return {"id": self.cfg.model.model_name, "object": "model", "created": int(engine.loaded_at),
                "owned_by": "cadence", "version": engine.version, "global_step": engine.global_step,
                "source_path": engine.source_path, "served_id": self._served_id(engine),
                "content_id": engine.content_id, "max_model_len": engine.max_context}

    def _check_model(self, name: str, engine) -> None:
        if name not in self.model_ids(engine):
            raise RequestError(404, f"The model `{name}` does not exist. Served: {self.cfg.model.model_name} "
                                    f"(version {engine.version}).", param="model", code="model_not_found")

    # ---- request -> Sequences -------------------------------------------------------------------------
    def _params(self, req, prompt_len: int, engine, param: str) -> SamplingParams:
        icfg = self.cfg.inference
        asked = req.token_budget
        budget_param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
        if prompt_len > engine.max_context or (prompt_len == engine.max_context and asked != 0):
            raise RequestError(400, f"This model's maximum context length is {engine.max_context} tokens; "
                                    f"the prompt has {prompt_len}.", param=param, code="context_length_exceeded")
        if asked is not None and asked > icfg.max_tokens_cap:
            raise RequestError(400, f"{budget_param} {asked} is over this server's cap of {icfg.max_tokens_cap}",
                               param=budget_param, code="invalid_value")
        if asked is not None and prompt_len + asked > engine.max_context:
            raise RequestError(400, f"This model's maximum context length is {engine.max_context} tokens; you asked for "
                                    f"{prompt_len + asked} ({prompt_len} in the prompt, {asked} to generate).",
                               param=budget_param, code="context_length_exceeded")
        max_tokens = asked if asked is not None else min(icfg.default_max_tokens, engine.max_context - prompt_len)
        if req.logit_bias:
            bad = [t for t in req.logit_bias if not 0 <= t < engine.vocab_limit]
            if bad:
                raise RequestError(400, f"logit_bias token ids {bad} are outside [0, {engine.vocab_limit})",
                                   param="logit_bias", code="invalid_value")
        if isinstance(req, ChatCompletionRequest):
            logprobs = (req.top_logprobs or 0) if req.logprobs else None
            prompt_logprobs = None
        else:
            logprobs = req.logprobs
            prompt_logprobs = req.logprobs if req.echo else None
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=icfg.default_temperature if req.temperature is None else req.temperature,
            top_p=icfg.default_top_p if req.top_p is None else req.top_p,
            top_k=max(req.top_k or 0, 0),
            stop=list(req.stop or []), seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
            logit_bias=req.logit_bias,
            logprobs=logprobs, prompt_logprobs=prompt_logprobs,
            think_penalty=icfg.think_penalty if req.think_penalty is None else req.think_penalty,
            post_stop_penalty=icfg.post_stop_penalty if req.post_stop_penalty is None else req.post_stop_penalty,
            ignore_eos=bool(req.ignore_eos))

    def _check_prompt_chars(self, req, engine) -> None:
        """A prompt longer than the context could hold is refused by its length, before it is rendered or tokenised."""
        bound = max_prompt_chars(engine)
        if isinstance(req, ChatCompletionRequest):
            sizes = [("messages", sum(len(m.as_template_message()["content"]) for m in req.messages))]
        else:
            sizes = [("prompt" if len(req.prompts) == 1 else f"prompt.{i}", len(p))
                     for i, p in enumerate(req.prompts) if isinstance(p, str)]
        for param, chars in sizes:
            if chars > bound:
                raise RequestError(400, f"This model's maximum context length is {engine.max_context} tokens; the "
                                        f"prompt has {chars} characters, more than {bound} can fit.", param=param,
                                   code="context_length_exceeded")

    def _prompts(self, req, engine) -> list[tuple[list[int], str]]:
        """(token ids, text to echo) per prompt. Runs in a worker thread: a long prompt must not stall the event loop."""
        self._check_prompt_chars(req, engine)
        if isinstance(req, ChatCompletionRequest):
            try:
                ids = engine.chat_prompt_ids([m.as_template_message() for m in req.messages])
            except Exception as exc:  # jinja template errors on odd message sequences are the client's
                raise RequestError(400, f"messages cannot be rendered with the chat template: {exc}",
                                   param="messages", code="invalid_value") from None
            return [(ids, "")]
        out = []
        for i, p in enumerate(req.prompts):
            param = "prompt" if len(req.prompts) == 1 else f"prompt.{i}"
            if isinstance(p, str):
                ids, text = engine.text_prompt_ids(p), p
            else:
                if any(not 0 <= t < engine.vocab_limit for t in p):
                    raise RequestError(400, f"prompt token ids must be in [0, {engine.vocab_limit})", param=param,
                                       code="invalid_value")
                ids, text = list(p), (engine.decode(p) if req.echo else "")
            if not ids:
                raise RequestError(400, "the prompt is empty after tokenization", param=param, code="invalid_value")
            out.append((ids, text))
        return out

    async def handle(self, request: Request, kind: str):
        model_cls = ChatCompletionRequest if kind == "chat" else CompletionRequest
        try:
            try:
                req = await read_json_body(request, model_cls, allow_empty=False)
            except JsonBodyError as exc:
                raise RequestError.from_body(exc, UNKNOWN_PARAMETER) from None
            if self.state.shutting_down:
                raise RequestError(503, "server is shutting down", type_="service_unavailable", code="shutting_down")
            if self.state.scheduler.active is None:
                raise RequestError(503, "no model loaded yet", type_="service_unavailable", code="not_ready")
            n_prompts = 1 if kind == "chat" else len(req.prompts)
            if n_prompts > self.cfg.inference.max_queue:
                raise RequestError(400, f"{n_prompts} prompts in one request; at most {self.cfg.inference.max_queue} "
                                        f"(inference.max_queue)", param="prompt", code="invalid_value")
        except RequestError as exc:
            self.state.metrics.count_rejected(exc.code or str(exc.status))
            return exc.response()

        engine = self.state.scheduler.acquire(n_prompts)
        headers = {"X-Model-Version": engine.version}
        if self._bridge is None:
            self._bridge = LoopBridge(asyncio.get_running_loop())
        bridge = self._bridge
        queue: asyncio.Queue = asyncio.Queue()
        try:
            self._check_model(req.model, engine)
            prompts = await asyncio.to_thread(self._prompts, req, engine)
            request_id = new_id("chatcmpl" if kind == "chat" else "cmpl")
            seqs = []
            for i, (ids, _) in enumerate(prompts):
                param = "messages" if kind == "chat" else ("prompt" if n_prompts == 1 else f"prompt.{i}")
                params = self._params(req, len(ids), engine, param)
                seqs.append(Sequence(f"{request_id}-{i}", ids, params, engine,
                                     lambda ev, i=i: bridge.post(queue, (i, ev))))
            try:
                self.state.scheduler.submit_all(seqs)
            except QueueFull as exc:
                raise RequestError(429, f"server busy: {exc}", type_="rate_limit_error", code="queue_full") from None
        except RequestError as exc:
            self.state.scheduler.unreserve(engine, n_prompts)
            self.state.metrics.count_rejected(exc.code or str(exc.status))
            return exc.response(headers)
        except BaseException:
            self.state.scheduler.unreserve(engine, n_prompts)
            raise

        echoes = [text for _, text in prompts] if kind == "completion" and req.echo else None
        if req.stream:
            include_usage = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(self._stream(kind, request_id, seqs, queue, include_usage, echoes),
                                     media_type="text/event-stream", headers={**headers, "Cache-Control": "no-cache"})
        watcher = asyncio.create_task(self._watch_disconnect(request, seqs, queue))
        try:
            return await self._collect(kind, request_id, seqs, queue, headers, echoes)
        finally:
            watcher.cancel()

    async def _watch_disconnect(self, request: Request, seqs: list[Sequence], queue: asyncio.Queue) -> None:
        """Abort the request's sequences as soon as the client goes away (the body is already read, so the next
        ASGI message can only be the disconnect)."""
        while True:
            message = await request.receive()
            if message.get("type") == "http.disconnect":
                break
        for s in seqs:
            s.abort()
        self.state.scheduler.wake()
        queue.put_nowait(DISCONNECTED)

    def abort(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            s.abort()
        self.state.scheduler.wake()

    # ---- logprobs in OpenAI's two shapes ------------------------------------------------------------
    def _chat_logprobs(self, engine, entries: list[TokenLogprob]) -> dict:
        def item(tok, lp):
            text, raw = engine.token_piece(tok)
            return {"token": text, "logprob": max(lp, LOGPROB_FLOOR), "bytes": raw}

        return {"content": [{**item(t, lp), "top_logprobs": [item(a, alp) for a, alp in alts]}
                            for t, lp, alts in entries], "refusal": None}

    def _completion_logprobs(self, engine, entries: list[TokenLogprob | None], prompt_ids: list[int] | None,
                             offset: int) -> tuple[dict, int]:
        """OpenAI's legacy shape; `entries` may start with the prompt's (the first one None: nothing precedes it).
        text_offset counts characters from the start of the choice's text. Returns (object, next offset)."""
        tokens, token_lps, tops, offsets = [], [], [], []
        for pos, e in enumerate(entries):
            tok = e[0] if e is not None else prompt_ids[pos]
            text = engine.token_piece(tok)[0]
            tokens.append(text)
            offsets.append(offset)
            offset += len(text)
            if e is None:
                token_lps.append(None)
                tops.append(None)
                continue
            top = {engine.token_piece(a)[0]: max(alp, LOGPROB_FLOOR) for a, alp in e[2]}
            top.setdefault(text, max(e[1], LOGPROB_FLOOR))  # OpenAI: the chosen token is always included
            token_lps.append(max(e[1], LOGPROB_FLOOR))
            tops.append(top)
        return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": offsets}, offset

    # ---- responses ---------------------------------------------------------------------------------
    @staticmethod
    def _usage(finals: list[Event]) -> dict:
        p = sum(ev.prompt_tokens for ev in finals)
        c = sum(ev.completion_tokens for ev in finals)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}

    async def _collect(self, kind, request_id, seqs, queue, headers, echoes):
        n = len(seqs)
        texts: list[list[str]] = [[] for _ in range(n)]
        finals: list[Event | None] = [None] * n
        while any(f is None for f in finals):
            item = await queue.get()
            if item is DISCONNECTED:
                return JSONResponse(error_body("client disconnected", code="client_closed"), status_code=499)
            i, ev = item
            if ev.error:
                self.abort(seqs)
                return JSONResponse(error_body(ev.error, "server_error", code="generation_failed"), status_code=500,
                                    headers=headers)
            texts[i].append(ev.text)
            if ev.finish_reason:
                finals[i] = ev
        engine = seqs[0].engine
        choices = []
        for i, s in enumerate(seqs):
            content = "".join(texts[i])
            if kind == "chat":
                lp = self._chat_logprobs(engine, s.output_logprobs) if s.params.logprobs is not None else None
                choices.append({"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                                "logprobs": lp, "finish_reason": finals[i].finish_reason})
                continue
            lp = None
            if s.params.logprobs is not None:
                entries = (s.prompt_logprobs or []) + s.output_logprobs
                lp, _ = self._completion_logprobs(engine, entries, s.prompt_ids, 0)
            text = (echoes[i] if echoes else "") + content
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": finals[i].finish_reason})
        obj = "chat.completion" if kind == "chat" else "text_completion"
        return JSONResponse({"id": request_id, "object": obj, "created": now(), "model": self._served_id(engine),
                             "system_fingerprint": engine.version, "choices": choices,
                             "usage": self._usage(finals)}, headers=headers)

    async def _stream(self, kind, request_id, seqs, queue, include_usage, echoes):
        engine = seqs[0].engine
        base = {"id": request_id, "created": now(), "model": self._served_id(engine),
                "system_fingerprint": engine.version}
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        offsets = [0] * len(seqs)

        def chunk(i: int, text: str | None, finish: str | None, entries=None, first: bool = False) -> dict:
            s = seqs[i]
            if kind == "chat":
                delta = {"role": "assistant", "content": ""} if first else ({"content": text} if text else {})
                lp = self._chat_logprobs(engine, entries or []) if s.params.logprobs is not None and not first else None
                choice = {"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}
            else:
                lp = None
                if s.params.logprobs is not None:
                    lp, offsets[i] = self._completion_logprobs(engine, entries or [], s.prompt_ids, offsets[i])
                choice = {"index": i, "text": text or "", "logprobs": lp, "finish_reason": finish}
            out = {**base, "object": obj, "choices": [choice]}
            if include_usage:
                out["usage"] = None
            return out

        finals: list[Event | None] = [None] * len(seqs)
        # An echoed prompt comes first, with its logprobs (known once the prompt ran: at its first event).
        echo_due = set(range(len(seqs))) if echoes else set()
        try:
            if kind == "chat":
                yield sse(chunk(0, None, None, first=True))
            while any(f is None for f in finals):
                i, ev = await queue.get()
                if ev.error:
                    yield sse(error_body(ev.error, "server_error", code="generation_failed"))
                    break
                if i in echo_due:
                    echo_due.discard(i)
                    yield sse(chunk(i, echoes[i], None, seqs[i].prompt_logprobs))
                if ev.finish_reason:
                    finals[i] = ev
                    if ev.text or ev.logprobs:
                        yield sse(chunk(i, ev.text, None, ev.logprobs))
                    yield sse(chunk(i, None, ev.finish_reason))
                elif ev.text:
                    yield sse(chunk(i, ev.text, None, ev.logprobs))
            else:
                if include_usage:
                    yield sse({**base, "object": obj, "choices": [], "usage": self._usage(finals)})
            yield "data: [DONE]\n\n"
        finally:
            if not all(s.finished for s in seqs):  # the client went away mid-stream (or one failed): free the slots
                self.abort(seqs)
