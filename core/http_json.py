"""JSON request bodies of both servers (inference, monitor): the bytes become one typed model, or one JsonBodyError.

The same rules on every JSON route of both servers (issue 14):

- the size and the time a body may take are bounded before it gets here
  (core/http_guard.py);
- pydantic's parser (jiter) reads it in one pass: nesting depth is limited,
  so a 100k-deep body is a 400 and never a RecursionError; bytes that are not
  UTF-8 are refused;
- NaN and Infinity are refused: by the parser for an untyped body
  (`model=None`), by the model's fields for a typed one (`RequestBody` sets
  allow_inf_nan=False; a model with free-form fields refuses them itself, as
  inference/protocol.py does);
- the top level is an object; an empty body is `{}` where the route allows it;
- a typed body is validated by its model: strict types, and with
  extra="forbid" an unknown field is refused by name;
- a body over OFF_LOOP_PARSE_BYTES is parsed in a worker thread, so a
  multi-MB body does not hold the event loop;
- every refusal is a JsonBodyError (400) with a machine-readable `code` and
  the `field` it is about. Each app registers a handler that renders it in its
  own error shape (OpenAI's `{"error": {message, type, param, code}}` for
  inference/, `{"error": {message, code}}` for monitoring/): a client mistake
  is a 4xx, never a 5xx.

A route takes a typed body as a dependency:
`body: Annotated[Model, Depends(JsonBody(Model))]`, with
`openapi_extra=JsonBody(Model).openapi` so the OpenAPI document shows it.

Library only.
"""
from __future__ import annotations

import asyncio
import typing
from dataclasses import dataclass
from typing import TypeVar

import pydantic_core
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core.core_schema import ErrorType
from starlette.requests import Request

OFF_LOOP_PARSE_BYTES = 256 * 1024
BUILTIN_ERRORS = frozenset(typing.get_args(ErrorType))
# pydantic error type -> code; a model's own PydanticCustomError type is its code, every other builtin one invalid_value
CODES = {"json_invalid": "invalid_json", "extra_forbidden": "unknown_field"}

M = TypeVar("M", bound=BaseModel)


class RequestBody(BaseModel):
    """Base of a typed request body: unknown fields refused by name, no type coercion, no NaN/Infinity."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Problem:
    field: str | None   # dotted path in the body; None: the body as a whole
    text: str           # what is wrong, for a person
    unknown: bool = False  # a field the model does not define (each app may say more about what it does take)


class JsonBodyError(ValueError):
    """A body the route does not take; `code` names the first problem's kind, `field` its field."""

    status = 400

    def __init__(self, problems: list[Problem], code: str):
        self.problems, self.code, self.field = problems, code, problems[0].field
        super().__init__(self.describe())

    @property
    def message(self) -> str:
        return str(self)

    def describe(self, unknown_field: str = "unknown field") -> str:
        """Every problem, `field: text` each; an unknown field is called `unknown_field`."""
        return "; ".join(p.text if p.field is None else f"{p.field}: {unknown_field if p.unknown else p.text}"
                         for p in self.problems)


def _not_json(detail: str) -> JsonBodyError:
    return JsonBodyError([Problem(None, f"request body is not valid JSON: {detail}")], "invalid_json")


def _from_validation(exc: ValidationError) -> JsonBodyError:
    errors = exc.errors(include_url=False)
    if not errors:  # pydantic always names one; kept total so a refusal can never become a 500
        return JsonBodyError([Problem(None, str(exc))], "invalid_value")
    first = errors[0]
    if first["type"] == "json_invalid":
        return _not_json(str((first.get("ctx") or {}).get("error", first["msg"])))
    problems = []
    for e in errors:
        field = ".".join(str(p) for p in e["loc"]) or None
        if e["type"] == "model_type" and field is None:
            problems.append(Problem(None, "request body must be a JSON object"))
        else:
            problems.append(Problem(field, e["msg"] if field else f"(body): {e['msg']}",
                                    unknown=e["type"] == "extra_forbidden"))
    kind = first["type"]
    return JsonBodyError(problems, CODES.get(kind) or (kind if kind not in BUILTIN_ERRORS else "invalid_value"))


def parse_json_body(body: bytes, model: type[M] | None = None, allow_empty: bool = True) -> M | dict:
    """`body` as `model` (or, with no model, as a dict), else JsonBodyError. An empty or blank body is `{}` when
    `allow_empty`, else "not valid JSON"."""
    if allow_empty and not body.strip():
        body = b"{}"
    if model is not None:
        try:
            return model.model_validate_json(body)
        except ValidationError as exc:
            raise _from_validation(exc) from None
    try:
        data = pydantic_core.from_json(body, allow_inf_nan=False)
    except ValueError as exc:
        raise _not_json(str(exc)) from None
    if not isinstance(data, dict):
        raise JsonBodyError([Problem(None, "request body must be a JSON object")], "invalid_value")
    return data


async def read_json_body(request: Request, model: type[M] | None = None, allow_empty: bool = True) -> M | dict:
    """The request's body through `parse_json_body`; a big one is parsed in a worker thread."""
    body = await request.body()
    if len(body) > OFF_LOOP_PARSE_BYTES:  # a multi-MB body would hold the event loop for tens of ms
        return await asyncio.to_thread(parse_json_body, body, model, allow_empty)
    return parse_json_body(body, model, allow_empty)


class JsonBody:
    """FastAPI dependency: the request's body as `model` (`Annotated[Model, Depends(JsonBody(Model))]`)."""

    def __init__(self, model: type[BaseModel], allow_empty: bool = True):
        self.model, self.allow_empty = model, allow_empty

    async def __call__(self, request: Request) -> BaseModel:
        return await read_json_body(request, self.model, self.allow_empty)

    @property
    def openapi(self) -> dict:
        """The route's `requestBody` for the OpenAPI document (pass as `openapi_extra=`)."""
        return {"requestBody": {"required": not self.allow_empty,
                                "content": {"application/json": {"schema": self.model.model_json_schema()}}}}
