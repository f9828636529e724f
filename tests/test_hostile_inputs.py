"""Both servers walked with GENERATED hostile requests: no input is a 5xx, every refusal has the server's error shape,
and the server stays live.

A seeded generator (CADENCE_HOSTILE_SEED to replay another walk; the failing case is printed with its seed and index)
draws from these input classes and applies them to the fields of valid requests, to whole bodies, to path
parameters, query strings and headers: huge ints (2^64, 10^400, -2^63-1), extreme floats (1e30, 1e308, 1e999,
5e-324, -0.0), deep nesting (arrays and objects up to 100k deep), NUL and control characters, lone surrogates,
overlong strings (up to 1 MB), wrong types (list, object, bool, null where a string or number belongs), bytes that
are not UTF-8, and bad or missing content types.
"""
from __future__ import annotations

import json
import os
import random
import urllib.parse

import httpx
import pytest

from tests.inference_support import ADMIN_TOKEN, LiveServer
from tests.test_inference_api import _config

SEED = int(os.environ.get("CADENCE_HOSTILE_SEED", "14"))
CASES = int(os.environ.get("CADENCE_HOSTILE_CASES", "220"))


class Hostile:
    """Hostile values, bodies and strings drawn from one seeded random.Random."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def text(self) -> str:
        r = self.rng
        kind = r.choice(["nul", "control", "long", "huge", "surrogate", "unicode", "path", "crlf", "empty", "spaces"])
        return {
            "nul": "a\x00b" * r.randint(1, 4),
            "control": "".join(chr(r.randint(0, 31)) for _ in range(r.randint(1, 20))),
            "long": "x" * r.choice([300, 5000, 70_000]),
            "huge": "y" * (1 << 20),
            "surrogate": "\ud800" + "z",
            "unicode": "модель-日本–\u202e\ufeff",
            "path": r.choice(["../../etc/passwd", "/etc/passwd", "~root", "a/../../b", "//", "."]),
            "crlf": "v1\r\nX-Injected: 1",
            "empty": "",
            "spaces": " \t ",
        }[kind]

    def number(self):
        return self.rng.choice([2 ** 64, -(2 ** 63) - 1, 10 ** 400, 1e30, 1e308, -1e308, 5e-324, -0.0, -1, 0,
                                2 ** 31, 1e-7, 0.5])

    def deep(self):
        depth = self.rng.choice([50, 1000, 100_000])
        return self.rng.choice(["[" * depth + "]" * depth, '{"a":' * depth + "1" + "}" * depth])

    def value(self):
        kind = self.rng.choice(["text", "number", "list", "object", "bool", "null", "deep", "bigarray"])
        if kind == "text":
            return self.text()
        if kind == "number":
            return self.number()
        if kind == "list":
            return [self.text(), self.number()]
        if kind == "object":
            return {self.text()[:50]: self.number()}
        if kind == "bool":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        if kind == "deep":
            return RawJson(self.deep())
        return list(range(self.rng.choice([1000, 100_000])))

    def mutate(self, good: dict) -> bytes:
        """A valid body with one or two fields (or one new field, or one nested field) made hostile."""
        body = json.loads(json.dumps(good))
        r = self.rng
        for _ in range(r.choice([1, 1, 2])):
            where = r.random()
            if where < 0.7 and body:
                body[r.choice(sorted(body))] = self.value()
            elif where < 0.85 and isinstance(body.get("messages"), list) and body["messages"] \
                    and isinstance(body["messages"][0], dict):
                body["messages"][0][r.choice(["role", "content", "name", "extra"])] = self.value()
            else:
                body[self.text()[:100] or "k"] = self.value()
        return dumps(body)

    def body(self, good: dict) -> tuple[bytes, dict]:
        """(content, headers) for a POST: mostly a mutated valid body, sometimes a broken whole body or header."""
        r = self.rng.random()
        headers = {"Content-Type": "application/json"}
        if r < 0.6:
            return self.mutate(good), headers
        if r < 0.7:
            return self.deep().encode(), headers
        if r < 0.78:
            return self.rng.choice([b"\xff\xfe\x00{", b'{"model": "\xc3\x28"}', bytes(range(256))]), headers
        if r < 0.86:
            return dumps(self.value()), headers
        if r < 0.93:
            return dumps(good), {"Content-Type": self.rng.choice(["text/plain", "application/x-www-form-urlencoded",
                                                                  "multipart/form-data", "application/xml", ""])}
        return self.rng.choice([b"", b"{", b"nul\x00", b"[1, 2", b'{"a": NaN}', b'{"a": 1e999}']), headers


def quote(value, safe: str = "/") -> str:
    """Percent-encode for a URL; lone surrogates as their (invalid) UTF-8 bytes."""
    return urllib.parse.quote(str(value).encode("utf-8", "surrogatepass"), safe=safe)


class RawJson(str):
    """Already-serialised JSON spliced into a body verbatim (nesting too deep for json.dumps)."""


def dumps(value) -> bytes:
    def enc(v) -> str:
        if isinstance(v, RawJson):
            return str(v)
        if isinstance(v, dict):
            return "{" + ",".join(f"{json.dumps(str(k))}:{enc(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ",".join(enc(x) for x in v) + "]"
        if isinstance(v, float) and v in (float("inf"), float("-inf")):
            return "1e999"
        return json.dumps(v)

    return enc(value).encode("utf-8", "surrogatepass")


def _check(resp: httpx.Response, case: str, openai_shape: bool) -> None:
    assert resp.status_code < 500, f"seed {SEED} {case}: {resp.status_code} {resp.text[:300]}"
    if resp.status_code >= 400:
        err = resp.json()["error"]
        keys = {"message", "type", "param", "code"} if openai_shape else {"message", "code"}
        assert keys <= set(err) and err["message"], f"seed {SEED} {case}: {err}"


# ---- inference -----------------------------------------------------------------------------------------
CHAT = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "seed": 1,
        "temperature": 0.5, "top_p": 0.9, "stop": ["x"], "stream": False, "n": 1}
COMPLETION = {"model": "cadence-tiny", "prompt": "hi", "max_tokens": 3, "echo": False, "seed": 2}
LOAD = {"path": "models/does-not-exist", "version": "v1"}
ROLLBACK = {"version": "v1"}


@pytest.fixture(scope="module")
def inference(tmp_path_factory, micro_model_dir):
    with LiveServer(_config(tmp_path_factory, micro_model_dir, max_tokens_cap=4, max_model_len=256)) as srv:
        yield srv


def test_inference_api_survives_generated_hostile_requests(inference):
    gen = Hostile(SEED)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    routes = [("/v1/chat/completions", CHAT, {}), ("/v1/completions", COMPLETION, {}),
              ("/admin/models/load", LOAD, admin), ("/admin/models/rollback", ROLLBACK, admin)]
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=inference.url, timeout=60) as client:
        for i in range(CASES):
            r = gen.rng.random()
            if r < 0.85:
                path, good, auth = gen.rng.choice(routes)
                content, headers = gen.body(good)
                resp = client.post(path, content=content, headers={**headers, **auth})
                case = f"case {i}: POST {path} {content[:200]!r} {headers}"
            else:
                path = gen.rng.choice(["/v1/models", "/admin/models", "/v1/" + quote(gen.text()[:3000]),
                                       "/health?x=" + quote(gen.text()[:3000])])
                resp = client.get(path, headers=admin)
                case = f"case {i}: GET {path[:200]}"
            _check(resp, case, openai_shape=True)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    assert httpx.get(inference.url + "/ready", timeout=10).status_code == 200
    assert httpx.post(inference.url + "/v1/chat/completions", json=CHAT, timeout=60).status_code == 200
    assert inference.thread.is_alive()
    assert len([s for s in statuses if 400 <= s < 500]) >= 3, statuses  # the walk reached several refusal kinds


# ---- monitor ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def monitor(tmp_path_factory, micro_model_dir):
    from core.auth import admin_token
    from core.config import from_dict
    from monitoring.app import create_app
    from monitoring.demo import write_run
    from tests.monitor_support import serve

    base = tmp_path_factory.mktemp("hostile-monitor")
    cfg = from_dict({"paths": {"base_dir": str(base)}, "model": {"base_model": str(micro_model_dir)},
                     "monitor": {"upload_max_bytes": 1 << 16}}, base)
    write_run(cfg, steps=600, live_pid=os.getpid())
    with serve(create_app(cfg)) as url:
        yield url, admin_token(cfg)


def test_monitor_api_survives_generated_hostile_requests(monitor):
    url, token = monitor
    gen = Hostile(SEED + 1)
    auth = {"Authorization": f"Bearer {token}"}
    names = ["syllo_L2.jsonl", "broken_upload.jsonl", "operator_notes.jsonl"]

    def name() -> str:
        return gen.rng.choice(names) if gen.rng.random() < 0.3 else gen.text()[:6000]

    def q(value) -> str:
        return quote(value, safe="")

    statuses: dict[int, int] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for i in range(CASES):
            r = gen.rng.random()
            if r < 0.35:
                path = gen.rng.choice([
                    f"/api/queue/{q(name())}",
                    f"/api/metrics?kind={q(gen.rng.choice(['train', 'eval', gen.text()[:200]]))}&fields={q(gen.text()[:500])}"
                    f"&max_points={q(gen.number())}&step_min={q(gen.rng.choice([gen.number(), 'nan', 'inf']))}",
                    f"/api/events?limit={q(gen.number())}&source={q(gen.text()[:500])}",
                    f"/api/deployments?limit={q(gen.number())}",
                    "/api/summary",
                    f"/vendor/uplot/{q(gen.text()[:500])}", f"/static/{q(gen.text()[:300])}",
                ])
                resp = client.get(path)
                case = f"case {i}: GET {path[:200]}"
            elif r < 0.85:
                path = gen.rng.choice([f"/api/control/{gen.rng.choice(['pause', 'resume', 'skip', q(gen.text()[:300])])}",
                                       f"/api/queue/{q(name())}/priority", f"/api/queue/{q(name())}/retry"])
                good = {"priority": "low"} if "queue" in path else {"reason": "hostile walk"}
                content, headers = gen.body(good)
                resp = client.post(path, content=content, headers={**headers, **auth})
                case = f"case {i}: POST {path[:200]} {content[:200]!r} {headers}"
            elif r < 0.92:
                path = f"/api/queue/{q(name())}"
                resp = client.delete(path, headers=auth)
                case = f"case {i}: DELETE {path[:200]}"
            else:
                fname = gen.rng.choice(["ok.jsonl", gen.text()[:3000] + ".jsonl", gen.text()[:300]])
                content = gen.rng.choice([b'{"text": "x"}\n', b"\xff\xfe", b"x" * (1 << 17), b""])
                resp = client.post(f"/api/upload?filename={q(fname)}", content=content,
                                   headers={**auth, "Content-Type": "application/octet-stream"})
                case = f"case {i}: upload {fname[:100]!r} ({len(content)} bytes)"
            _check(resp, case, openai_shape=False)
            statuses[resp.status_code] = statuses.get(resp.status_code, 0) + 1
    assert httpx.get(url + "/api/health", timeout=10).status_code == 200
    assert httpx.get(url + "/api/status", timeout=10).status_code == 200
    assert len([s for s in statuses if 400 <= s < 500]) >= 3, statuses
