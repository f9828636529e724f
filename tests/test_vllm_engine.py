"""inference.engine = "vllm": Cadence's front over real vLLM servers (one per version), through the real openai SDK.

One front (`python -m inference`, a real process) serves the tiny model on vLLM for the whole module: vLLM takes
about a minute to start here, so the tests share it and run in order (features, then refusals, then the swap
under load, then rollback). Needs the vLLM venv (scripts/setup.sh --vllm); without it the module skips, except
in CI (CI=true), where a missing venv is a failure.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.inference_support import make_version, sse_events
from tests.test_inference_swap import FAULTS, _check, _wait_for
from tests.vllm_support import Front, front_config, require_vllm

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _sse_lines(raw: bytes) -> list[str]:
    # SSE splits on \n only: vLLM's JSON leaves U+0085/U+2028 raw (valid JSON), which httpx's aiter_lines
    # (str.splitlines semantics) would split inside a string.
    return [line.rstrip("\r") for line in raw.decode().split("\n")]


async def _stream_once(client: httpx.AsyncClient, url: str, max_tokens: int) -> dict:
    body = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "Tell me about binary numbers."}],
            "max_tokens": max_tokens, "temperature": 0.8, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    started = time.monotonic()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        raw = b"".join([chunk async for chunk in r.aiter_bytes()])
        header, status = r.headers.get("x-model-version"), r.status_code
    events = sse_events(_sse_lines(raw))
    chunks = [e for e in events if isinstance(e, dict)]
    return {"status": status, "header": header, "started": started, "done": bool(events) and events[-1] == "[DONE]",
            "models": {c.get("model") for c in chunks}, "errors": [c for c in chunks if "error" in c],
            "finish": [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices") and c["choices"][0]["finish_reason"]],
            "usage": next((c["usage"] for c in chunks if c.get("usage")), None)}


def _run_clients(url: str, n_clients: int, stop: threading.Event, results: list, max_tokens: int) -> None:
    async def client_loop(client):
        while not stop.is_set():
            try:
                results.append(await _stream_once(client, url, max_tokens))
            except (httpx.HTTPError, ValueError) as exc:  # a dropped connection or a broken event is a failure
                results.append({"status": None, "exception": repr(exc)})

    async def main():
        async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=n_clients + 4)) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(n_clients)))

    asyncio.run(main())


def _assert_not_pinned(front) -> None:
    """No process of any vLLM server (API server, engine core, worker) is confined to fewer CPUs than the front:
    vLLM-CPU's own binding pinned every server's worker to the same core, and a standby started beside a busy
    active version crawled (inference/vllm_engine.py cpu_thread_env)."""
    import os

    import psutil
    allowed = sorted(os.sched_getaffinity(0))
    seen = 0
    for pid in front.vllm_pids():
        try:
            root = psutil.Process(pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:  # the drained version stopping
            continue
        for proc in procs:
            try:
                affinity = sorted(proc.cpu_affinity())
            except psutil.NoSuchProcess:
                continue
            assert affinity == allowed, (proc.pid, proc.name(), affinity)
            seen += 1
    assert seen >= 3  # at least the new version's API server, engine core and worker


# ---- without vLLM: config and refusals that need no server --------------------------------------------
def test_engine_keys_refused_by_name():
    from core.config import ConfigError, from_dict

    cfg = from_dict({"inference": {"engine": "vllm"}}, REPO)
    assert cfg.inference.engine == "vllm" and "--enforce-eager" in cfg.inference.vllm_args
    assert from_dict({}, REPO).inference.engine == "builtin"
    cases = [
        ({"engine": "vllm", "max_queue": 8}, "inference.engine=vllm does not honour inference.max_queue"),
        ({"engine": "vllm", "torch_threads": 2}, "inference.engine=vllm does not honour inference.torch_threads"),
        ({"engine": "vllm", "think_penalty": True}, "inference.engine=vllm does not honour inference.think_penalty"),
        ({"vllm_args": []}, "inference.vllm_args only apply to inference.engine=vllm"),
        ({"engine": "sglang"}, "inference.engine"),
    ]
    dumped = json.loads(from_dict({}, REPO).to_json())  # every key at its default, as deploy tooling writes it
    dumped["inference"]["engine"] = "vllm"
    assert from_dict(dumped, REPO).inference.engine == "vllm"
    for section, message in cases:
        with pytest.raises(ConfigError) as err:
            from_dict({"inference": section}, REPO)
        assert message in str(err.value), (section, str(err.value))


def test_missing_vllm_venv_refuses_the_load(make_config, micro_model_dir):
    from inference.loader import ModelLoadError
    from inference.vllm_engine import load_vllm_version

    cfg = make_config({"inference.engine": "vllm", "inference.vllm_python": "/nonexistent/bin/python"})
    with pytest.raises(ModelLoadError) as err:
        load_vllm_version(micro_model_dir, "base", cfg, require_manifest=False)
    assert err.value.code == "engine_missing" and "scripts/setup.sh --vllm" in str(err.value)


# ---- one front over real vLLM servers --------------------------------------------------------------------
@pytest.fixture(scope="module")
def front(tmp_path_factory, tiny_model_dir):
    require_vllm()
    # The micro model's head_dim 16 has no vLLM-CPU attention kernel; the tiny model (head_dim 64) does.
    srv = Front(tmp_path_factory.mktemp("vllm-front"), front_config(tiny_model_dir))
    pids: set[int] = set()
    try:
        srv.wait_ready()
        yield srv
        pids = srv.vllm_pids()
    finally:
        srv.close()
    # The front's SIGTERM drained and stopped every vLLM server it had started.
    import psutil
    assert pids and not [p for p in pids if psutil.pid_exists(p)]


@pytest.fixture(scope="module")
def client(front):
    import openai
    return openai.OpenAI(base_url=front.url + "/v1", api_key="none", max_retries=0, timeout=120)


def test_features_pass_through(front, client):
    # n=2: two choices from one request.
    r = client.chat.completions.with_raw_response.create(
        model="cadence-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, n=2, seed=1)
    assert r.headers["x-model-version"] == "base"
    out = r.parse()
    assert out.model == "cadence-tiny@base" and [c.index for c in out.choices] == [0, 1]

    # json_schema structured output: the text parses and fits the schema.
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    out = client.chat.completions.create(
        model="cadence-tiny", messages=[{"role": "user", "content": "yes or no?"}], max_tokens=48, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": schema, "strict": True}})
    assert json.loads(out.choices[0].message.content)["answer"] in ("yes", "no")

    # A tool call (named tool_choice: vLLM constrains the arguments to the tool's parameters).
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Oslo"]}},
        "required": ["city"], "additionalProperties": False}}}
    out = client.chat.completions.create(
        model="cadence-tiny", messages=[{"role": "user", "content": "weather?"}], max_tokens=48, temperature=0,
        tools=[tool], tool_choice={"type": "function", "function": {"name": "get_weather"}})
    call = out.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")

    # Logprobs come back (the builtin engine's conformance features are vLLM's natively).
    out = client.completions.create(model="cadence-tiny@base", prompt="Hello", max_tokens=3, logprobs=2, temperature=0)
    assert len(out.choices[0].logprobs.tokens) == 3 and out.usage.completion_tokens == 3

    # Streaming is relayed chunk by chunk: several SSE events, usage last, [DONE].
    body = {"model": "base", "messages": [{"role": "user", "content": "count"}], "max_tokens": 12, "stream": True,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    with httpx.stream("POST", front.url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-model-version"] == "base"
        arrivals = []
        for chunk in r.iter_raw():
            arrivals.append(chunk)
    events = sse_events(_sse_lines(b"".join(arrivals)))
    assert events[-1] == "[DONE]" and events[-2]["usage"]["completion_tokens"] == 12
    assert len(arrivals) > 1  # not buffered into one body
    assert {e["model"] for e in events[:-1]} == {"cadence-tiny@base"}


def test_models_list_and_retrieve(front, client):
    cards = client.models.list().data
    assert [(c.id, c.version, c.engine) for c in cards] == [("cadence-tiny", "base", "vllm")]
    for name in ("cadence-tiny", "cadence-tiny@base", "base"):
        assert client.models.retrieve(name).served_id == "cadence-tiny@base"
    r = httpx.get(front.url + "/v1/models/other", timeout=30)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def test_front_refuses_by_name(front):
    def post(body):
        return httpx.post(front.url + "/v1/chat/completions", json=body, timeout=60)

    msgs = [{"role": "user", "content": "hi"}]
    cases = [
        ({"model": "other", "messages": msgs}, 404, "model_not_found", "model"),
        ({"messages": msgs}, 400, "invalid_value", "model"),
        ({"model": "cadence-tiny", "messages": msgs, "no_such_field": 1}, 400, "unknown_parameter", "no_such_field"),
        ({"model": "cadence-tiny", "messages": msgs, "think_penalty": True}, 400, "unsupported_parameter", "think_penalty"),
        ({"model": "cadence-tiny", "messages": msgs, "max_tokens": 513}, 400, "invalid_value", "max_tokens"),
    ]
    for body, status, code, param in cases:
        r = post(body)
        assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["param"]) == (status, code, param), body
    r = httpx.post(front.url + "/v1/chat/completions", content=b"{nope", timeout=30,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # vLLM's own validation errors pass through as vLLM's 4xx.
    r = post({"model": "cadence-tiny", "messages": msgs, "temperature": -1})
    assert 400 <= r.status_code < 500, r.text


def test_metrics_are_vllms_plus_cadence(front):
    text = httpx.get(front.url + "/metrics", timeout=30).text
    for family in ("vllm:num_requests_running", "vllm:generation_tokens_total", "vllm:time_to_first_token_seconds",
                   "vllm:e2e_request_latency_seconds"):
        assert f"# TYPE {family}" in text, family
    assert 'cadence:model_info{model_name="cadence-tiny",version="base"' in text
    assert 'model_name="cadence-tiny@base"' in text  # vLLM's own labels name the version


def test_faulty_versions_refused_while_base_serves(front, tiny_model_dir, tmp_path):
    pids = front.vllm_pids()
    for name, (corrupt, code) in FAULTS.items():
        if name == "failing_smoke_prompt":
            continue  # a second vLLM start for one case; the smoke step is proven by every load below
        folder = make_version(tiny_model_dir, tmp_path / name, name, global_step=7, seed=3)
        corrupt(folder)
        r = front.load(folder, name)
        assert r.status_code == 422, (name, r.text)
        err = r.json()["error"]
        assert (err["code"], err["active_version"]) == (code, "base"), name
        probe = httpx.post(front.url + "/v1/chat/completions", timeout=60, json={
            "model": "cadence-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert probe.status_code == 200 and probe.headers["x-model-version"] == "base"
    # Refused before any vLLM started: the same single server serves.
    assert front.vllm_pids() == pids and len(pids) == 1
    text = httpx.get(front.url + "/metrics", timeout=30).text
    assert 'cadence:model_load_failures_total{model_name="cadence-tiny",code="manifest_mismatch"} 2' in text


def test_swap_under_load_then_rollback(front, tiny_model_dir, tmp_path):
    v1 = make_version(tiny_model_dir, tmp_path / "v001", "v001", global_step=100, seed=1)
    base_pids = front.vllm_pids()
    stop, results, max_tokens = threading.Event(), [], 16
    clients = threading.Thread(target=_run_clients, args=(front.url, 8, stop, results, max_tokens))
    clients.start()
    try:
        assert _wait_for(lambda: len(results) >= 8, timeout=120)
        t_load = time.monotonic()
        r = front.load(v1, "v001")
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["status"], body["version"], body["previous_version"], body["global_step"]) == \
            ("loaded", "v001", "base", 100)
        assert body["checks"] == ["manifest", "architecture", "tokenizer", "finite_weights", "smoke"]
        _assert_not_pinned(front)
        t_flip = time.monotonic()
        assert _wait_for(lambda: any(x.get("header") == "v001" and x["started"] > t_flip for x in results), 120)
    finally:
        stop.set()
        clients.join(300)
    problems = [(i, why) for i, res in enumerate(results) if (why := _check(res, max_tokens))]
    assert not problems, problems[:5]
    by_version = {v: [x for x in results if x["header"] == v] for v in ("base", "v001")}
    assert by_version["base"] and by_version["v001"]
    # Requests accepted while v001 was being verified and started finished whole on base.
    assert any(x["started"] > t_load for x in by_version["base"])
    print(f"\n{len(results)} streamed responses during the swap, 0 failed; load took {body['load_seconds']}s "
          f"(verify {body.get('verify_seconds')}s, vLLM start {body.get('engine_start_seconds')}s, "
          f"standby RSS {body.get('engine_rss_mb')} MiB)")
    # The old version drained and its vLLM server was stopped.
    assert _wait_for(lambda: not (front.vllm_pids() & base_pids), timeout=60)
    info = front.admin("GET", "/admin/models").json()
    assert info["active"]["version"] == "v001" and info["draining"] == []
    assert info["rollback_target"]["version"] == "base"

    r = front.admin("POST", "/admin/models/rollback", {})
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["version"], r.json()["previous_version"]) == ("rolled_back", "base", "v001")
    probe = httpx.post(front.url + "/v1/chat/completions", timeout=60, json={
        "model": "cadence-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert probe.headers["x-model-version"] == "base" and probe.json()["model"] == "cadence-tiny@base"
    assert _wait_for(lambda: len(front.vllm_pids()) == 1, timeout=60)
    text = httpx.get(front.url + "/metrics", timeout=30).text
    assert 'cadence:model_swaps_total{model_name="cadence-tiny"} 3' in text  # start-up, v001, rollback
