"""Skill API contract: FastAPI app (TestClient), a real uvicorn server on loopback, the client's retries and fallbacks."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from data_manager.skill_api_client import LocalSkillClient, SkillAPIError, SkillClient, local_score
from data_manager.skills import create_app, get_skill

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_binary_server():
    """The binary skill served by a real uvicorn on 127.0.0.1:<free port>, in a thread."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(get_skill("binary")), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(5)


@pytest.mark.parametrize("name", ["binary", "syllo"])
def test_app_contract_with_testclient(name):
    skill = get_skill(name)
    with TestClient(create_app(skill)) as http:
        assert http.get("/health").json()["status"] == "ok"
        info = http.get("/info").json()
        assert info["name"] == name and info["max_level"] == skill.max_level
        levels = http.get("/levels").json()
        assert levels["levels"] == list(range(1, skill.max_level + 1))
        assert levels["details"][0]["level"] == 1 and levels["details"][0]["problem_space"]
        body = http.post("/generate", json={"level": 2, "count": 5, "seed": 11}).json()
        assert body["seed"] == 11 and body["level"] == 2 and body["count"] == 5
        assert body["samples"] == [s.to_dict() for s in skill.generate(2, 5, 11)]
        for s in body["samples"]:
            assert set(s) == {"user_prompt", "assistant_response", "metadata"}
            assert s["metadata"]["skill"] == name and s["metadata"]["level"] == 2
        unseeded = http.post("/generate", json={"level": 1, "count": 2}).json()
        assert isinstance(unseeded["seed"], int)
        answers = [body["samples"][0]["assistant_response"], "wrong", "", body["samples"][3]["assistant_response"], "x"]
        scored = http.post("/score", json={"samples": body["samples"], "answers": answers}).json()
        assert [r["correct"] for r in scored["results"]] == [True, False, False, True, False]
        assert [r["score"] for r in scored["results"]] == [1.0, 0.0, 0.0, 1.0, 0.0]
        assert scored["accuracy"] == pytest.approx(0.4)
        # errors are 4xx with an {"error": {...}} body, never a 200
        for bad in ({"level": skill.max_level + 1, "count": 1}, {"level": 0, "count": 1}, {"count": 1},
                    {"level": 1, "count": 1, "bogus": 1}, {"level": 1, "count": -1}):
            r = http.post("/generate", json=bad)
            assert r.status_code == 422 and "message" in r.json()["error"], bad
        r = http.post("/score", json={"samples": body["samples"], "answers": ["x"]})
        assert r.status_code == 422


def test_client_against_real_uvicorn_server(live_binary_server):
    skill = get_skill("binary")
    with SkillClient(live_binary_server, name="binary", timeout=5, retries=0) as client:
        assert client.health()
        assert client.info()["name"] == "binary"
        levels = client.levels()
        assert levels.levels[0] == 1 and levels.levels[-1] == 31 and levels.problem_space[1] == 16
        samples = client.generate(3, 10, seed=42)
        assert samples == [s.to_dict() for s in skill.generate(3, 10, 42)]
        answers = [s["assistant_response"] for s in samples[:5]] + ["0"] * 5
        report = client.score(samples, answers)
        expected_correct = 5 + sum(s["assistant_response"] == "0" for s in samples[5:])
        assert report.scorer == "server" and report.correct == expected_correct and report.total == 10
        with pytest.raises(SkillAPIError) as err:
            client.generate(99, 1, seed=0)
        assert err.value.status == 422


def test_client_matches_local_client(live_binary_server):
    local = LocalSkillClient(get_skill("binary"))
    with SkillClient(live_binary_server, name="binary") as remote:
        assert remote.generate(2, 8, seed=3) == local.generate(2, 8, seed=3)
        assert remote.levels().levels == local.levels().levels


def test_client_with_injected_testclient_and_original_style_server():
    """An original-system server: /generate without metadata tags, no /score -> tagged with the asked level, scored locally."""
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/levels")
    def levels():
        return {"levels": [{"level": 1}, {"level": 2}]}

    @app.post("/generate")
    def generate(req: dict):
        return {"samples": [{"user_prompt": f"q{i}", "assistant_response": '{"a": 1}', "metadata": {}} for i in range(req["count"])]}

    with TestClient(app) as http:
        client = SkillClient("http://testserver", name="external", client=http, retries=0)
        assert client.health() and client.levels().levels == [1, 2]
        samples = client.generate(2, 3)
        assert all(s["metadata"] == {"level": 2, "skill": "external"} for s in samples)
        report = client.score(samples, ['{"a":1}', '{"a": 2}', "nope"])
        assert report.scorer == "generic" and [r["correct"] for r in report.results] == [True, False, False]


def test_client_retries_5xx_and_connection_errors_then_gives_up():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if len(calls) < 3:
            return httpx.Response(503, text="busy")
        return httpx.Response(200, json={"status": "ok", "levels": [1]})

    http = httpx.Client(base_url="http://skill", transport=httpx.MockTransport(handler))
    client = SkillClient("http://skill", client=http, retries=2, backoff=0.001)
    assert client.levels().levels == [1] and len(calls) == 3

    calls.clear()
    client = SkillClient("http://skill", client=http, retries=1, backoff=0.001)
    with pytest.raises(SkillAPIError) as err:
        client.info()
    assert len(calls) == 2 and err.value.status == 503

    four = httpx.Client(base_url="http://skill", transport=httpx.MockTransport(lambda r: (calls.append(1), httpx.Response(400, json={}))[1]))
    calls.clear()
    with pytest.raises(SkillAPIError):
        SkillClient("http://skill", client=four, retries=3, backoff=0.001).info()
    assert len(calls) == 1  # a 4xx is not retried

    dead = SkillClient(f"http://127.0.0.1:{free_port()}", timeout=0.5, retries=1, backoff=0.001)
    assert dead.health() is False
    with pytest.raises(SkillAPIError):
        dead.generate(1, 1, seed=0)
    bad_body = httpx.Client(base_url="http://skill", transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"samples": [{"user_prompt": 1}]})))
    with pytest.raises(SkillAPIError):
        SkillClient("http://skill", client=bad_body).generate(1, 1)


def test_local_score_uses_builtin_scorer():
    skill = get_skill("syllo")
    samples = [s.to_dict() for s in skill.generate(1, 4, seed=0)]
    answers = [samples[0]["assistant_response"].replace(" ", ""), "no", samples[2]["assistant_response"], ""]
    report = local_score("syllo", samples, answers)
    assert report.scorer == "builtin" and report.correct == 2 and report.accuracy == 0.5
    with pytest.raises(ValueError):
        local_score("syllo", samples, answers[:2])


def test_cli_serves_on_loopback_and_writes_pid_file(tmp_path):
    port = free_port()
    pid_file = tmp_path / ".pids" / "skill-syllo.pid"
    proc = subprocess.Popen([sys.executable, "-m", "data_manager.skills", "syllo", "--port", str(port),
                             "--pid-file", str(pid_file), "--log-level", "warning"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        client = SkillClient(f"http://127.0.0.1:{port}", retries=0, timeout=2)
        deadline = time.time() + 20
        while not client.health():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline
            time.sleep(0.1)
        assert pid_file.read_text().strip() == str(proc.pid)
        assert client.generate(1, 1, seed=0)[0]["metadata"]["skill"] == "syllo"
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    assert not pid_file.exists()
    out = subprocess.run([sys.executable, "-m", "data_manager.skills", "--help"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0 and "8090" in out.stdout


def test_data_manager_generates_and_scores_through_a_live_external_server(live_binary_server, make_config):
    """The manager drives a real HTTP skill server end to end: two batches, eval set, server-side scoring."""
    from data_manager.manager import DataManager

    cfg = make_config({"data_manager.skills": [{"name": "binary", "url": live_binary_server, "builtin": False}],
                       "data_manager.batch_size": 30, "data_manager.eval_count": 8, "data_manager.min_queue_depth": 5})
    now = [1000.0]
    dm = DataManager(cfg, count_tokens=len, clock=lambda: now[0])
    first = dm.tick()
    now[0] += cfg.data_manager.cooldown_seconds + 1
    second = dm.tick()
    assert first.action == second.action == "generated" and first.batch.seed != second.batch.seed
    level, samples = dm.eval_set("binary")
    result, decision = dm.score_and_record("binary", level, samples, [s["assistant_response"] for s in samples], step=1)
    assert result.scorer == "server" and result.accuracy == 1.0 and decision.counted
