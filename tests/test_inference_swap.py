"""Zero-drop model swap: deploys under streaming load, faulty versions rejected while the old one serves, rollback."""
from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch

from tests.inference_support import ADMIN_TOKEN, LiveServer, make_version, sse_events
from tests.test_inference_api import _config


@pytest.fixture
def server(tmp_path_factory, micro_model_dir):
    with LiveServer(_config(tmp_path_factory, micro_model_dir, max_batch_size=32)) as srv:
        yield srv


async def _stream_once(client: httpx.AsyncClient, url: str, max_tokens: int) -> dict:
    body = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "Tell me about binary numbers."}],
            "max_tokens": max_tokens, "temperature": 0.8, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    started = time.monotonic()
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        lines = [line async for line in r.aiter_lines()]
        header = r.headers.get("x-model-version")
        status = r.status_code
    events = sse_events(lines)
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
            except httpx.HTTPError as exc:  # a dropped connection is a failed request
                results.append({"status": None, "exception": repr(exc)})

    async def main():
        limits = httpx.Limits(max_connections=n_clients + 4)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            await asyncio.gather(*(client_loop(client) for _ in range(n_clients)))

    asyncio.run(main())


def _check(result: dict, max_tokens: int) -> str | None:
    """Why a streamed response is failed or truncated, or None when it is whole and from exactly one version."""
    if result.get("status") != 200:
        return f"status {result.get('status')} {result.get('exception', '')}"
    if result["errors"]:
        return f"error event {result['errors']}"
    if not result["done"]:
        return "no [DONE]"
    if result["finish"] != ["length"] or result["usage"]["completion_tokens"] != max_tokens:
        return f"truncated: finish {result['finish']} usage {result['usage']}"
    if len(result["models"]) != 1 or result["models"] != {f"cadence-tiny@{result['header']}"}:
        return f"mixed versions: header {result['header']} chunks {result['models']}"
    return None


def test_swap_under_load_drops_nothing(server, micro_model_dir, tmp_path):
    versions = [make_version(micro_model_dir, tmp_path / f"v{i:03d}", f"v{i:03d}", global_step=100 * i, seed=i)
                for i in range(1, 11)]
    stop, results, max_tokens = threading.Event(), [], 24
    clients = threading.Thread(target=_run_clients, args=(server.url, 16, stop, results, max_tokens))
    clients.start()
    try:
        assert _wait_for(lambda: len(results) >= 16)
        latency = {}
        for i, path in enumerate(versions, 1):
            version = f"v{i:03d}"
            t0 = time.monotonic()
            r = server.load(path, version)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["status"] == "loaded" and body["version"] == version and body["global_step"] == 100 * i
            assert body["previous_version"] == ("base" if i == 1 else f"v{i - 1:03d}")
            # The new version serves the very next request.
            probe = httpx.post(server.url + "/v1/chat/completions", timeout=30, json={
                "model": "cadence-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
            assert probe.headers["x-model-version"] == version and probe.json()["model"] == f"cadence-tiny@{version}"
            latency[version] = time.monotonic() - t0
            assert _wait_for(lambda: any(x.get("header") == version and x["started"] > t0 for x in results))
    finally:
        stop.set()
        clients.join(120)
    problems = [(i, why) for i, res in enumerate(results) if (why := _check(res, max_tokens))]
    assert not problems, problems[:5]
    served = {res["header"] for res in results}
    assert {f"v{i:03d}" for i in range(1, 11)} <= served
    assert max(latency.values()) < 10, latency  # load call -> serving, in seconds
    print(f"\n{len(results)} streamed responses, 0 failed; load-to-serving seconds: "
          f"max {max(latency.values()):.2f}, mean {sum(latency.values()) / len(latency):.2f}")
    # Every retired version drained and was released; only v010 holds weights.
    assert _wait_for(lambda: not server.state.scheduler.draining())
    info = server.admin("GET", "/admin/models").json()
    assert info["active"]["version"] == "v010" and info["draining"] == []
    metrics = httpx.get(server.url + "/metrics").text
    assert 'cadence:model_swaps_total{model_name="cadence-tiny"} 11' in metrics  # start-up + 10


def _wait_for(pred, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


# ---- faulty versions ------------------------------------------------------------------------------------
def _truncated_shard(d: Path):
    p = d / "model.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _checksum_mismatch(d: Path):
    p = d / "model.safetensors"
    data = bytearray(p.read_bytes())
    data[-10] ^= 0xFF  # same size, different content
    p.write_bytes(bytes(data))


def _rewrite_manifest(d: Path):
    from core.manifest import write_manifest
    write_manifest(d, model_only=True, version=d.name, global_step=1)


def _wrong_architecture(d: Path):
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = cfg["hidden_size"] * 2
    (d / "config.json").write_text(json.dumps(cfg))
    _rewrite_manifest(d)


def _llama_architecture(d: Path):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    _rewrite_manifest(d)


def _missing_tokenizer(d: Path):
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        (d / name).unlink(missing_ok=True)
    _rewrite_manifest(d)


def _edit_weights(d: Path, fn):
    from safetensors.torch import load_file, save_file
    p = d / "model.safetensors"
    tensors = load_file(p)
    fn(tensors)
    save_file(tensors, p, metadata={"format": "pt"})
    _rewrite_manifest(d)


def _nan_weights(d: Path):
    def fn(t):
        name = next(k for k in t if k.endswith("mlp.down_proj.weight"))
        t[name][0, 0] = float("nan")
    _edit_weights(d, fn)


def _failing_smoke(d: Path):
    # Finite weights whose forward pass overflows to Inf/NaN: only generating catches it.
    def fn(t):
        for k in t:
            if k.endswith("mlp.up_proj.weight") or k.endswith("mlp.gate_proj.weight"):
                t[k] = torch.full_like(t[k], 3e38)
    _edit_weights(d, fn)


def _no_manifest(d: Path):
    (d / "manifest.json").unlink()


FAULTS = {
    "truncated_shard": (_truncated_shard, "manifest_mismatch"),
    "checksum_mismatch": (_checksum_mismatch, "manifest_mismatch"),
    "wrong_architecture": (_wrong_architecture, "wrong_architecture"),
    "other_architecture": (_llama_architecture, "wrong_architecture"),
    "missing_tokenizer": (_missing_tokenizer, "bad_tokenizer"),
    "nan_weights": (_nan_weights, "nonfinite_weights"),
    "failing_smoke_prompt": (_failing_smoke, "smoke_failed"),
    "no_manifest": (_no_manifest, "manifest_missing"),
}


def test_faulty_versions_rejected_while_old_one_serves(server, micro_model_dir, tmp_path):
    good = make_version(micro_model_dir, tmp_path / "good", "good", global_step=10, seed=1)
    assert server.load(good, "good").status_code == 200
    stop, results, max_tokens = threading.Event(), [], 12
    clients = threading.Thread(target=_run_clients, args=(server.url, 4, stop, results, max_tokens))
    clients.start()
    try:
        for name, (break_it, code) in FAULTS.items():
            bad = make_version(micro_model_dir, tmp_path / name, name, global_step=20, seed=2)
            break_it(bad)
            r = server.load(bad, name)
            assert r.status_code == 422, (name, r.text)
            err = r.json()["error"]
            assert err["code"] == code, (name, err)
            assert err["active_version"] == "good" and err["message"]
            assert httpx.get(server.url + "/v1/models").json()["data"][0]["version"] == "good"
        r = server.load(tmp_path / "does-not-exist", "ghost")
        assert r.status_code == 404 and r.json()["error"]["active_version"] == "good"
    finally:
        stop.set()
        clients.join(60)
    assert results
    problems = [why for res in results if (why := _check(res, max_tokens))]
    assert not problems, problems[:5]
    assert {res["header"] for res in results} == {"good"}
    history = server.admin("GET", "/admin/models").json()["history"]
    assert [h["status"] for h in history if h["reason"] == "load"].count("rejected") == len(FAULTS) + 1
    metrics = httpx.get(server.url + "/metrics").text
    assert 'cadence:model_load_failures_total{model_name="cadence-tiny",code="smoke_failed"} 1' in metrics


def test_rollback_reloads_previous_version(server, micro_model_dir, tmp_path):
    a = make_version(micro_model_dir, tmp_path / "a", "a", global_step=1, seed=1)
    b = make_version(micro_model_dir, tmp_path / "b", "b", global_step=2, seed=2)
    assert server.load(a, "a").status_code == 200
    assert server.load(b, "b").status_code == 200
    r = server.admin("POST", "/admin/models/rollback")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rolled_back" and r.json()["version"] == "a" and r.json()["previous_version"] == "b"
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["version"] == "a"
    # The rollback target chain continues to the version before "a" (the start-up model).
    assert server.admin("GET", "/admin/models").json()["rollback_target"]["version"] == "base"
    # A rollback target deleted from disk fails cleanly and the current version keeps serving.
    c = make_version(micro_model_dir, tmp_path / "c", "c", global_step=3, seed=3)
    assert server.load(c, "c").status_code == 200
    shutil.rmtree(a)
    r = server.admin("POST", "/admin/models/rollback")
    assert r.status_code == 404 and r.json()["error"]["active_version"] == "c"
    r = server.admin("POST", "/admin/models/rollback", {"version": "zzz"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "no_previous"
    # Rolling back to the manifest-less start-up model is allowed: it was accepted that way at start.
    r = server.admin("POST", "/admin/models/rollback", {"version": "base"})
    assert r.status_code == 200 and r.json()["version"] == "base"


def test_load_is_refused_while_another_load_runs(server, micro_model_dir, tmp_path):
    v = make_version(micro_model_dir, tmp_path / "slow", "slow", global_step=3, seed=3)
    assert server.state.registry._load_lock.acquire()
    try:
        r = server.load(v, "slow")
        assert r.status_code == 409 and r.json()["error"]["code"] == "busy"
    finally:
        server.state.registry._load_lock.release()
    assert server.load(v, "slow").status_code == 200


def test_in_flight_request_finishes_on_its_version(server, micro_model_dir, tmp_path):
    """A long stream that starts on `base` ends on `base` although `new` takes over mid-stream."""
    new = make_version(micro_model_dir, tmp_path / "new", "new", global_step=5, seed=5)
    body = {"model": "cadence-tiny", "prompt": "count", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.url + "/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert server.load(new, "new").status_code == 200
        old_engine = next(iter(server.state.scheduler.draining()), None)
        assert old_engine is not None and old_engine.version == "base" and old_engine.model is not None
        rest = sse_events([first, *lines])
    assert rest[-1] == "[DONE]"
    chunks = [c for c in rest if isinstance(c, dict)]
    assert {c["model"] for c in chunks} == {"cadence-tiny@base"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert _wait_for(lambda: not server.state.scheduler.draining())
    assert old_engine.model is None  # weights released after the drain
