"""The OpenAI-compatible API with the real `openai` client and raw HTTP: happy paths, every bad-request kind, auth, metrics."""
from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from tests.inference_support import ADMIN_TOKEN, LiveServer, sse_events


def _config(tmp_path_factory, model_dir, **inference):
    from core.config import from_dict

    base = tmp_path_factory.mktemp("cadence")
    (base / "control").mkdir()
    (base / "control" / "admin.token").write_text(ADMIN_TOKEN + "\n")
    cfg = from_dict({"paths": {"base_dir": str(base)},
                     "model": {"base_model": str(model_dir), "max_length": 256},
                     "training": {"micro_batch_tokens": 512},
                     "inference": {"max_tokens_cap": 512, "max_model_len": 1024, **inference}}, base)
    cfg.layout.ensure()
    return cfg


@pytest.fixture(scope="module")
def server(tmp_path_factory, micro_model_dir):
    with LiveServer(_config(tmp_path_factory, micro_model_dir)) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=30)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Add one and one."}]


# ---- openai client ---------------------------------------------------------------------------------
def test_chat_completion_names_version_and_counts_usage(client):
    raw = client.chat.completions.with_raw_response.create(model="cadence-tiny", messages=CHAT, max_tokens=12)
    resp = raw.parse()
    assert raw.headers["x-model-version"] == "base"
    assert resp.model == "cadence-tiny@base"
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    assert resp.usage.completion_tokens <= 12
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert resp.usage.prompt_tokens > 5  # the chat template wrapped both messages


def test_max_tokens_and_length_finish(client):
    resp = client.chat.completions.create(model="cadence-tiny", messages=CHAT, max_tokens=17,
                                          extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 17
    assert resp.choices[0].finish_reason == "length"


def test_streaming_equals_non_streaming_and_ends_with_done(client, server):
    kwargs = dict(model="cadence-tiny", messages=CHAT, max_tokens=24, temperature=0.0)
    full = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert {c.model for c in chunks} == {"cadence-tiny@base"}
    # Raw bytes: SSE framing with the terminal [DONE].
    with httpx.stream("POST", server.url + "/v1/chat/completions", timeout=30,
                      json={**kwargs, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-model-version"] == "base"
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]" and events[-2]["choices"][0]["finish_reason"] is not None


def test_seed_makes_sampling_reproducible(client):
    kwargs = dict(model="cadence-tiny", messages=CHAT, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234,
                  extra_body={"ignore_eos": True})
    a = client.chat.completions.create(**kwargs).choices[0].message.content
    b = client.chat.completions.create(**kwargs).choices[0].message.content
    assert a == b


def test_stop_string_cuts_output(client):
    kwargs = dict(model="cadence-tiny", messages=CHAT, max_tokens=40, temperature=1.0, top_p=1.0, seed=7,
                  extra_body={"ignore_eos": True})
    text = client.chat.completions.create(**kwargs).choices[0].message.content
    assert len(text) > 10, text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    resp = client.chat.completions.create(stop=[stop], **kwargs)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == text[: text.find(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       client.chat.completions.create(stop=stop, stream=True, **kwargs) if c.choices)
    assert streamed == text[: text.find(stop)]


def test_completions_endpoint_plain_and_streaming(client):
    resp = client.completions.create(model="cadence-tiny", prompt="The number one plus one", max_tokens=9,
                                     temperature=0.0, extra_body={"ignore_eos": True})
    assert resp.object == "text_completion" and resp.model == "cadence-tiny@base"
    assert resp.usage.completion_tokens == 9
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="cadence-tiny", prompt="The number one plus one", max_tokens=9, temperature=0.0, stream=True,
        extra_body={"ignore_eos": True}))
    assert streamed == resp.choices[0].text
    by_ids = client.completions.create(model="cadence-tiny", prompt=[5, 6, 7], max_tokens=3, extra_body={"ignore_eos": True})
    assert by_ids.usage.prompt_tokens == 3


def test_models_lists_version_step_and_path(client, micro_model_dir):
    models = client.models.list().data
    assert len(models) == 1
    m = models[0].model_dump()
    assert m["id"] == "cadence-tiny" and m["version"] == "base"
    assert m["source_path"] == str(micro_model_dir.resolve())
    assert "global_step" in m


def test_openai_client_errors(client):
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4", messages=CHAT)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="cadence-tiny", messages=CHAT, max_tokens=100_000)
    assert exc.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="cadence-tiny", messages=[{"role": "user", "content": "one " * 3000}])
    assert exc.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="cadence-tiny", messages=[])


# ---- raw HTTP: every bad-request kind ----------------------------------------------------------------
GOOD = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

BAD_REQUESTS = {
    "invalid_json": (b'{"model": "cadence-tiny", "messages": [', 400, "invalid_json"),
    "not_an_object": (b'[1, 2]', 400, None),
    "empty_body": (b"", 400, "invalid_json"),
    "missing_model": ({k: v for k, v in GOOD.items() if k != "model"}, 400, None),
    "missing_messages": ({"model": "cadence-tiny"}, 400, None),
    "empty_messages": ({**GOOD, "messages": []}, 400, None),
    "messages_not_a_list": ({**GOOD, "messages": "hi"}, 400, None),
    "bad_role": ({**GOOD, "messages": [{"role": "wizard", "content": "hi"}]}, 400, None),
    "content_wrong_type": ({**GOOD, "messages": [{"role": "user", "content": 5}]}, 400, None),
    "max_tokens_string": ({**GOOD, "max_tokens": "5"}, 400, None),
    "max_tokens_zero": ({**GOOD, "max_tokens": 0}, 400, None),
    "temperature_string": ({**GOOD, "temperature": "hot"}, 400, None),
    "temperature_negative": ({**GOOD, "temperature": -1}, 400, None),
    "top_p_out_of_range": ({**GOOD, "top_p": 1.5}, 400, None),
    "stream_not_bool": ({**GOOD, "stream": "yes"}, 400, None),
    "n_two": ({**GOOD, "n": 2}, 400, None),
    "too_many_stops": ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, 400, None),
    "max_tokens_over_cap": ({**GOOD, "max_tokens": 513}, 400, None),
    "prompt_too_long": ({**GOOD, "messages": [{"role": "user", "content": "one " * 3000}]}, 400, "context_length_exceeded"),
    "prompt_plus_max_tokens_too_long": ({**GOOD, "messages": [{"role": "user", "content": "one " * 700}], "max_tokens": 500},
                                        400, "context_length_exceeded"),
    "unknown_model": ({**GOOD, "model": "no-such-model"}, 404, "model_not_found"),
}


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_bad_chat_requests_get_openai_shaped_4xx(server, kind):
    body, status, code = BAD_REQUESTS[kind]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(server.url + "/v1/chat/completions", content=content, timeout=30,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code


@pytest.mark.parametrize("body, status", [
    ({"model": "cadence-tiny", "prompt": ""}, 400),
    ({"model": "cadence-tiny", "prompt": 7}, 400),
    ({"model": "cadence-tiny", "prompt": [10 ** 9]}, 400),
    ({"model": "cadence-tiny", "prompt": ["a", 5]}, 400),
    ({"model": "cadence-tiny", "prompt": ["a", ""]}, 400),
    ({"model": "cadence-tiny", "prompt": "hi", "max_tokens": 10 ** 6}, 400),
    ({"model": "other", "prompt": "hi"}, 404),
])
def test_bad_completion_requests(server, body, status):
    r = httpx.post(server.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == status, r.text
    assert r.json()["error"]["message"]


def test_unknown_route_and_method_are_openai_shaped(server):
    r = httpx.get(server.url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(server.url + "/v1/chat/completions", timeout=10)
    assert r.status_code == 405 and "error" in r.json()


def test_health_ready_metrics(server, client):
    client.chat.completions.create(model="cadence-tiny", messages=CHAT, max_tokens=5, extra_body={"ignore_eos": True})
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    assert httpx.get(server.url + "/ready").json()["version"] == "base"
    text = httpx.get(server.url + "/metrics").text
    for name in ("vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_count",
                 "vllm:time_per_output_token_seconds_count", "vllm:e2e_request_latency_seconds_sum",
                 "vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total"):
        assert name in text, name
    ttft_count = next(float(line.split()[-1]) for line in text.splitlines()
                      if line.startswith("vllm:time_to_first_token_seconds_count"))
    assert ttft_count >= 1
    gen = next(float(line.split()[-1]) for line in text.splitlines() if line.startswith("vllm:generation_tokens_total"))
    assert gen >= 5
    assert 'cadence:model_info{model_name="cadence-tiny",version="base"' in text


def test_admin_requires_token(server):
    assert httpx.get(server.url + "/admin/models").status_code == 401
    assert httpx.post(server.url + "/admin/models/load", json={"path": "/x"}).status_code == 401
    r = httpx.get(server.url + "/admin/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = server.admin("GET", "/admin/models")
    assert r.status_code == 200 and r.json()["active"]["version"] == "base"
    r = server.admin("POST", "/admin/models/load", {"version": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "path"


# ---- API keys, full queue, disconnects (servers with their own settings) -----------------------------
def test_api_keys_guard_v1_only(tmp_path_factory, micro_model_dir):
    with LiveServer(_config(tmp_path_factory, micro_model_dir, api_keys=["sk-good"])) as srv:
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-bad", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="sk-good", max_retries=0)
        assert good.chat.completions.create(model="cadence-tiny", messages=CHAT, max_tokens=2).choices
        assert httpx.get(srv.url + "/health").status_code == 200  # probes stay open


def _metric(url, name) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.split()[-1])
    raise AssertionError(name)


def _wait(pred, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_full_queue_429_and_disconnect_frees_slot(tmp_path_factory, micro_model_dir):
    cfg = _config(tmp_path_factory, micro_model_dir, max_batch_size=1, max_queue=1, max_tokens_cap=1000)
    with LiveServer(cfg) as srv:
        long = {"model": "cadence-tiny", "prompt": "count", "max_tokens": 1000, "ignore_eos": True, "stream": True}
        with httpx.Client(timeout=60) as c:
            with c.stream("POST", srv.url + "/v1/completions", json=long) as r1:
                lines = r1.iter_lines()
                next(lines)  # first chunk: request 1 holds the only batch slot
                waiting_result = {}

                def second():
                    waiting_result["r"] = httpx.post(srv.url + "/v1/completions", timeout=60, json={
                        "model": "cadence-tiny", "prompt": "hi", "max_tokens": 3, "ignore_eos": True})

                t = threading.Thread(target=second)
                t.start()
                assert _wait(lambda: _metric(srv.url, "vllm:num_requests_waiting") == 1)
                r3 = httpx.post(srv.url + "/v1/completions", timeout=30,
                                json={"model": "cadence-tiny", "prompt": "hi", "max_tokens": 3})
                assert r3.status_code == 429 and r3.json()["error"]["code"] == "queue_full"
                assert t.is_alive()  # still queued behind the long stream
            # Leaving the `with` closes request 1's connection mid-stream: its slot must free up.
            t.join(30)
        assert waiting_result["r"].status_code == 200
        assert waiting_result["r"].json()["usage"]["completion_tokens"] == 3
        assert _wait(lambda: _metric(srv.url, "vllm:num_requests_running") == 0)
        assert srv.state.scheduler.active.pending == 0
        text = httpx.get(srv.url + "/metrics").text
        assert 'finished_reason="abort"' in text


def test_disconnect_aborts_within_one_decode_step(tmp_path_factory, micro_model_dir):
    cfg = _config(tmp_path_factory, micro_model_dir, max_tokens_cap=1900, max_model_len=2048)
    with LiveServer(cfg) as srv:
        finished = []
        observe = srv.state.metrics.observe_request
        srv.state.metrics.observe_request = lambda seq, now: (finished.append(seq), observe(seq, now))
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(srv.url + "/v1/completions", timeout=0.3, json={
                "model": "cadence-tiny", "prompt": "count", "max_tokens": 1900, "ignore_eos": True})
        assert _wait(lambda: len(finished) == 1)
        seq = finished[0]
        assert seq.finish_reason == "abort" and seq.tokens_at_abort is not None
        assert len(seq.output_ids) - seq.tokens_at_abort <= 1  # at most the step that was running
        assert len(seq.output_ids) < 1900
        assert srv.state.scheduler.active.pending == 0


def test_metrics_queue_time_and_length_histograms(server, client):
    before = _metric(server.url, "vllm:request_prompt_tokens_count")
    resp = client.completions.create(model="cadence-tiny", prompt=[[5, 6, 7], [8, 9]], max_tokens=4,
                                     extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 8
    assert _wait(lambda: _metric(server.url, "vllm:request_prompt_tokens_count") == before + 2)
    text = httpx.get(server.url + "/metrics").text
    for name in ("vllm:request_queue_time_seconds_bucket", "vllm:request_queue_time_seconds_sum",
                 "vllm:request_generation_tokens_bucket", "vllm:request_prompt_tokens_sum"):
        assert name in text, name
    assert 'vllm:request_prompt_tokens_bucket{model_name="cadence-tiny",le="2"}' in text
    assert _metric(server.url, "vllm:request_generation_tokens_count") >= 2
    assert _metric(server.url, "vllm:request_queue_time_seconds_count") >= 2
