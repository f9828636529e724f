"""Monitor JSON API (TestClient): every read endpoint, honest liveness, token on every mutating endpoint,
controls reaching control/state.json, queue operations, uploads validated like a dropped file."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from core.atomic_io import atomic_write_json, read_json
from core.control import read_control
from core.queue_store import TrainingQueue
from monitoring.app import create_app, node_modules_dir
from monitoring.demo import write_run


@pytest.fixture
def demo(make_config):
    """A demo base_dir whose daemon/trainer pid files name this (live) test process."""
    cfg = make_config({"monitor.upload_max_bytes": 4096})
    info = write_run(cfg, steps=1200, live_pid=os.getpid())
    return cfg, info


@pytest.fixture
def client(demo):
    cfg, _ = demo
    with TestClient(create_app(cfg), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
def token(demo):
    from core.auth import admin_token

    return admin_token(demo[0])


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------------ reads
def test_status_is_live_training_with_live_pids(client):
    s = client.get("/api/status").json()
    assert s["state"] == "training" and s["liveness"]["label"] == "training" and s["liveness"]["running"]
    assert s["global_step"] == 1200 and s["preview"]["golden"]
    assert s["overfitting"]["warning"] is True  # the demo's validation loss turns up at the end


def test_status_says_not_running_for_dead_daemon_even_with_fresh_training_status(demo, client):
    cfg, _ = demo
    cfg.layout.pid_file("daemon").write_text(f"{dead_pid()}\n")
    cfg.layout.pid_file("trainer").unlink()
    raw = read_json(cfg.layout.training_status)
    assert raw["state"] == "training" and time.time() - raw["updated_at"] < 60
    s = client.get("/api/status").json()
    assert s["state"] == "not running"
    assert s["liveness"]["label"] == "daemon not running" and s["liveness"]["level"] == "down"
    assert "still says 'training'" in s["liveness"]["detail"]


def test_status_warns_when_a_live_daemon_stops_reporting(demo, client):
    cfg, _ = demo
    raw = read_json(cfg.layout.training_status)
    atomic_write_json(cfg.layout.training_status, dict(raw, updated_at=time.time() - 3600))
    s = client.get("/api/status").json()
    assert s["liveness"]["label"] == "training stalled?" and s["liveness"]["level"] == "warn"


def test_status_says_not_responding_when_an_idle_daemon_goes_silent(demo, client):
    cfg, _ = demo
    raw = read_json(cfg.layout.training_status)
    atomic_write_json(cfg.layout.training_status, dict(raw, state="idle", updated_at=time.time() - 3600))
    s = client.get("/api/status").json()
    assert s["liveness"]["label"] == "daemon not responding" and s["liveness"]["level"] == "down"
    assert not s["liveness"]["running"]


def test_metrics_history_downsampled_with_ends_kept(client):
    full = client.get("/api/metrics", params={"fields": "loss", "max_points": 100000}).json()
    assert full["total"] == 1200 and full["returned"] == 1200 and not full["downsampled"]
    d = client.get("/api/metrics", params={"fields": "loss,loss_ema,lr", "max_points": 120}).json()
    assert d["downsampled"] and 2 <= d["returned"] <= 122
    assert d["step"][0] == 1 and d["step"][-1] == 1200 and d["step"] == sorted(d["step"])
    assert max(v for v in d["loss"] if v is not None) == max(full["loss"])  # the spike survives
    r = client.get("/api/metrics", params={"fields": "loss", "step_min": 100, "step_max": 199}).json()
    assert r["in_range"] == 100 and r["step"][0] == 100 and r["step"][-1] == 199
    ev = client.get("/api/metrics", params={"kind": "eval", "fields": "val_loss,val_loss_ema,gap"}).json()
    assert ev["total"] == 24 and ev["step"][0] == 50
    assert client.get("/api/metrics", params={"fields": "nope"}).status_code == 400
    assert client.get("/api/metrics", params={"kind": "bogus"}).status_code == 400


def test_summary_has_previews_and_checkpoint_markers(client):
    s = client.get("/api/summary").json()
    assert s["previews"][0]["global_step"] == 1200 and {"prompt", "golden", "answer", "match"} <= set(s["previews"][0])
    assert [c["global_step"] for c in s["checkpoints"]] == [500, 1000]
    assert s["counts"]["train"] == 1200


def test_queue_listing_and_detail_with_validation_report(client):
    q = client.get("/api/queue").json()
    assert [f["name"] for f in q["files"]["high"]] == ["binary_L4.jsonl"]
    assert q["files"]["high"][0]["validation"]["examples"] == 20
    rej = q["files"]["rejected"][0]
    assert rej["name"] == "broken_upload.jsonl" and rej["has_reason"]
    d = client.get("/api/queue/broken_upload.jsonl").json()
    rules = {p["rule"] for p in d["reason"]["problems"]} if "problems" in d["reason"] else set(json.dumps(d["reason"]).split('"'))
    assert "invalid_json" in rules
    assert client.get("/api/queue/nope.jsonl").status_code == 404


def test_checkpoints_ranked_with_champion_and_deployed(client, demo):
    _, info = demo
    c = client.get("/api/checkpoints").json()
    names = {x["name"]: x for x in c["checkpoints"]}
    assert set(names) == {"checkpoint-500", "checkpoint-1000"}
    assert names[info["champion"]]["champion"] and names[info["champion"]]["position"] == 1
    assert names[info["deployed"]]["deployed"]
    assert c["ledger_present"] and c["ranking"][0]["name"] == info["champion"]


def test_deployments_curriculum_events_system_inference(client):
    d = client.get("/api/deployments").json()
    assert d["deployments"][0]["event"] == "promoted" and d["deployments"][0]["global_step"] == 1000
    assert [x["checkpoint"] for x in d["promotions"]] == ["checkpoint-1000"] and d["deployed"] == "checkpoint-1000"
    cur = client.get("/api/curriculum").json()
    assert cur["skills"]["binary"]["level"] == 2 and len(cur["skills"]["binary"]["history"]) == 7
    ev = client.get("/api/events", params={"limit": 3}).json()["events"]
    assert len(ev) == 3 and ev[0]["event"] == "deployed"
    assert all(e["source"] == "queue" for e in client.get("/api/events", params={"source": "queue"}).json()["events"])
    sysm = client.get("/api/system").json()
    assert sysm["latest"]["ram_total_mb"] > 0 and sysm["latest"]["gpu"] == [] and not sysm["gpu_present"]
    inf = client.get("/api/inference").json()  # nothing listens on box B's port in tests
    assert inf["reachable"] is False and inf["error"] and inf["models"] == []
    h = client.get("/api/health").json()
    assert h["status"] == "ok" and h["metric_lines_indexed"] > 1200


def test_inference_state_parsed_from_a_live_server(demo):
    """Box B answering: /v1/models and /metrics are read (a stand-in server with the inference API's shapes)."""
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    from tests.monitor_support import serve

    b = FastAPI()

    @b.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "cadence-tiny", "version": "v003", "global_step": 1000}]}

    @b.get("/metrics")
    def metrics():
        return PlainTextResponse('vllm:num_requests_running{model_name="m"} 2\n'
                                 'cadence:model_info{model_name="m",version="v003",global_step="1000"} 1\n')

    cfg, _ = demo
    with serve(b) as url:
        cfg.deploy.targets[0].server_url = url
        with TestClient(create_app(cfg), base_url="http://127.0.0.1") as c:
            inf = c.get("/api/inference").json()
    assert inf["reachable"] and inf["models"][0]["version"] == "v003"
    assert inf["metrics"]["vllm:num_requests_running"] == 2 and inf["metrics"]["model_info"]["version"] == "v003"


def test_page_and_chart_library(client):
    r = client.get("/")
    assert r.status_code == 200 and "/vendor/uplot/uPlot.iife.min.js" in r.text and "/static/app.js" in r.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/vendor/uplot/evil.js").status_code == 404
    lib = client.get("/vendor/uplot/uPlot.iife.min.js")
    if (node_modules_dir() / "uplot/dist/uPlot.iife.min.js").is_file():
        assert lib.status_code == 200 and "uPlot" in lib.text
    else:
        assert lib.status_code == 404 and "npm" in lib.json()["error"]["message"]


# ------------------------------------------------------------------- auth
MUTATING = [
    ("GET", "/api/auth", None), ("POST", "/api/control/pause", {}), ("POST", "/api/control/resume", {}),
    ("POST", "/api/control/stop", {}), ("POST", "/api/control/stop_after_file", {}), ("POST", "/api/control/skip", {}),
    ("POST", "/api/queue/syllo_L2.jsonl/priority", {"priority": "high"}),
    ("POST", "/api/queue/broken_upload.jsonl/retry", {}), ("DELETE", "/api/queue/operator_notes.jsonl", None),
    ("POST", "/api/upload?filename=x.jsonl", None),
]


@pytest.mark.parametrize("method,path,body", MUTATING, ids=[f"{m} {p}" for m, p, _ in MUTATING])
def test_mutating_endpoints_need_the_token(client, token, demo, method, path, body):
    cfg, _ = demo
    before = read_control(cfg.layout)
    kw = {"json": body} if body is not None else {}
    if path.startswith("/api/upload"):
        kw = {"content": b'{"text": "x"}\n'}
    r = client.request(method, path, **kw)
    assert r.status_code == 401 and "token" in r.json()["error"]["message"]
    r = client.request(method, path, headers=auth("wrong-" + token), **kw)
    assert r.status_code == 403
    r = client.request(method, path, headers={"X-Admin-Token": "nope"}, **kw)
    assert r.status_code == 403
    assert read_control(cfg.layout).desired == before.desired  # nothing happened
    assert not list(cfg.layout.inbox.glob("*.jsonl"))
    r = client.request(method, path, headers=auth(token), **kw)
    assert r.status_code in (200, 202), r.text


# --------------------------------------------------------------- controls
def test_controls_reach_the_control_file(client, token, demo):
    cfg, _ = demo
    r = client.post("/api/control/pause", json={"reason": "checking the GPU"}, headers=auth(token))
    assert r.status_code == 200 and r.json()["daemon_running"] is True
    state = read_control(cfg.layout)
    assert state.desired == "paused" and "checking the GPU" in state.reason
    client.post("/api/control/resume", headers=auth(token))
    assert read_control(cfg.layout).desired == "running"
    client.post("/api/control/skip", headers=auth(token))
    assert read_control(cfg.layout).skip
    client.post("/api/control/stop_after_file", headers=auth(token))
    assert read_control(cfg.layout).stop_after_file is True
    client.post("/api/control/stop", headers=auth(token))
    assert read_control(cfg.layout).desired == "stopped"
    assert client.post("/api/control/clear", headers=auth(token)).status_code == 404
    assert client.post("/api/control/pause", content=b"[1]",
                       headers={**auth(token), "Content-Type": "application/json"}).status_code == 400
    assert client.get("/api/status").json()["desired"] == "stopped"


def test_queue_priority_retry_remove(client, token, demo):
    cfg, _ = demo
    q = TrainingQueue(cfg)
    r = client.post("/api/queue/syllo_L2.jsonl/priority", json={"priority": "high"}, headers=auth(token))
    assert r.status_code == 200 and r.json()["state"] == "high"
    assert q.find("syllo_L2.jsonl").state == "high"
    assert client.post("/api/queue/syllo_L2.jsonl/priority", json={"priority": "urgent"}, headers=auth(token)).status_code == 400
    r = client.post("/api/queue/broken_upload.jsonl/priority", json={"priority": "high"}, headers=auth(token))
    assert r.status_code == 409 and "rejected" in r.json()["error"]["message"]
    r = client.post("/api/queue/broken_upload.jsonl/retry", json={}, headers=auth(token))
    assert r.status_code == 200 and r.json()["state"] == "inbox" and (cfg.layout.inbox / "broken_upload.jsonl").exists()
    r = client.delete("/api/queue/operator_notes.jsonl", headers=auth(token))
    assert r.status_code == 200 and not (cfg.layout.queue_dir("low") / "operator_notes.jsonl").exists()
    assert client.delete("/api/queue/operator_notes.jsonl", headers=auth(token)).status_code == 404


def test_deferred_files_are_shown_and_retried(client, token, demo):
    cfg, _ = demo
    q = TrainingQueue(cfg)
    q.defer("syllo_L2.jsonl", "syllo level 2 is below the current level 3")
    listing = client.get("/api/queue").json()
    assert listing["status"]["counts"]["deferred"] == 1 and "syllo_L2.jsonl" not in [
        f["name"] for state in ("high", "normal", "low") for f in listing["files"][state]]
    (row,) = listing["files"]["deferred"]
    assert (row["name"], row["state"], row["deferred_reason"]) == (
        "syllo_L2.jsonl", "deferred", "syllo level 2 is below the current level 3")
    d = client.get("/api/queue/syllo_L2.jsonl").json()
    assert d["meta"]["history"][-1]["event"] == "deferred" and d["reason"] is None
    page = client.get("/static/app.js").text
    assert '"deferred"' in page and "deferred_reason" in page  # the queue panel lists them with a retry button
    r = client.post("/api/queue/syllo_L2.jsonl/retry", json={}, headers=auth(token))
    assert r.status_code == 200 and r.json()["state"] == row["priority"] == q.find("syllo_L2.jsonl").state


# ----------------------------------------------------------------- upload
def test_upload_lands_in_inbox_and_is_validated_like_a_drop(client, token, demo, tmp_path):
    from core.ingest import Ingestor

    cfg, _ = demo
    good = b'{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}\n'
    r = client.post("/api/upload", params={"filename": "../../etc/evil; rm -rf ~.jsonl", "priority": "high"},
                    content=good, headers=auth(token))
    assert r.status_code == 202, r.text
    name = r.json()["inbox_name"]
    assert "/" not in name and ";" not in name and not name.startswith(".") and name.endswith(".jsonl")
    assert (cfg.layout.inbox / name).read_bytes() == good
    assert not (tmp_path / "etc").exists() and not list(cfg.layout.inbox.glob(".upload-*"))
    r2 = client.post("/api/upload", params={"filename": name}, content=b'{"messages": "nope"}\n', headers=auth(token))
    assert r2.status_code == 202 and r2.json()["inbox_name"] != name  # never overwrites
    assert client.post("/api/upload", params={"filename": "a.txt"}, content=good, headers=auth(token)).status_code == 400
    assert client.post("/api/upload", params={"filename": "big.jsonl"}, content=good * 100,
                       headers=auth(token)).status_code == 413
    assert client.post("/api/upload", params={"filename": "e.jsonl"}, content=b"", headers=auth(token)).status_code == 400
    assert client.post("/api/upload", content=good, headers=auth(token)).status_code == 400
    assert sorted(p.name for p in cfg.layout.inbox.iterdir() if not p.name.startswith(".")) == sorted(
        [name, r2.json()["inbox_name"], name[:-6] + ".job.json"])
    # the daemon's watcher takes both: same validation as any dropped file
    ingestor, t = Ingestor(cfg), time.time()
    # seen, settled; the job sidecar is looked at once its data file is complete, so a third look
    scanned = ingestor.scan_once(now=t) + ingestor.scan_once(now=t + 3600) + ingestor.scan_once(now=t + 7200)
    results = {res.original_name: res for res in scanned}
    assert set(results) >= {name, r2.json()["inbox_name"]}, [r.to_dict() for r in scanned]
    assert results[name].outcome == "queued" and results[name].state == "high"
    assert results[r2.json()["inbox_name"]].outcome == "rejected"
