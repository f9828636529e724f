"""Monitor live feed: SSE delivery within a second of a write, Last-Event-ID replay, resets; the metrics index
(incremental tail, partial lines, rewind after a crash-resume, replaced file, min-max downsampling, EMA)."""
from __future__ import annotations

import json
import math
import os
import time

import httpx
import numpy as np
import pytest

from core.atomic_io import append_jsonl
from monitoring.app import create_app
from monitoring.metrics_index import MetricsIndex, minmax_indices, overfitting_check
from tests.monitor_support import next_event, serve, sse_events
from trainer.status import StatusWriter


@pytest.fixture
def live(make_config):
    """A running monitor (real uvicorn on loopback) over a base_dir with a short run in it."""
    from monitoring.demo import write_run

    cfg = make_config({"monitor.poll_interval": 0.05})
    write_run(cfg, steps=300, live_pid=os.getpid())
    with serve(create_app(cfg)) as url:
        yield cfg, url


def _train(step: int) -> dict:
    return {"type": "train", "global_step": step, "loss": 1.0 / step, "lr": 1e-4, "tokens_per_s": 1000.0}


def test_metric_event_and_status_pushed_within_a_second(live):
    cfg, url = live
    writer = StatusWriter(cfg.layout.training_status, cfg.layout.metrics)
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{url}/api/stream") as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
        hello = next_event(events, "hello", 5)
        assert json.loads(hello.data)["status"]["state"] == "training"
        latencies = []
        for step in (301, 302, 303):
            t0 = time.perf_counter()
            writer.metric(_train(step))
            ev = next_event(events, "metric", 2, lambda e: json.loads(e.data).get("global_step") == step)
            latencies.append(ev.received_at - t0)
        assert max(latencies) < 1.0, latencies
        t0 = time.perf_counter()
        append_jsonl(cfg.layout.events, {"ts": time.time(), "source": "test", "event": "hello_world"})
        ev = next_event(events, "event", 2, lambda e: json.loads(e.data)["event"] == "hello_world")
        assert ev.received_at - t0 < 1.0
        # a status change (pause requested) is pushed too
        from core.control import request

        t0 = time.perf_counter()
        request(cfg.layout, "pause", "test")
        ev = next_event(events, "status", 3, lambda e: json.loads(e.data)["desired"] == "paused")
        assert ev.received_at - t0 < 1.5
        # and the daemon dying is pushed as "daemon not running"
        cfg.layout.pid_file("daemon").write_text("999999999\n")
        ev = next_event(events, "status", 3, lambda e: json.loads(e.data)["liveness"]["label"] == "daemon not running")
        # the queue panel is told to refresh when a file moves
        from core.queue_store import TrainingQueue

        TrainingQueue(cfg).set_priority("syllo_L2.jsonl", "low")
        next_event(events, "changed", 3, lambda e: json.loads(e.data)["what"] == "queue")
    # the index answers the history with the new points
    h = httpx.get(f"{url}/api/metrics", params={"fields": "loss", "step_min": 301}).json()
    assert h["step"] == [301, 302, 303]


def test_reconnect_with_last_event_id_replays_exactly_what_was_missed(live):
    cfg, url = live
    writer = StatusWriter(cfg.layout.training_status, cfg.layout.metrics)
    with httpx.Client(timeout=10) as client:
        with client.stream("GET", f"{url}/api/stream") as r:
            events = sse_events(r)
            next_event(events, "hello", 5)
            writer.metric(_train(301))
            last = next_event(events, "metric", 2)
            last_id = last.id
        # disconnected: these happen while no one listens
        for step in (302, 303, 304):
            writer.metric(_train(step))
        writer.metric({"type": "eval", "global_step": 304, "val_loss": 0.5,
                       "preview": {"prompt": "p", "golden": "g", "answer": "g", "match": True}})
        time.sleep(0.5)
        with client.stream("GET", f"{url}/api/stream", headers={"Last-Event-ID": last_id}) as r:
            events = sse_events(r)
            first = next(events)
            assert first.event == "replay"
            got = []
            for ev in events:
                if ev.event == "metric":
                    got.append((json.loads(ev.data)["type"], json.loads(ev.data)["global_step"]))
                if len(got) == 4:
                    break
            assert got == [("train", 302), ("train", 303), ("train", 304), ("eval", 304)]
        # an id from another monitor process (or too old) cannot be replayed: a reset via hello
        with client.stream("GET", f"{url}/api/stream", headers={"Last-Event-ID": "deadbeef-5"}) as r:
            hello = next(sse_events(r))
            assert hello.event == "hello" and json.loads(hello.data)["reset"] is True
        # the query-string form works for clients that cannot set headers
        with client.stream("GET", f"{url}/api/stream", params={"last_event_id": last_id}) as r:
            assert next(sse_events(r)).event == "replay"


def test_rewind_after_crash_resume_is_pushed_and_history_follows(live):
    cfg, url = live
    writer = StatusWriter(cfg.layout.training_status, cfg.layout.metrics)
    with httpx.Client(timeout=10) as client, client.stream("GET", f"{url}/api/stream") as r:
        events = sse_events(r)
        next_event(events, "hello", 5)
        assert writer.rewind_metrics(250) > 0  # what the trainer does after resuming from checkpoint-250
        ev = next_event(events, "metrics_reset", 3)
        assert json.loads(ev.data)["global_step"] == 250
        writer.metric(_train(251))
        next_event(events, "metric", 2, lambda e: json.loads(e.data)["global_step"] == 251)
    h = httpx.get(f"{url}/api/metrics", params={"fields": "loss", "step_min": 240}).json()
    assert h["step"] == list(range(240, 252))


# ---------------------------------------------------------------- index
def test_index_tails_incrementally_and_waits_for_complete_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    idx = MetricsIndex(path, smoothing=0.9)
    assert idx.refresh() == ([], None)
    for s in range(1, 11):
        append_jsonl(path, _train(s))
    new, reset = idx.refresh()
    assert len(new) == 10 and reset is None and len(idx.train) == 10
    with open(path, "ab") as fh:
        fh.write(b'{"type": "train", "global_step": 11, "lo')  # half-written line
    assert idx.refresh() == ([], None) and len(idx.train) == 10
    with open(path, "ab") as fh:
        fh.write(b'ss": 0.5}\nnot json\n')
    new, _ = idx.refresh()
    assert [r["global_step"] for r in new] == [11] and idx.bad_lines == 1
    # EMA is TensorBoard's debiased one
    acc, ema = 0.0, []
    losses = [1.0 / s for s in range(1, 11)] + [0.5]
    for n, x in enumerate(losses, 1):
        acc = 0.9 * acc + 0.1 * x
        ema.append(acc / (1 - 0.9 ** n))
    q = idx.query("train", ["loss", "loss_ema"], 1000)
    assert np.allclose(q["loss_ema"], ema) and q["loss"] == losses


def test_index_handles_rewind_and_replacement(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = StatusWriter(tmp_path / "status.json", path)
    idx = MetricsIndex(path)
    for s in range(1, 101):
        writer.metric(_train(s))
        if s % 10 == 0:
            writer.metric({"type": "eval", "global_step": s, "val_loss": 1.0})
    idx.refresh()
    writer.rewind_metrics(60)
    for s in range(61, 71):  # resumed and re-trained: the file grows back past its old size? not yet
        writer.metric(dict(_train(s), loss=2.0))
    new, reset = idx.refresh()
    assert reset == {"reason": "rewind", "global_step": 60} or reset["reason"] == "replaced"
    q = idx.query("train", ["loss"], 10000)
    assert q["step"] == list(range(1, 71)) and q["loss"][-1] == 2.0
    assert idx.query("eval", ["val_loss"], 100)["step"] == [10, 20, 30, 40, 50, 60]
    # same-size rewrite behind our back (rewind + regrowth between two looks) is detected too
    writer.rewind_metrics(65)
    for s in range(66, 71):
        writer.metric(dict(_train(s), loss=3.0))
    new, reset = idx.refresh()
    assert reset is not None
    q = idx.query("train", ["loss"], 10000)
    assert q["step"] == list(range(1, 71)) and q["loss"][-1] == 3.0 and q["loss"][64] == 2.0
    # a replaced file (new inode) rebuilds from zero
    os.replace(tmp_path / "status.json", tmp_path / "x") if (tmp_path / "status.json").exists() else None
    tmp = tmp_path / "new.jsonl"
    tmp.write_text(json.dumps(_train(1)) + "\n")
    os.replace(tmp, path)
    new, reset = idx.refresh()
    assert reset == {"reason": "replaced"} and idx.query("train", ["loss"], 10)["step"] == [1]


def test_minmax_downsampling_keeps_spikes_and_ends():
    rng = np.random.default_rng(0)
    y = rng.normal(1.0, 0.01, 100_000)
    y[31_337] = 9.0
    y[77_777] = -5.0
    y[500] = np.nan
    idx = minmax_indices([y], 200)
    assert len(idx) <= 202 and idx[0] == 0 and idx[-1] == len(y) - 1
    assert 31_337 in idx and 77_777 in idx and list(idx) == sorted(set(idx.tolist()))
    assert len(minmax_indices([y[:50]], 200)) == 50


def test_overfitting_check():
    assert not overfitting_check([0.1, 0.1, 0.1, 0.1], [1, 1, 1, 1])["warning"]
    w = overfitting_check([0.05, 0.08, 0.12, 0.2], [0.9, 0.95, 1.0, 1.1])
    assert w["warning"] and "overfitting" in w["message"]
    assert not overfitting_check([0.05, 0.08, 0.12, 0.2], [1.1, 1.0, 0.95, 0.9])["warning"]  # val still improving
    assert not overfitting_check([math.nan, 0.2], [1, 1])["warning"]


def test_saved_index_restores_and_catches_up_with_appends_and_rewinds(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = StatusWriter(tmp_path / "status.json", path)
    for s in range(1, 201):
        writer.metric(_train(s))
        if s % 20 == 0:
            writer.metric({"type": "eval", "global_step": s, "val_loss": 1.0 + s / 1000,
                           "preview": {"prompt": "p", "golden": "g", "answer": "a", "match": False}})
        if s % 100 == 0:
            writer.metric({"type": "checkpoint", "global_step": s, "path": f"checkpoint-{s}"})
    first = MetricsIndex(path, smoothing=0.9)
    first.refresh()
    first.save(tmp_path / "cache")
    # while "the monitor is down": a rewind to 150, then more steps
    writer.rewind_metrics(150)
    for s in range(151, 231):
        writer.metric(dict(_train(s), loss=5.0))

    def snapshot(idx):
        return (idx.query("train", ["loss", "loss_ema", "lr"], 100000), idx.query("eval", ["val_loss", "gap"], 1000),
                [c["global_step"] for c in idx.checkpoints], idx.summary()["previews"][:3])

    restored = MetricsIndex(path, smoothing=0.9)
    assert restored.load(tmp_path / "cache") and restored.lines == first.lines
    restored.refresh()
    fresh = MetricsIndex(path, smoothing=0.9)
    fresh.refresh()
    a, b = snapshot(restored), snapshot(fresh)
    assert a[0]["step"] == list(range(1, 231)) and a[0]["step"] == b[0]["step"]
    assert np.allclose(a[0]["loss_ema"], b[0]["loss_ema"]) and a[0]["loss"] == b[0]["loss"]
    assert a[1]["step"] == b[1]["step"] == list(range(20, 151, 20)) and np.allclose(a[1]["gap"], b[1]["gap"])
    assert a[2] == b[2] == [100]
    # a cache of another file (replaced: new inode) or another smoothing is not used
    assert not MetricsIndex(path, smoothing=0.5).load(tmp_path / "cache")
    tmp = tmp_path / "other.jsonl"
    tmp.write_bytes(path.read_bytes())
    os.replace(tmp, path)
    assert not MetricsIndex(path, smoothing=0.9).load(tmp_path / "cache")
