"""The queue's records (core/state/queue_records.py): round trips, older files, torn or invalid files named."""
from __future__ import annotations

import json

import pytest

from core.state import queue_records as qr
from core.state.base import StateError
from core.state.queue_records import (FILES, IngestClaim, JobSidecar, QueueMeta, RejectReport, load_job_sidecar,
                                      read_ingest_claim, read_job_sidecar, read_queue_meta, read_reject_report,
                                      write_ingest_claim, write_job_sidecar, write_queue_meta)
from core.validation.report import ValidationReport


def test_queue_meta_round_trip_keeps_the_contract_keys(tmp_path):
    meta = QueueMeta(id="ab" * 32, name="x.jsonl", original_name="sub/x.jsonl", schema_id="chat_sft_v1",
                     priority="high", state="processing", attempts=2, errors=[{"at": "t", "attempt": 1, "error": "oom"}],
                     validation={"level": "quick", "examples": 3, "warning_rules": ["blank_line"]},
                     global_step_start=5, global_step_end=9, tags=["skill:binary", "level:2"],
                     history=[{"at": "t", "from": "inbox", "to": "high", "event": "enqueued"}],
                     progress={"global_step": 7, "steps_done": 2})
    path = tmp_path / "x.meta.json"
    write_queue_meta(path, meta)
    on_disk = json.loads(path.read_text())
    # DESIGN.md's sidecar keys, as they were before the model (plus schema_version); history keeps "from"
    for key in ("id", "original_name", "schema_id", "priority", "state", "attempts", "enqueued_at", "started_at",
                "finished_at", "errors", "validation", "global_step_start", "global_step_end", "schema_version"):
        assert key in on_disk
    assert on_disk["history"][0]["from"] == "inbox" and on_disk["schema_version"] == QueueMeta.SCHEMA_VERSION
    assert read_queue_meta(path) == meta
    assert read_queue_meta(tmp_path / "missing.meta.json") is None


def test_an_older_queue_sidecar_upgrades(tmp_path):
    # written by the queue before the state package (no schema_version), and one made by hand with a
    # state word the queue never had: the folder says where the file is
    old = {"id": "cd" * 32, "name": "a.jsonl", "original_name": "a.jsonl", "schema_id": "chat_sft_v1",
           "priority": "normal", "state": "deferred", "attempts": 0, "enqueued_at": "2026-01-01T00:00:00Z",
           "started_at": None, "finished_at": None, "errors": [], "validation": {}, "global_step_start": None,
           "global_step_end": None, "order": 1.5, "not_before": None, "progress": None,
           "history": [{"at": "2026-01-01T00:00:00Z", "event": "sidecar recreated by repair"}],
           "deferred_at": "2026-01-02T00:00:00+00:00", "deferred_reason": "binary level 1 is below the current level 2"}
    (tmp_path / "a.meta.json").write_text(json.dumps(old))
    meta = read_queue_meta(tmp_path / "a.meta.json")
    assert meta.schema_version == QueueMeta.SCHEMA_VERSION and meta.state == "deferred" and meta.order == 1.5
    assert meta.deferred_reason.startswith("binary level 1")
    (tmp_path / "b.meta.json").write_text(json.dumps({"id": "x", "state": "queued", "tags": ["skill:binary"]}))
    hand = read_queue_meta(tmp_path / "b.meta.json")
    assert hand.state is None and hand.tags == ["skill:binary"] and hand.attempts == 0


def test_torn_or_invalid_records_name_the_file_and_field(tmp_path):
    torn = tmp_path / "t.meta.json"
    torn.write_text('{"id": "x", "attem')
    with pytest.raises(StateError, match=r"t\.meta\.json: not JSON"):
        read_queue_meta(torn)
    bad = tmp_path / "b.meta.json"
    bad.write_text(json.dumps({"schema_version": 1, "attempts": "many", "colour": "red"}))
    with pytest.raises(StateError) as exc:
        read_queue_meta(bad)
    assert "b.meta.json" in str(exc.value) and "attempts" in str(exc.value) and "colour" in str(exc.value)
    newer = tmp_path / "n.reason.json"
    newer.write_text(json.dumps({"schema_version": 99}))
    with pytest.raises(StateError, match="newer than this Cadence reads"):
        read_reject_report(newer)
    with pytest.raises(Exception, match="priority"):
        QueueMeta(id="x").changed(priority="urgent")


def test_job_sidecar_unknown_keys_are_errors_naming_the_key(tmp_path):
    path = tmp_path / "x.job.json"
    write_job_sidecar(path, JobSidecar(schema_id="syllo_v1", priority="low", tags=["skill:syllo", "level:3"]))
    assert json.loads(path.read_text()) == {"schema_version": 1, "schema_id": "syllo_v1", "priority": "low",
                                            "tags": ["skill:syllo", "level:3"]}
    assert read_job_sidecar(path).tags == ["skill:syllo", "level:3"]
    # a user's own file, without schema_version, reads as is
    path.write_text(json.dumps({"priority": "high", "epochs": 2, "notes": "n"}))
    assert read_job_sidecar(path).epochs == 2
    path.write_text(json.dumps({"priority": "high", "lr": 1e-4, "epochs": "2"}))
    sidecar, problems = load_job_sidecar(path)
    assert sidecar is None and {m for _, m in problems} == {"x.job.json: lr: unknown key (not part of the spec)",
                                                            "x.job.json: epochs: Input should be a valid integer"}
    with pytest.raises(StateError, match=r"x\.job\.json.*lr: unknown key"):
        read_job_sidecar(path)
    path.write_text('{"priority": "high",\n "tags": [}\n')
    (line, message), = load_job_sidecar(path)[1]
    assert line == 2 and message.startswith("x.job.json is not valid JSON at line 2")
    assert load_job_sidecar(tmp_path / "none.job.json") == (None, [])


def test_reject_report_round_trip_with_every_problem_and_its_line(tmp_path):
    rep = ValidationReport("inbox/bad.jsonl", "quick", schema_id="chat_sft_v1", lines_per_rule=2)
    for line in (3, 5, 9):
        rep.add("invalid_json", "Expecting value at column 1", line)
    rep.add("blank_line", "blank line", 4)
    rep.stats.update(bytes=120, lines=9, examples=5, blank_lines=1, sha256="ef" * 32)
    path = tmp_path / "bad.reason.json"
    rep.write(path)
    report = read_reject_report(path)
    assert isinstance(report, RejectReport) and report.verdict == "rejected" and report.validator == "DataValidator"
    (err, warn) = report.problems
    assert (err.rule, err.count, [p.line for p in err.lines], err.more) == ("invalid_json", 3, [3, 5], 1)
    assert (warn.rule, warn.severity, warn.lines[0].line) == ("blank_line", "warning", 4)
    assert report.summary == rep.summary() and report.stats.examples == 5
    assert json.loads(path.read_text())["problems"][0]["lines"][0] == {"line": 3, "message": "Expecting value at column 1"}


def test_ingest_claim_round_trip(tmp_path):
    path = tmp_path / "1-2.ingest.json"
    write_ingest_claim(path, IngestClaim(original_name="a/b.jsonl", queue_name="a__b.jsonl", taken_at="t", pid=7,
                                         overrides={"priority": "high", "force": True}))
    claim = read_ingest_claim(path)
    assert claim.overrides.priority == "high" and claim.overrides.force and claim.pid == 7


def test_files_lists_every_queue_record():
    patterns = {f.pattern: f.model for f in FILES}
    assert patterns == {"queue/*/*.meta.json": QueueMeta, "inbox/**/*.job.json": JobSidecar,
                        "queue/*/*.reason.json": RejectReport, "queue/.ingest/*.ingest.json": IngestClaim,
                        **{f"queue/{s}/*.job.json": JobSidecar for s in qr.STATES if s != "rejected"}}
    assert qr.STATES[-1] == "deferred" and set(qr.PRIORITIES) < set(qr.STATES)


def test_every_queue_file_written_by_ingest_and_transitions_validates(make_config, tmp_path):
    from core.ingest import Ingestor
    from core.queue_store import TrainingQueue
    from core.state.registry import validate_tree

    cfg = make_config()
    queue = TrainingQueue(cfg)
    ingestor = Ingestor(cfg, queue)
    row = lambda i: json.dumps({"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]})  # noqa: E731
    for name, body, job in (("good", row(1), {"priority": "high", "tags": ["skill:binary", "level:1"]}),
                            ("other", row(2), None), ("third", row(3), None),
                            ("broken", "{oops", None), ("badjob", row(4), {"priority": "high", "lr": 1})):
        (tmp_path / f"{name}.jsonl").write_text(body + "\n")
        if job:
            (tmp_path / f"{name}.job.json").write_text(json.dumps(job))
        ingestor.ingest_path(tmp_path / f"{name}.jsonl")
    assert {e.name: e.state for e in queue.entries()} == {
        "good.jsonl": "high", "other.jsonl": "normal", "third.jsonl": "normal", "broken.jsonl": "rejected",
        "badjob.jsonl": "rejected"}
    queue.complete(queue.claim_next().name, global_step_end=3)
    queue.fail(queue.claim_next().name, "boom", retryable=False)
    queue.defer("third", "stale")
    problems = [p for p in validate_tree(cfg.layout.base_dir) if p.startswith("queue/")]
    assert problems == []
    assert read_job_sidecar(queue.find("good").sidecar("job")).tags == ["skill:binary", "level:1"]
    assert read_reject_report(queue.find("badjob").sidecar("reason")).problems[0].rule == "job_sidecar"
