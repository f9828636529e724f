"""OpenAI wire format: request models (validated strictly from the raw JSON body) and error bodies.

Requests are parsed with `Model.model_validate_json(body)` in strict mode, so
a string where a number belongs is a 400, not a silent coercion. Every field
is either implemented or refused, never ignored:

- an OpenAI field the builtin engine does not implement (`tools`,
  `response_format` json_schema, `n` > 1, `suffix`, ...) is a 400
  `unsupported_parameter` naming it, unless its value is the neutral one that
  the engine honours exactly (`null`, `tools: []`, `tool_choice: "none"`,
  `response_format: {"type": "text"}`, ...): see UNSUPPORTED;
- a field OpenAI does not define is a 400 `unknown_parameter` (extra="forbid").

`null` is accepted wherever OpenAI's schema makes a field nullable. Extensions
beyond OpenAI, as vLLM spells them: `top_k`, `ignore_eos`; Cadence's own:
`think_penalty`, `post_stop_penalty` (the original system's logit penalties).

The admin API's bodies (LoadRequest, RollbackRequest) are core/http_json.py
RequestBody models. Every body of this server is read by core/http_json.py.

Library only.
"""
from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from core.http_json import RequestBody

MAX_TOP_LOGPROBS = 20
ENGINE_HINT = "set inference.engine=vllm for the full OpenAI API"


def _neutral_none(v) -> bool:
    return v is None


def _neutral_empty(v) -> bool:
    return v is None or v == [] or v == {}


# field -> (is the value one the builtin engine honours exactly?, what that value is). Anything else is a 400.
UNSUPPORTED: dict[str, tuple] = {
    "tools": (_neutral_empty, "tools are not supported"),
    "functions": (_neutral_empty, "functions are not supported"),
    "tool_choice": (lambda v: v in (None, "none"), "only tool_choice \"none\" is supported (no tools)"),
    "function_call": (lambda v: v in (None, "none"), "only function_call \"none\" is supported (no functions)"),
    "response_format": (lambda v: v is None or v == {"type": "text"},
                        "only response_format {\"type\": \"text\"} is supported (no JSON modes)"),
    "audio": (_neutral_none, "audio output is not supported"),
    "modalities": (lambda v: v is None or v == ["text"], "only modalities [\"text\"] is supported"),
    "prediction": (_neutral_none, "predicted outputs are not supported"),
    "reasoning_effort": (_neutral_none, "reasoning_effort is not supported"),
    "verbosity": (_neutral_none, "verbosity is not supported"),
    "web_search_options": (_neutral_none, "web search is not supported"),
    "store": (lambda v: v in (None, False), "stored completions are not supported (store must be false)"),
    "metadata": (_neutral_empty, "metadata is only meaningful for stored completions, which are not supported"),
    "service_tier": (lambda v: v in (None, "auto", "default"), "only service_tier \"auto\"/\"default\" is supported"),
    "prompt_cache_key": (_neutral_none, "prompt caching is not supported"),
    "prompt_cache_retention": (_neutral_none, "prompt caching is not supported"),
    "prompt_cache_options": (_neutral_none, "prompt caching is not supported"),
    "moderation": (_neutral_none, "moderation is not supported"),
    "n": (lambda v: v in (None, 1), "only n=1 is supported"),
    "best_of": (lambda v: v in (None, 1), "only best_of=1 is supported"),
    "suffix": (lambda v: v in (None, ""), "suffix (insertion) is not supported"),
    # message fields
    "tool_calls": (_neutral_empty, "assistant tool_calls are not supported"),
    "tool_call_id": (_neutral_none, "tool messages are not supported"),
    "refusal": (_neutral_none, "assistant refusal messages are not supported"),
    "name": (_neutral_none, "message names are not supported (the chat template has no place for them)"),
    # stream_options
    "include_obfuscation": (lambda v: v in (None, False), "stream obfuscation is not supported"),
}


def _refuse(name: str, v):
    ok, why = UNSUPPORTED[name]
    if not ok(v):
        raise PydanticCustomError("unsupported_parameter", "{why} by the builtin engine ({hint})",
                                  {"why": why, "hint": ENGINE_HINT})
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool | None = Field(None, description="send a last chunk with the request's usage")
    include_obfuscation: Any = Field(None, description="refused unless false/null (see UNSUPPORTED)")

    @field_validator("include_obfuscation", mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        return _refuse(info.field_name, v)


class _Request(_Strict):
    model: str = Field(..., min_length=1, description="served model name, `<name>@<version>` or a version")
    max_tokens: int | None = Field(None, ge=1, description="tokens to generate at most")
    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 is greedy")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling mass")
    top_k: int | None = Field(None, ge=-1, description="vLLM extension: keep the k most likely tokens; 0/-1 = all")
    stop: str | list[str] | None = Field(None, description="up to 4 stop strings, not included in the output")
    seed: int | None = Field(None, ge=-(2 ** 63), lt=2 ** 64, description="what torch.Generator.manual_seed accepts")
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0,
                                           description="subtracted once from a token's logit if it was generated")
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0,
                                            description="subtracted per time a token was generated")
    logit_bias: dict[str, float] | None = Field(None, description="token id (as a string) -> bias in [-100, 100]")
    stream: bool | None = Field(None, description="server-sent events")
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="end-user id (no behaviour: accepted like OpenAI)")
    safety_identifier: str | None = Field(None, description="end-user id (no behaviour: accepted like OpenAI)")
    n: Any = Field(None, description="refused unless 1/null")
    think_penalty: bool | None = Field(None, description="Cadence: push <think> tags down")
    post_stop_penalty: bool | None = Field(None, description="Cadence: end right after a stop-emoji run")
    ignore_eos: bool | None = Field(None, description="vLLM extension: keep generating past the end token")

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else v
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v):
        if not v:
            return None
        out = {}
        for key, bias in v.items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys must be token ids as strings, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias[{key}] = {bias} is outside [-100, 100]")
            out[int(key)] = float(bias)
        return out

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("invalid_value", "stream_options is only allowed when stream is true")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart]
    name: Any = None
    tool_calls: Any = None
    tool_call_id: Any = None
    function_call: Any = None
    refusal: Any = None
    audio: Any = None

    @field_validator("role")
    @classmethod
    def _role(cls, v):
        if v in ("tool", "function"):
            raise PydanticCustomError("unsupported_parameter",
                                      "{role} messages are not supported by the builtin engine ({hint})",
                                      {"role": v, "hint": ENGINE_HINT})
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _content_parts(cls, v):
        if isinstance(v, list):
            for part in v:
                kind = part.get("type") if isinstance(part, dict) else None
                if isinstance(kind, str) and kind != "text":
                    raise PydanticCustomError("unsupported_parameter",
                                              "content parts of type `{kind}` are not supported by the builtin "
                                              "engine, only text ({hint})", {"kind": kind, "hint": ENGINE_HINT})
        return v

    @field_validator("name", "tool_calls", "tool_call_id", "refusal", mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        return _refuse(info.field_name, v)

    @field_validator("function_call", "audio", mode="before")
    @classmethod
    def _unsupported_message_field(cls, v, info):
        if v is not None:
            raise PydanticCustomError("unsupported_parameter",
                                      "{field} in a message is not supported by the builtin engine ({hint})",
                                      {"field": info.field_name, "hint": ENGINE_HINT})
        return None

    def as_template_message(self) -> dict:
        content = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


_CHAT_REFUSED = ("tools", "functions", "tool_choice", "function_call", "response_format", "audio", "modalities",
                 "prediction", "reasoning_effort", "verbosity", "web_search_options", "store", "metadata",
                 "service_tier", "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "moderation")


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, description="alias of max_tokens (wins when both set)")
    logprobs: bool | None = Field(None, description="return each output token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="with logprobs: this many alternatives per position")
    parallel_tool_calls: bool | None = Field(None, description="no effect without tools (which are refused)")
    tools: Any = None
    functions: Any = None
    tool_choice: Any = None
    function_call: Any = None
    response_format: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    web_search_options: Any = None
    store: Any = None
    metadata: Any = None
    service_tier: Any = None
    prompt_cache_key: Any = None
    prompt_cache_retention: Any = None
    prompt_cache_options: Any = None
    moderation: Any = None

    @field_validator("n", *_CHAT_REFUSED, mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        return _refuse(info.field_name, v)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise PydanticCustomError("invalid_value", "top_logprobs requires logprobs to be true")
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


Prompt = str | list[int]


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        ..., description="a string, a list of token ids, or a list of either (one choice per prompt)")
    max_tokens: int | None = Field(None, ge=0, description="0 only with echo (scoring the prompt)")
    echo: bool | None = Field(None, description="prepend the prompt to the output (and its logprobs)")
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                 description="log-probabilities of the chosen token plus this many alternatives")
    best_of: Any = None
    suffix: Any = None

    @field_validator("n", "best_of", "suffix", mode="before")
    @classmethod
    def _unsupported(cls, v, info):
        return _refuse(info.field_name, v)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, str):
            v = [v]
        elif v and isinstance(v[0], int):
            v = [v]
        if not v:
            raise ValueError("prompt must not be empty")
        for i, p in enumerate(v):
            if not p:
                raise ValueError(f"prompt[{i}] must not be empty")
        return v

    @model_validator(mode="after")
    def _zero_tokens_need_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise PydanticCustomError("invalid_value", "max_tokens=0 is only allowed with echo=true (scoring)")
        return self

    @property
    def prompts(self) -> list[Prompt]:
        return self.prompt

    @property
    def token_budget(self) -> int | None:
        return self.max_tokens


# ---- admin API (admin token required; inference/app.py) ----------------------------------------------------------
class LoadRequest(RequestBody):
    """POST /admin/models/load: verify a model folder, smoke-test it and serve it (transactional swap)."""

    path: str = Field(description="the model folder: absolute or relative to paths.base_dir, inside a load root "
                                  "(inference/load_policy.py)")
    version: str | None = Field(None, description="the version label to serve it as (core/version_label.py); "
                                                  "default: the manifest's `version`, else the folder name")

    @field_validator("path")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a non-empty string")
        return v


class RollbackRequest(RequestBody):
    """POST /admin/models/rollback: serve an earlier version again, through the same checks as a load."""

    version: str | None = Field(None, description="the version to go back to; default: the one served before the "
                                                  "current one")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | int | None = None, **extra) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code, **extra}}
