"""Inbox watcher + ingest: the bad-input corpus, completeness rules, sidecars, staging recovery, STANDARD gate."""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from ingest_corpus import BAD, GOOD, ORIGINAL, good_lines, make_subfolder_good

from core.queue_store import PRIORITIES, TrainingQueue
from core.ingest import Ingestor, standard_gate
from core.watcher import name_problem, queue_name


def inbox_files(inbox: Path) -> list[str]:
    out = []
    for root, dirs, names in os.walk(inbox):
        out += [os.path.join(root, n) for n in names]
        out += [os.path.join(root, d) for d in dirs if os.path.islink(os.path.join(root, d))]
    return out


def wait_for(cond, timeout=30.0, step=0.05):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(step)
    return False


def reasons(queue: TrainingQueue) -> dict[str, dict]:
    out = {}
    for p in queue.dir("rejected").glob("*.reason.json"):
        d = json.loads(p.read_text())
        out[d["file"]] = {**d, "_stem": p.name[: -len(".reason.json")]}
    return out


def waiting(queue: TrainingQueue) -> dict[str, str]:
    return {e.meta.original_name: e.state for e in queue.entries(PRIORITIES)}


@pytest.fixture
def watching(make_config):
    """An Ingestor running in a thread (inotify), stopped at teardown; asserts the thread never died."""
    started = []

    def start(overrides=None):
        cfg = make_config({"daemon.settle_seconds": 0.2, "daemon.poll_interval": 5, "daemon.orphan_sidecar_seconds": 1.0,
                           **(overrides or {})})
        ing = Ingestor(cfg)
        stop = threading.Event()
        t = threading.Thread(target=ing.run_forever, args=(stop,), daemon=True)
        t.start()
        assert wait_for(lambda: ing.observer is not None or cfg.daemon.inbox_observer == "polling", 5)
        started.append((t, stop))
        return cfg, ing, t

    yield start
    for t, stop in started:
        stop.set()
        t.join(timeout=10)
        assert not t.is_alive()


def test_bad_corpus_all_rejected_with_line_and_rule_none_lost(watching):
    cfg, ing, thread = watching({"validation.standard_on_arrival": True})
    inbox, queue = cfg.layout.inbox, ing.queue
    (inbox / ORIGINAL[0]).write_text(ORIGINAL[1])
    assert wait_for(lambda: ORIGINAL[0] in waiting(queue), 10)

    dropped = {k.name: k.make(inbox) for k in BAD}
    good = {name: make(inbox) for name, make, _ in GOOD}
    good["subfolder"] = make_subfolder_good(inbox)
    assert wait_for(lambda: not inbox_files(inbox) and not list(ing.staging.iterdir()), 60), inbox_files(inbox)
    assert wait_for(lambda: len(waiting(queue)) == len(GOOD) + 2, 10)

    got = reasons(queue)
    problems = []
    for kind in BAD:
        rel = dropped[kind.name]
        rep = got.get(rel)
        if rep is None:
            problems.append(f"{kind.name}: no reason for {rel!r}")
            continue
        by_rule = {p["rule"]: p for p in rep["problems"] if p["severity"] == "error"}
        if kind.rule not in by_rule:
            problems.append(f"{kind.name}: expected rule {kind.rule}, got {sorted(by_rule)}")
        elif kind.line is not None and kind.line not in [x["line"] for x in by_rule[kind.rule]["lines"]]:
            problems.append(f"{kind.name}: expected line {kind.line}, got {by_rule[kind.rule]['lines']}")
        if rep["verdict"] != "rejected" or not rep["summary"].startswith(rel):
            problems.append(f"{kind.name}: summary must name the file: {rep['summary']}")
    assert not problems, "\n".join(problems)
    assert len(BAD) >= 30 and len(got) == len(BAD)

    # every file in, every file out: each bad drop is in rejected/ (or its sidecar is, for the orphan) with a meta
    rejected = queue.dir("rejected")
    for rep in got.values():
        stem = rep["_stem"]
        assert (rejected / f"{stem}.meta.json").exists()
        assert os.path.lexists(rejected / f"{stem}.jsonl") or (rejected / f"{stem}.job.json").exists(), stem
    assert (rejected / "folder.jsonl" / "inner.jsonl").exists()  # a directory moved whole, never walked into
    assert os.path.islink(rejected / "passwd_link.jsonl")  # the link itself, never its target
    q = waiting(queue)
    expected_prio = {rel: prio for (_, _, prio), rel in zip(GOOD, [good[n] for n, _, _ in GOOD])}
    for rel, prio in expected_prio.items():
        assert q.get(rel) == prio, (rel, q)
    assert q["team/batch 7/part.jsonl"] == "high"
    assert len(q) == len(GOOD) + 2
    assert not list(ing.staging.iterdir())

    # the watcher is still running and takes a good file dropped afterwards
    assert thread.is_alive()
    (inbox / "after.jsonl").write_text(good_lines(4, "after"))
    assert wait_for(lambda: "after.jsonl" in waiting(queue), 10)
    events = [json.loads(x) for x in cfg.layout.events.read_text().splitlines()]
    assert sum(e["event"] == "rejected" for e in events) == len(BAD)


def test_file_still_being_written_waits_for_close(watching):
    cfg, ing, _ = watching()
    inbox, queue = cfg.layout.inbox, ing.queue
    text = good_lines(50, "slow")
    with open(inbox / "slow.jsonl", "w") as fh:
        fh.write(text[: len(text) // 2])
        fh.flush()
        time.sleep(1.0)  # far past settle_seconds, but the writer still has it open
        assert (inbox / "slow.jsonl").exists() and not waiting(queue)
        fh.write(text[len(text) // 2:])
    assert wait_for(lambda: "slow.jsonl" in waiting(queue), 10)
    (entry,) = queue.entries(PRIORITIES)
    assert entry.meta.validation.examples == 50


def test_polling_takes_a_file_only_after_it_settles(make_config):
    cfg = make_config({"daemon.inbox_observer": "polling", "daemon.settle_seconds": 0.4})
    ing = Ingestor(cfg)
    path = cfg.layout.inbox / "grow.jsonl"
    text = good_lines(20, "grow")
    for i in range(0, len(text), len(text) // 6):
        with open(path, "a") as fh:
            fh.write(text[i:i + len(text) // 6])
        assert ing.scan_once() == []
        time.sleep(0.15)
    assert ing.scan_once() == [] and path.exists()
    time.sleep(0.45)
    (r,) = ing.scan_once()
    assert r.accepted and r.entry.meta.validation.examples == 20


def test_polling_fallback_when_inotify_is_unavailable(make_config, monkeypatch):
    import watchdog.observers.inotify as ino

    class Broken:
        def __init__(self, *a, **k):
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(ino, "InotifyObserver", Broken)
    cfg = make_config({"daemon.settle_seconds": 0.1, "daemon.poll_interval": 0.2})
    ing = Ingestor(cfg)
    stop = threading.Event()
    t = threading.Thread(target=ing.run_forever, args=(stop,), daemon=True)
    t.start()
    try:
        (cfg.layout.inbox / "p.jsonl").write_text(good_lines(2, "poll"))
        assert wait_for(lambda: "p.jsonl" in waiting(ing.queue), 10)
        assert ing.observer is None
    finally:
        stop.set()
        t.join(5)


def test_hidden_tmp_part_ignored_until_renamed(make_config):
    cfg = make_config({"daemon.settle_seconds": 0})
    ing, inbox = Ingestor(cfg), cfg.layout.inbox
    for name in (".hidden.jsonl", "upload.tmp", "big.jsonl.part"):
        (inbox / name).write_text(good_lines(2, name))
    (inbox / ".git").mkdir()
    (inbox / ".git" / "x.jsonl").write_text(good_lines(1, "git"))
    assert ing.scan_once() == []
    assert len(inbox_files(inbox)) == 4
    os.rename(inbox / "big.jsonl.part", inbox / "big.jsonl")
    (r,) = ing.scan_once()
    assert r.accepted and r.name == "big.jsonl"


def test_sidecar_travels_with_its_file(make_config):
    cfg = make_config({"daemon.settle_seconds": 0})
    ing, inbox = Ingestor(cfg), cfg.layout.inbox
    (inbox / "job.job.json").write_text(json.dumps({"priority": "low", "epochs": 3, "tags": ["a"], "notes": "hi"}))
    (inbox / "job.jsonl").write_text(good_lines(2, "job"))
    (r,) = ing.scan_once()
    assert r.state == "low"
    low = ing.queue.dir("low")
    assert (low / "job.job.json").exists()
    meta = json.loads((low / "job.meta.json").read_text())
    assert (meta["epochs"], meta["tags"], meta["notes"]) == (3, ["a"], "hi")
    e = ing.queue.claim_next()
    ing.queue.complete(e.name)
    assert (ing.queue.dir("recently_completed") / "job.job.json").exists()
    # a rejected file keeps its sidecar too
    (inbox / "bad.job.json").write_text(json.dumps({"priority": "high"}))
    (inbox / "bad.jsonl").write_text("{nope\n")
    (r,) = ing.scan_once()
    assert r.outcome == "rejected" and (ing.queue.dir("rejected") / "bad.job.json").exists()


def test_file_deleted_mid_validation(make_config, monkeypatch):
    cfg = make_config({"daemon.settle_seconds": 0})
    ing = Ingestor(cfg)
    real_quick = ing.validator.quick

    def quick_then_delete(path, schema_id, name=None):
        rep = real_quick(path, schema_id, name=name)
        os.unlink(path)  # someone removes it while it is validated
        return rep

    monkeypatch.setattr(ing.validator, "quick", quick_then_delete)
    (cfg.layout.inbox / "gone.jsonl").write_text(good_lines(3, "gone"))
    (r,) = ing.scan_once()
    assert r.outcome == "vanished"
    rep = json.loads((ing.queue.dir("rejected") / "gone.reason.json").read_text())
    assert [p["rule"] for p in rep["problems"]] == ["file_vanished"]
    assert not waiting(ing.queue) and not inbox_files(cfg.layout.inbox)


def test_ingest_error_never_escapes(make_config, monkeypatch):
    cfg = make_config({"daemon.settle_seconds": 0})
    ing = Ingestor(cfg)
    monkeypatch.setattr(ing.validator, "quick", lambda *a, **k: 1 / 0)
    (cfg.layout.inbox / "boom.jsonl").write_text(good_lines(1, "boom"))
    (r,) = ing.scan_once()
    assert r.outcome == "rejected" and "ZeroDivisionError" in r.message
    assert (ing.queue.dir("rejected") / "boom.jsonl").exists()


def test_staging_recovered_after_a_crash(make_config):
    cfg = make_config({"daemon.settle_seconds": 0})
    ing = Ingestor(cfg)
    (cfg.layout.inbox / "crash.jsonl").write_text(good_lines(2, "crash"))
    ing._stage(cfg.layout.inbox / "crash.jsonl", "crash.jsonl", "crash.jsonl", None, {})  # taken, then the daemon died
    assert not inbox_files(cfg.layout.inbox) and len(list(ing.staging.iterdir())) == 2
    results = Ingestor(cfg).scan_once()
    assert [r.outcome for r in results] == ["queued"]
    assert not list(ing.staging.iterdir())


def test_names():
    assert queue_name(["team", "batch 7", "part.jsonl"]) == "team__batch_7__part.jsonl"
    assert queue_name(["-rf.jsonl"]) == "rf.jsonl"
    assert name_problem(["ok (1).jsonl"]) is None
    assert name_problem(["a;b.jsonl"]) and name_problem(["a..b.jsonl"]) and name_problem(["a\nb.jsonl"])


def test_standard_gate_before_training(make_config):
    from core.validation.validator import DataValidator

    cfg = make_config({"daemon.settle_seconds": 0})
    ing = Ingestor(cfg)
    inbox = cfg.layout.inbox
    (inbox / "fine.jsonl").write_text(good_lines(30, "fine"))
    long = json.dumps({"messages": [{"role": "user", "content": "word " * 400},
                                    {"role": "assistant", "content": "ok"}]}) + "\n"
    (inbox / "cut.jsonl").write_text(good_lines(1, "cut") + long + good_lines(30, "cut2"))
    assert [r.outcome for r in ing.scan_once()] == ["queued", "queued"]  # QUICK cannot see token lengths
    validator = DataValidator(cfg)
    ing.queue.set_priority("fine", "high")
    first = ing.queue.claim_next()
    assert first.name == "fine.jsonl" and standard_gate(cfg, ing.queue, first, validator)
    meta = ing.queue.find("fine").meta
    assert meta.validation.level == "standard" and meta.validation.tokens > 0
    second = ing.queue.claim_next()
    assert second.name == "cut.jsonl" and not standard_gate(cfg, ing.queue, second, validator)
    rep = json.loads((ing.queue.dir("rejected") / "cut.reason.json").read_text())
    zero = next(p for p in rep["problems"] if p["rule"] == "zero_supervised")
    assert zero["lines"][0]["line"] == 2 and rep["level"] == "standard"


def test_staging_of_a_live_process_is_left_alone(make_config):
    import subprocess
    import sys

    cfg = make_config({"daemon.settle_seconds": 0})
    ing = Ingestor(cfg)
    (cfg.layout.inbox / "cli.jsonl").write_text(good_lines(2, "cli"))
    staged = ing._stage(cfg.layout.inbox / "cli.jsonl", "cli.jsonl", "cli.jsonl", None, {})
    info = staged.with_name(staged.name[: -len(".data")] + ".ingest.json")
    data = json.loads(info.read_text())
    info.write_text(json.dumps({**data, "pid": os.getppid()}))  # a live process owns it (the CLI's add)
    assert Ingestor(cfg).scan_once() == [] and staged.exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    info.write_text(json.dumps({**data, "pid": int(dead.stdout)}))  # its owner died mid-ingest
    assert [r.outcome for r in ing.scan_once()] == ["queued"]


def test_close_and_rename_into_place_are_taken_without_settling(watching, tmp_path):
    cfg, ing, _ = watching({"daemon.settle_seconds": 60})  # the settle rule would wait a minute
    inbox, queue = cfg.layout.inbox, ing.queue
    outside = cfg.layout.base_dir / "elsewhere.jsonl"
    outside.write_text(good_lines(3, "moved"))
    os.rename(outside, inbox / "moved.jsonl")  # mv from outside the inbox (same filesystem)
    (inbox / "copied.jsonl").write_text(good_lines(3, "copied"))  # write + close
    (inbox / "renamed.jsonl.part").write_text(good_lines(3, "renamed"))
    os.rename(inbox / "renamed.jsonl.part", inbox / "renamed.jsonl")  # atomic writer's rename inside the inbox
    assert wait_for(lambda: set(waiting(queue)) == {"moved.jsonl", "copied.jsonl", "renamed.jsonl"}, 10), waiting(queue)


def test_the_daemon_takes_the_ingest_entry_points_from_core_ingest():
    # core.watcher's re-export of them (an import circle, issue 17) is gone: the daemon imports core.ingest itself
    import core.daemon
    import core.ingest

    assert core.daemon.Ingestor is core.ingest.Ingestor
