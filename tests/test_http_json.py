"""core/http_json.py, the one JSON-body reader of both servers: every kind of bad body is a JsonBodyError with its
code and field (never another exception), typed bodies refuse unknown fields by name, a big body parsed off the event
loop gives the same answer; each app renders the error in its own shape; the deployment fault seam."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from core.http_json import OFF_LOOP_PARSE_BYTES, JsonBody, JsonBodyError, RequestBody, parse_json_body, read_json_body
from management.deploy_faults import NO_FAULTS, POINTS, DeployFaults


class Note(RequestBody):
    text: str = Field(description="a string")
    weight: float | None = Field(None, description="a number")
    tags: list[str] = Field(default_factory=list, description="strings")


class Picky(RequestBody):
    word: str = Field(description="refused with a code of its own unless 'ok'")

    @field_validator("word")
    @classmethod
    def _ok(cls, v: str) -> str:
        if v != "ok":
            raise PydanticCustomError("not_ok", "must be 'ok'")
        return v


class Optional(RequestBody):
    n: int | None = Field(None, description="an optional number")


REPO = Path(__file__).resolve().parent.parent
DEEP = b"[" * 100_000 + b"]" * 100_000
BAD = [  # body, model, code, field
    (DEEP, None, "invalid_json", None),
    (b'{"text": ' + DEEP + b"}", Note, "invalid_json", None),
    (b'{"text": "\xff\xfe"}', Note, "invalid_json", None),
    (b'{"text": "\xff\xfe"}', None, "invalid_json", None),
    (b"\xff\xfe{}", None, "invalid_json", None),
    (b'{"a": NaN}', None, "invalid_json", None),
    (b'{"a": Infinity}', None, "invalid_json", None),
    (b'{"text": "x", "weight": NaN}', Note, "invalid_value", "weight"),
    (b'{"text": "x", "weight": -Infinity}', Note, "invalid_value", "weight"),
    (b'{"text": "x", "weight": 1e999}', Note, "invalid_value", "weight"),   # a float that overflows to inf
    (b"[1, 2]", None, "invalid_value", None),
    (b"[1, 2]", Note, "invalid_value", None),
    (b'"text"', Note, "invalid_value", None),
    (b"{", Note, "invalid_json", None),
    (b'{"text": 5}', Note, "invalid_value", "text"),                       # strict: no coercion
    (b'{"text": "x", "weight": "1.5"}', Note, "invalid_value", "weight"),
    (b'{"text": "x", "tags": ["a", 1]}', Note, "invalid_value", "tags.1"),
    (b"{}", Note, "invalid_value", "text"),
    (b'{"text": "x", "colour": "red"}', Note, "unknown_field", "colour"),
    (b'{"word": "no"}', Picky, "not_ok", "word"),                             # a model's own error type is its code
]


@pytest.mark.parametrize("body, model, code, field", BAD, ids=[f"{i}-{b[:20]!r}" for i, (b, *_) in enumerate(BAD)])
def test_every_bad_body_is_a_json_body_error_with_its_code_and_field(body, model, code, field):
    with pytest.raises(JsonBodyError) as exc:
        parse_json_body(body, model)
    assert (exc.value.code, exc.value.field, exc.value.status) == (code, field, 400), exc.value.message
    assert exc.value.message
    if field is not None:
        assert exc.value.message.startswith(f"{field}: ")


def test_all_problems_are_reported_and_unknown_fields_named():
    with pytest.raises(JsonBodyError) as exc:
        parse_json_body(b'{"text": 5, "colour": "red", "size": 3}', Note)
    err = exc.value
    assert [p.field for p in err.problems] == ["text", "colour", "size"]
    assert err.message == "text: Input should be a valid string; colour: unknown field; size: unknown field"
    assert err.describe(unknown_field="not a field of Note").endswith("size: not a field of Note")


def test_empty_body_is_an_empty_object_only_where_allowed():
    assert parse_json_body(b"") == {} and parse_json_body(b"  \n") == {}
    assert parse_json_body(b"", Optional) == Optional()
    with pytest.raises(JsonBodyError) as exc:
        parse_json_body(b"", Note)
    assert exc.value.field == "text"  # {} is missing the required field
    for model in (None, Note):
        with pytest.raises(JsonBodyError) as exc:
            parse_json_body(b"", model, allow_empty=False)
        assert exc.value.code == "invalid_json"


def test_good_bodies():
    assert parse_json_body(b'{"a": [1, {"b": null}], "n": 1e308}') == {"a": [1, {"b": None}], "n": 1e308}
    note = parse_json_body(b'{"text": "x", "weight": 2, "tags": ["a"]}', Note)
    assert note == Note(text="x", weight=2.0, tags=["a"])


class _Request:
    def __init__(self, body: bytes):
        self._body = body

    async def body(self) -> bytes:
        return self._body


def test_a_big_body_is_parsed_off_the_loop_with_the_same_answers(monkeypatch):
    import core.http_json as http_json

    threads = []
    real = asyncio.to_thread

    async def spy(fn, *args):
        threads.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(http_json.asyncio, "to_thread", spy)
    pad = " " * OFF_LOOP_PARSE_BYTES
    big_good = ('{"text": "x",' + pad + '"tags": ["a"]}').encode()
    assert asyncio.run(read_json_body(_Request(big_good), Note)) == Note(text="x", tags=["a"])
    for body, model, code, field in BAD[:3] + BAD[7:8] + BAD[-2:]:
        big = body + pad.encode() if body.rstrip().endswith((b"}", b"]")) else body
        with pytest.raises(JsonBodyError) as exc:
            asyncio.run(read_json_body(_Request(big), model))
        assert (exc.value.code, exc.value.field) == (code, field)
    small = asyncio.run(read_json_body(_Request(b'{"text": "y"}'), Note))
    assert small == Note(text="y")
    assert len(threads) == 1 + 6  # every big body went to a worker thread, the small one did not


NOTE_BODY = JsonBody(Note)
note_app = FastAPI()


@note_app.exception_handler(JsonBodyError)
async def _note_error(request, exc: JsonBodyError):
    return JSONResponse({"code": exc.code, "field": exc.field}, status_code=exc.status)


@note_app.post("/note", openapi_extra=NOTE_BODY.openapi)
async def post_note(note: Annotated[Note, Depends(NOTE_BODY)]):
    return note.model_dump()


def test_the_dependency_and_its_openapi_body():
    with TestClient(note_app) as client:
        assert client.post("/note", json={"text": "x"}).json() == {"text": "x", "weight": None, "tags": []}
        r = client.post("/note", json={"text": "x", "extra": 1})
        assert r.status_code == 400 and r.json() == {"code": "unknown_field", "field": "extra"}
        schema = client.get("/openapi.json").json()["paths"]["/note"]["post"]["requestBody"]
    props = schema["content"]["application/json"]["schema"]["properties"]
    assert set(props) == {"text", "weight", "tags"} and all(p.get("description") for p in props.values())


def test_each_app_renders_the_error_in_its_own_shape(make_config):
    """The monitor: {"error": {message, code}}; unknown fields of a typed body are refused by name."""
    from core.auth import admin_token
    from monitoring.app import create_app
    from monitoring.protocol import ControlRequest, PriorityRequest, RetryRequest

    cfg = make_config({})
    with TestClient(create_app(cfg, start_feed=False), base_url="http://127.0.0.1") as client:
        auth = {"Authorization": f"Bearer {admin_token(cfg)}"}
        r = client.post("/api/control/pause", json={"reason": "x", "reson": "typo"}, headers=auth)
        assert r.status_code == 400 and r.json() == {"error": {"message": "reson: unknown field",
                                                               "code": "unknown_field"}}
        r = client.post("/api/control/pause", content=b'{"reason": NaN}',
                        headers={**auth, "content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()["error"]) == {"message", "code"}
    for model in (ControlRequest, PriorityRequest, RetryRequest):
        assert model.model_config["extra"] == "forbid"
        assert all(f.description for f in model.model_fields.values()), model


def test_inference_renders_it_in_openai_shape():
    from core.http_json import Problem
    from inference.serving import UNKNOWN_PARAMETER, RequestError

    err = JsonBodyError([Problem("frobnicate", "x", unknown=True)], "unknown_field")
    body = json.loads(RequestError.from_body(err, UNKNOWN_PARAMETER).response().body)["error"]
    assert body["code"] == "unknown_parameter" and body["param"] == "frobnicate"
    assert body["type"] == "invalid_request_error" and "not an OpenAI parameter" in body["message"]


# ---- management/deploy_faults.py: the orchestrator's fault seam ------------------------------------------------
def test_deploy_faults_from_the_environment():
    assert DeployFaults.from_environment({}).point is None and DeployFaults.from_environment({}).copy_bwlimit_kb is None
    f = DeployFaults.from_environment({"CADENCE_DEPLOY_FAULT": "mid_flip", "CADENCE_DEPLOY_BWLIMIT": "100"})
    assert f.armed("mid_flip") and not f.armed("mid_copy") and f.copy_bwlimit_kb == 100
    with pytest.raises(ValueError, match="CADENCE_DEPLOY_FAULT='mid_flp' is not a fault point"):
        DeployFaults.from_environment({"CADENCE_DEPLOY_FAULT": "mid_flp"})
    with pytest.raises(ValueError, match="CADENCE_DEPLOY_BWLIMIT"):
        DeployFaults.from_environment({"CADENCE_DEPLOY_BWLIMIT": "fast"})
    assert NO_FAULTS.copy_started() is None and DeployFaults("mid_copy").copy_started() is not None
    for point in POINTS:
        NO_FAULTS.at(point)  # never fires
        NO_FAULTS.while_sent(point, pytest.fail, "a request sent although no fault is armed")


@pytest.mark.parametrize("point, fires_at", [("after_copy", "after_copy"), ("after_copy", "after_flip")])
def test_an_armed_point_kills_like_kill_minus_nine(point, fires_at):
    code = (f"from management.deploy_faults import DeployFaults\n"
            f"DeployFaults({point!r}).at({fires_at!r})\nprint('survived')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    if point == fires_at:
        assert proc.returncode == -9 and "survived" not in proc.stdout
    else:
        assert proc.returncode == 0 and "survived" in proc.stdout


def _raw_request(body: bytes):
    from starlette.requests import Request

    sent = []

    async def receive():
        if not sent:
            sent.append(True)
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
                    "query_string": b""}, receive)


@pytest.mark.parametrize("body, code", [(b"", "invalid_json"), (b"[1]", "invalid_value"),
                                        (b'{"a": NaN}', "invalid_json"), (DEEP, "invalid_json"),
                                        (b'{"model": "\xff"}', "invalid_json")])
def test_the_vllm_front_refuses_bad_bodies_before_the_pool(body, code):
    """inference.engine=vllm relays bodies untyped: the same reader refuses them (a deep one was a RecursionError,
    NaN was forwarded) and counts the refusal; the pool is never asked for a version."""
    from types import SimpleNamespace

    from inference.vllm_proxy import VllmProxy

    rejected = []
    pool = SimpleNamespace(active="never looked at", acquire=lambda: pytest.fail("a bad body reached the pool"))
    proxy = VllmProxy.__new__(VllmProxy)  # only relay()'s refusals are exercised: no client, no vLLM
    proxy.state = SimpleNamespace(shutting_down=False, scheduler=pool,
                                  metrics=SimpleNamespace(count_rejected=rejected.append))
    response = asyncio.run(proxy.relay(_raw_request(body), "chat", "/v1/chat/completions"))
    error = json.loads(response.body)["error"]
    assert response.status_code == 400 and error["code"] == code and error["type"] == "invalid_request_error"
    assert rejected == [code]
