"""Training queue: priorities, FIFO, retries with backoff, recovery, concurrent claims, CLI."""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.cli.queue import main as queue_main
from core.queue_store import DuplicateError, QueueError, TrainingQueue
from core.validation.report import ValidationReport
from tests.queue_support import claim_worker  # a spawned process imports it by its package name

REPO = Path(__file__).resolve().parent.parent


def add(queue: TrainingQueue, tmp: Path, name: str, priority: str = "normal", content: str | None = None, **kw):
    src = tmp / f"src-{name}"
    src.write_text(content if content is not None else json.dumps({"name": name}) + "\n")
    fid = hashlib.sha256(src.read_bytes()).hexdigest()
    return queue.enqueue(src, file_id=fid, original_name=name, schema_id="chat_sft_v1", priority=priority,
                         name=name, **kw)


def files(queue: TrainingQueue, state: str) -> list[str]:
    return sorted(p.name for p in queue.dir(state).iterdir())


def test_priority_then_fifo(make_config, tmp_path):
    q = TrainingQueue(make_config())
    for name, prio in [("a.jsonl", "low"), ("b.jsonl", "normal"), ("c.jsonl", "high"), ("d.jsonl", "normal"),
                       ("e.jsonl", "high"), ("f.jsonl", "low")]:
        add(q, tmp_path, name, prio)
    order = []
    while (e := q.claim_next()) is not None:
        order.append(e.name)
        assert e.state == "processing" and e.meta.state == "processing" and e.meta.attempts == 1
        q.complete(e.name, global_step_end=7)
    assert order == ["c.jsonl", "e.jsonl", "b.jsonl", "d.jsonl", "a.jsonl", "f.jsonl"]
    done = q.entries(("recently_completed",))
    assert len(done) == 6 and all(x.meta.finished_at and x.meta.global_step_end == 7 for x in done)
    assert files(q, "processing") == []


def test_state_change_is_a_rename_and_sidecar_follows(make_config, tmp_path):
    q = TrainingQueue(make_config())
    e = add(q, tmp_path, "x.jsonl", "normal")
    ino = os.stat(e.path).st_ino
    meta = json.loads((q.dir("normal") / "x.meta.json").read_text())
    for key in ("id", "original_name", "schema_id", "priority", "state", "attempts", "enqueued_at", "started_at",
                "finished_at", "errors", "validation", "global_step_start", "global_step_end"):
        assert key in meta
    c = q.claim_next()
    assert os.stat(c.path).st_ino == ino  # same inode: moved, never copied
    assert files(q, "normal") == [] and files(q, "processing") == ["x.jsonl", "x.meta.json"]
    assert c.meta.history[-1].to == "processing"


def test_retry_backoff_then_failed_with_every_error(make_config, tmp_path):
    q = TrainingQueue(make_config({"queue.max_attempts": 3, "queue.retry_backoff_seconds": 10}))
    add(q, tmp_path, "x.jsonl", "high")
    t = 1_000_000.0
    e = q.claim_next(now=t)
    r = q.fail(e.name, "CUDA OOM", now=t)
    assert r.state == "high" and r.meta.not_before == t + 10
    assert q.claim_next(now=t + 9) is None  # backing off
    e = q.claim_next(now=t + 10)
    assert e.meta.attempts == 2
    r = q.fail(e.name, "NaN loss", now=t + 10)
    assert r.meta.not_before == t + 10 + 20  # doubles
    e = q.claim_next(now=t + 30)
    r = q.fail(e.name, "segfault", now=t + 30)
    assert r.state == "failed"
    assert [x.error for x in r.meta.errors] == ["CUDA OOM", "NaN loss", "segfault"]
    assert [x.attempt for x in r.meta.errors] == [1, 2, 3]
    # retry brings it back with attempts reset
    r = q.retry("x")
    assert r.state == "high" and r.meta.attempts == 0 and q.claim_next().name == "x.jsonl"


def test_backoff_does_not_block_other_files(make_config, tmp_path):
    q = TrainingQueue(make_config({"queue.retry_backoff_seconds": 100}))
    add(q, tmp_path, "a.jsonl", "high")
    add(q, tmp_path, "b.jsonl", "low")
    q.fail(q.claim_next().name, "boom")
    assert q.claim_next().name == "b.jsonl"
    assert q.status()["backing_off"] == 1


def test_requeue_front_keeps_progress(make_config, tmp_path):
    q = TrainingQueue(make_config())
    for n in ("x.jsonl", "y.jsonl", "z.jsonl"):
        add(q, tmp_path, n)
    assert q.claim_next().name == "x.jsonl"
    y = q.claim_next()
    r = q.requeue_front(y.name, progress={"global_step": 120, "steps_done": 7})
    assert r.state == "normal" and r.meta.attempts == 0 and r.meta.interruptions == 1
    again = q.claim_next()
    assert again.name == "y.jsonl"  # before z, although z waited longer
    assert again.meta.progress.model_dump() == {"global_step": 120, "steps_done": 7}
    assert again.meta.attempts == 1


def test_resume_id_is_claimed_before_any_other_file(make_config, tmp_path):
    q = TrainingQueue(make_config({"queue.retry_backoff_seconds": 10}))
    mid = add(q, tmp_path, "mid.jsonl", "low")
    add(q, tmp_path, "old.jsonl", "normal")
    add(q, tmp_path, "urgent.jsonl", "high")
    t = 1_000_000.0
    # the latest checkpoint is mid-way through mid.jsonl: it goes first although two files outrank it
    e = q.claim_next(now=t, resume_id=mid.id)
    assert e.name == "mid.jsonl" and e.meta.attempts == 1
    # during its backoff nothing else starts (another file would end its resume record)
    q.fail(e.name, "unknown: boom", now=t)
    assert q.claim_next(now=t + 9, resume_id=mid.id) is None
    assert q.claim_next(now=t + 10, resume_id=mid.id).name == "mid.jsonl"
    # out of the waiting folders (failed/, skipped, completed) it no longer holds the others back
    q.skip("mid.jsonl", "operator")
    assert q.claim_next(now=t + 11, resume_id=mid.id).name == "urgent.jsonl"
    assert q.claim_next(now=t + 11, resume_id="0" * 64).name == "old.jsonl"  # an unknown id is no preference


def test_global_step_start_is_set_once(make_config, tmp_path):
    q = TrainingQueue(make_config())
    add(q, tmp_path, "x.jsonl")
    e = q.claim_next()
    assert e.meta.global_step_start is None
    assert q.note_global_step_start(e.name, 41).meta.global_step_start == 41
    q.requeue_front(e.name, progress={"global_step": 60})
    e = q.claim_next()
    assert e.meta.global_step_start == 41  # travels with the file through every transition
    assert q.note_global_step_start(e.name, 61).meta.global_step_start == 41  # a resume keeps the first value
    done = q.complete(e.name, global_step_end=80)
    on_disk = json.loads((q.dir("recently_completed") / "x.meta.json").read_text())
    assert (done.meta.global_step_start, on_disk["global_step_start"], on_disk["global_step_end"]) == (41, 41, 80)


def test_recover_processing_on_start(make_config, tmp_path):
    cfg = make_config({"queue.max_attempts": 2})
    q = TrainingQueue(cfg)
    add(q, tmp_path, "a.jsonl")
    add(q, tmp_path, "b.jsonl")
    q.claim_next()  # a: then the daemon "crashes"
    q2 = TrainingQueue(cfg)
    (r,) = q2.recover_processing()
    assert r.state == "normal" and r.meta.attempts == 1 and "unclean shutdown" in r.meta.errors[-1].error
    assert files(q2, "processing") == []
    assert q2.claim_next().name == "a.jsonl"  # at the front
    (r,) = TrainingQueue(cfg).recover_processing()  # second crash on the same file: out of attempts
    assert r.state == "failed" and len(r.meta.errors) == 2
    # not counted when the daemon says so
    q2.claim_next()
    (r,) = TrainingQueue(cfg).recover_processing(count_as_attempt=False)
    assert r.state == "normal" and r.meta.attempts == 0


def test_repair_moves_sidecars_left_behind(make_config, tmp_path):
    q = TrainingQueue(make_config())
    e = add(q, tmp_path, "a.jsonl", "normal")
    os.rename(e.path, q.dir("processing") / "a.jsonl")  # crash right after the data rename
    assert q.repair() == 1
    assert files(q, "processing") == ["a.jsonl", "a.meta.json"] and files(q, "normal") == []
    assert json.loads((q.dir("processing") / "a.meta.json").read_text())["state"] == "processing"
    (q.dir("low") / "hand.jsonl").write_text("{}\n")  # dropped into the queue by hand: gets a sidecar
    assert q.repair() == 1 and (q.dir("low") / "hand.meta.json").exists()


def test_duplicate_content_names_original(make_config, tmp_path):
    q = TrainingQueue(make_config())
    add(q, tmp_path, "first.jsonl", content="same\n")
    with pytest.raises(DuplicateError, match=r"normal/first.jsonl"):
        add(q, tmp_path, "second.jsonl", content="same\n")
    forced = add(q, tmp_path, "second.jsonl", content="same\n", force=True)
    assert forced.meta.forced is True


def test_unique_names(make_config, tmp_path):
    q = TrainingQueue(make_config())
    a = add(q, tmp_path, "x.jsonl", content="1\n")
    b = add(q, tmp_path, "x.jsonl", content="2\n")
    c = add(q, tmp_path, "x.jsonl", content="3\n", priority="high")
    assert (a.name, b.name, c.name) == ("x.jsonl", "x-2.jsonl", "x-3.jsonl")


def test_skip_reject_remove_set_priority(make_config, tmp_path):
    q = TrainingQueue(make_config())
    add(q, tmp_path, "a.jsonl")
    add(q, tmp_path, "b.jsonl")
    add(q, tmp_path, "c.jsonl")
    s = q.skip("a", "operator skipped it")
    assert s.state == "failed" and s.meta.skipped and "operator" in s.meta.errors[-1].error
    p = q.set_priority("c.jsonl", "high")
    assert p.state == "high" and files(q, "high") == ["c.jsonl", "c.meta.json"]
    rep = ValidationReport("b.jsonl", "standard")
    rep.add("zero_supervised", "no supervised tokens left", 4)
    r = q.reject("b", rep)
    assert r.state == "rejected"
    reason = json.loads((q.dir("rejected") / "b.reason.json").read_text())
    assert reason["problems"][0]["lines"][0]["line"] == 4
    back = q.retry("b")  # a rejected file goes back to the inbox to be validated again
    assert back.state == "inbox" and (q.layout.inbox / "b.jsonl").exists()
    q.remove("c")
    assert files(q, "high") == []
    claimed = q.claim_next()
    assert claimed is None
    with pytest.raises(QueueError):
        q.set_priority("a", "high")  # failed files are retried, not re-prioritised


def test_two_processes_claiming_at_once_exactly_one_wins(make_config, tmp_path):
    cfg = make_config()
    q = TrainingQueue(cfg)
    ctx = mp.get_context("spawn")
    workers, rounds = 3, 12
    barrier = ctx.Barrier(workers + 1)
    out = ctx.Queue()
    procs = [ctx.Process(target=claim_worker, args=(cfg.to_json(), barrier, out, rounds)) for _ in range(workers)]
    for p in procs:
        p.start()
    try:
        winners = []
        for r in range(rounds):
            add(q, tmp_path, f"race{r}.jsonl", content=f"{r}\n")
            barrier.wait(timeout=60)  # release every worker at the same moment
            results = [out.get(timeout=60) for _ in range(workers)]
            won = [name for _, _, name in results if name]
            assert len(won) == 1, results  # exactly one process got the file
            assert won[0] == f"race{r}.jsonl"
            winners.append(won[0])
            q.complete(won[0])
    finally:
        for p in procs:
            p.join(timeout=30)
    assert all(p.exitcode == 0 for p in procs)
    assert len(q.entries(("recently_completed",))) == rounds and files(q, "processing") == []


def _write_config(cfg, tmp_path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(cfg.to_json())
    return path


def test_cli_in_process(make_config, tmp_path, capsys):
    cfg = make_config()
    conf = str(_write_config(cfg, tmp_path))
    q = TrainingQueue(cfg)
    add(q, tmp_path, "a.jsonl", "low")
    add(q, tmp_path, "b.jsonl", "high")
    assert queue_main(["--config", conf, "status", "--json"]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["counts"]["low"] == 1 and st["next"]["name"] == "b.jsonl"
    assert queue_main(["--config", conf, "list"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].split()[:3] == ["NAME", "STATE", "PRIORITY"] and "a.jsonl" in table
    assert queue_main(["--config", conf, "set-priority", "a", "high", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "high"
    assert queue_main(["--config", conf, "remove", "nope"]) == 1
    assert "no such file" in capsys.readouterr().err
    assert queue_main(["--config", conf, "show", "b", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["meta"]["original_name"] == "b.jsonl"


def test_cli_script_add_from_repo_root(make_config, tmp_path):
    cfg = make_config()
    conf = _write_config(cfg, tmp_path)
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}) + "\n")
    bad = tmp_path / "broken.jsonl"
    bad.write_text("{oops\n")
    run = lambda *a: subprocess.run([sys.executable, "core/training_queue.py", "--config", str(conf), *a],  # noqa: E731
                                    cwd=REPO, capture_output=True, text=True, timeout=60)
    r = run("add", str(good), "--priority", "high", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "high" and good.exists()  # a copy was queued
    r = run("add", str(bad))
    assert r.returncode == 1 and "invalid_json" in r.stdout and "line 1" in r.stdout
    r = run("add", str(good))
    assert r.returncode == 1 and "duplicate" in r.stdout
    r = run("--help")
    assert r.returncode == 0 and "set-priority" in r.stdout


def _events(q: TrainingQueue) -> list[dict]:
    return [json.loads(line) for line in q.layout.events.read_text().splitlines()]


def test_defer_list_retry_with_history_and_events(make_config, tmp_path, capsys):
    cfg = make_config()
    conf = str(_write_config(cfg, tmp_path))
    q = TrainingQueue(cfg)
    add(q, tmp_path, "stale.jsonl", "low")
    add(q, tmp_path, "fresh.jsonl", "low")
    d = q.defer("stale", "binary level 1 is below the current level 2")
    assert d.state == "deferred" and files(q, "deferred") == ["stale.jsonl", "stale.meta.json"]
    assert (d.meta.state, d.meta.deferred_reason) == ("deferred", "binary level 1 is below the current level 2")
    step = d.meta.history[-1]
    assert (step.from_, step.to, step.event, step.reason) == ("low", "deferred", "deferred", d.meta.deferred_reason)
    ev = _events(q)[-1]
    assert (ev["source"], ev["event"], ev["file"], ev["from"], ev["state"]) == ("queue", "deferred", "stale.jsonl", "low", "deferred")
    assert "below the current level 2" in ev["reason"]
    # a deferred file is not trained, is counted, and its content is still known
    assert q.claim_next().name == "fresh.jsonl" and q.claim_next() is None
    assert q.status()["counts"]["deferred"] == 1
    with pytest.raises(DuplicateError, match="deferred/stale.jsonl"):
        add(q, tmp_path, "again.jsonl", content=json.dumps({"name": "stale.jsonl"}) + "\n")
    with pytest.raises(QueueError, match="no such file"):
        q.defer("fresh", "only waiting files are deferred")  # in processing/ now
    # the CLI lists it with its reason, and retry brings it back to its priority
    assert queue_main(["--config", conf, "list", "--state", "deferred", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["name"], row["state"], row["priority"]) == ("stale.jsonl", "deferred", "low")
    assert row["last_error"].startswith("deferred: binary level 1")
    assert queue_main(["--config", conf, "list", "--state", "deferred"]) == 0
    assert "stale.jsonl" in capsys.readouterr().out
    assert queue_main(["--config", conf, "retry", "stale", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "low"
    back = q.find("stale")
    assert back.state == "low" and files(q, "deferred") == []
    assert [(h.from_, h.to, h.event) for h in back.meta.history] == [
        ("inbox", "low", "enqueued"), ("low", "deferred", "deferred"), ("deferred", "low", "retry")]
    assert [(e["event"], e.get("from"), e["state"]) for e in _events(q) if e["file"] == "stale.jsonl"] == [
        ("enqueued", None, "low"), ("deferred", "low", "deferred"), ("retry", "deferred", "low")]
    assert q.claim_next().name == "stale.jsonl"


def test_deferred_files_of_older_versions_are_listed_and_retried(make_config, tmp_path, capsys):
    cfg = make_config()
    conf = str(_write_config(cfg, tmp_path))
    q = TrainingQueue(cfg)
    deferred = q.dir("deferred")
    # what data_manager/manager.py used to leave there: no sidecar at all, or its old sidecar with state "deferred"
    (deferred / "bare.jsonl").write_text('{"a": 1}\n')
    (deferred / "old.1700000000.jsonl").write_text('{"a": 2}\n')
    (deferred / "old.1700000000.meta.json").write_text(json.dumps({
        "id": "ab" * 32, "name": "old.jsonl", "original_name": "dm_binary_L01.jsonl", "schema_id": "syllo_v1",
        "priority": "normal", "state": "deferred", "attempts": 0, "enqueued_at": "2026-01-01T00:00:00Z",
        "started_at": None, "finished_at": None, "errors": [], "validation": {"level": "quick", "examples": 1},
        "global_step_start": None, "global_step_end": None, "epochs": None, "tags": ["skill:binary", "level:1"],
        "notes": None, "order": 5.0, "not_before": None, "progress": None, "forced": False,
        "history": [{"at": "2026-01-01T00:00:00Z", "from": "inbox", "to": "normal", "event": "enqueued"}],
        "deferred_at": "2026-01-02T00:00:00+00:00", "deferred_reason": "binary level 1 is below the current level 2"}))
    (deferred / "old.1700000000.job.json").write_text(json.dumps({"schema_id": "syllo_v1", "tags": ["skill:binary"]}))
    assert queue_main(["--config", conf, "list", "--state", "deferred", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"bare.jsonl", "old.1700000000.jsonl"}
    assert rows["old.1700000000.jsonl"]["original"] == "dm_binary_L01.jsonl" and rows["bare.jsonl"]["priority"] == "normal"
    back = q.retry("old.1700000000")
    assert back.state == "normal" and (q.dir("normal") / "old.1700000000.job.json").exists()
    assert [h.event for h in back.meta.history] == ["enqueued", "retry"]
    assert q.retry("bare", priority="high").state == "high"


def test_defer_into_a_taken_name_renames(make_config, tmp_path):
    q = TrainingQueue(make_config())
    (q.dir("deferred") / "x.jsonl").write_text("older\n")  # left by an older version
    (q.dir("low") / "x.jsonl").write_text("newer\n")  # placed by hand, so the queue could not keep names unique
    d = q.defer("x", "stale")
    assert d.name == "x-2.jsonl" and d.meta.name == "x-2.jsonl" and (q.dir("deferred") / "x-2.meta.json").exists()
    assert (q.dir("deferred") / "x.jsonl").read_text() == "older\n" and d.path.read_text() == "newer\n"
    assert _events(q)[-1]["renamed_from"] == "x.jsonl"
