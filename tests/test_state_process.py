"""The process records of core/state/: heartbeat, child result, trainer state, control, training status, metrics,
events, crash history and fault streak. Each round-trips, reads the files the system wrote before the state package
(no schema_version), names the file and the field of a torn or invalid file, and skips a bad JSONL line with a
warning naming file:line."""
from __future__ import annotations

import json
import logging
import time

import pytest

from core.config import Layout
from core.state import child_result, control, events, faults, heartbeat, metrics, trainer_state, training_status
from core.state.base import StateError, StateFile
from core.state.child_result import ChildResult, ExitCode, TrainedFile, exit_kind
from core.state.control import ControlState, SkipRequest, read_control, write_control
from core.state.events import Event, EventTail, append_event, read_events, tail_events
from core.state.faults import Crash, FaultStreak, StreakFault, claim_fault_marker
from core.state.heartbeat import Heartbeat, heartbeat_path, read_heartbeat, write_heartbeat
from core.state.metrics import Metric, append_metric, decode_metric_lines, parse_metric, read_metrics, rewind_metrics
from core.state.trainer_state import CurrentFile, LastFile, TrainerState, read_trainer_state, write_trainer_state
from core.state.training_status import TrainingStatus, read_training_status, write_training_status
from trainer.status import StatusWriter

MODULES = (heartbeat, child_result, trainer_state, control, training_status, metrics, events, faults)


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout.from_base(tmp_path).ensure()


def _write(path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


# ------------------------------------------------------------------ FILES
def test_every_module_lists_its_files_with_a_model():
    patterns = []
    for module in MODULES:
        assert module.FILES and all(isinstance(f, StateFile) for f in module.FILES), module.__name__
        patterns += [f.pattern for f in module.FILES]
    assert len(patterns) == len(set(patterns))
    assert set(patterns) >= {"status/heartbeat.json", "status/heartbeat.rank*.json", "status/child_result.json",
                             "status/child_result.rank*.json", "control/state.json", "status/training_status.json",
                             "status/metrics.jsonl", "status/events.jsonl", "status/crash_history.jsonl",
                             "status/fault_streak.json",
                             "models/**/training_state/trainer_state.json"}


# ------------------------------------------------------------------ heartbeat
def test_heartbeat_round_trip_per_rank_and_old_file(layout):
    beat = Heartbeat(pid=12, phase="train", global_step=7, file="a.jsonl", ts=100.5, first_step=3, ram_pct=41.0)
    write_heartbeat(layout, beat)
    write_heartbeat(layout, beat.model_copy(update={"pid": 13}), rank=1)
    assert read_heartbeat(layout) == beat
    assert read_heartbeat(layout, 1).pid == 13
    assert heartbeat_path(layout, 1).name == "heartbeat.rank1.json"
    on_disk = json.loads(heartbeat_path(layout).read_text())
    assert on_disk == {"schema_version": 1, "pid": 12, "phase": "train", "global_step": 7, "file": "a.jsonl",
                       "ts": 100.5, "first_step": 3, "ram_pct": 41.0}
    # as trainer/child.py wrote it before the state package
    _write(heartbeat_path(layout), {"pid": 5, "phase": "load", "global_step": 0, "file": "b.jsonl", "ts": 1.0,
                                    "first_step": None, "ram_pct": 12.5})
    old = read_heartbeat(layout)
    assert old.phase == "load" and old.first_step is None and old.schema_version == 1
    assert read_heartbeat(layout, 3) is None


def test_heartbeat_torn_or_invalid_names_file_and_field(layout):
    path = heartbeat_path(layout)
    path.write_text('{"pid": 5, "phase": "tra')
    with pytest.raises(StateError, match=rf"{path}: not JSON"):
        read_heartbeat(layout)
    _write(path, {"pid": 5, "phase": "dancing", "global_step": 0, "ts": 1.0})
    with pytest.raises(StateError, match=rf"{path}: .*phase"):
        read_heartbeat(layout)
    _write(path, {"pid": 5, "phase": "train", "global_step": 0, "ts": 1.0, "colour": "red"})
    with pytest.raises(StateError, match=r"colour"):
        read_heartbeat(layout)


# ------------------------------------------------------------------ child result
def test_exit_codes_are_one_table():
    assert {c.category: int(c) for c in ExitCode} == {
        "completed": 0, "unknown": 1, "interrupted": 3, "data_error": 10, "nan_loss": 11, "disk_full": 12,
        "config_error": 13, "oom": 14, "rejected": 15}
    assert exit_kind(11) == "nan_loss" and exit_kind(99) == "unknown" and exit_kind(-9) == "signal"


def test_child_result_round_trip_and_old_file(layout):
    trained = TrainedFile(file_id="abc", status="completed", global_step_start=4, global_step_end=9, steps=5,
                          total_steps=5, examples=20, tokens=800, dropped=["x:3"], final_loss=0.5)
    result = ChildResult(pid=77, exit_code=ExitCode.COMPLETED, category="completed", message="completed",
                         result=trained, finished_at=10.0)
    child_result.write_child_result(layout, result, rank=1)
    assert child_result.read_child_result(layout, 1) == result
    assert child_result.read_child_result(layout) is None
    on_disk = json.loads(child_result.child_result_path(layout, 1).read_text())
    assert on_disk["exit_code"] == 0 and on_disk["category"] == "completed" and on_disk["result"]["steps"] == 5
    # the child's _finish before the state package (result: FileResult.__dict__)
    _write(child_result.child_result_path(layout), {
        "pid": 8, "exit_code": 10, "category": "data_error", "message": "a.jsonl:3: bad", "traceback": None,
        "result": None, "finished_at": 3.0})
    old = child_result.read_child_result(layout)
    assert old.exit_code is ExitCode.DATA_ERROR and old.message == "a.jsonl:3: bad"
    child_result.clear_child_result(layout)
    assert child_result.read_child_result(layout) is None


def test_child_result_invalid_names_field(layout):
    path = child_result.child_result_path(layout)
    _write(path, {"pid": 8, "exit_code": 42, "category": "data_error", "message": "m", "finished_at": 3.0})
    with pytest.raises(StateError, match=rf"{path}: .*exit_code"):
        child_result.read_child_result(layout)
    _write(path, {"pid": 8, "exit_code": 10, "category": "oom", "message": "m", "finished_at": 3.0})
    with pytest.raises(StateError, match=r"category 'oom' does not match exit_code 10"):
        child_result.read_child_result(layout)


# ------------------------------------------------------------------ trainer state
def test_trainer_state_round_trip_and_old_file(tmp_path):
    sd = tmp_path / "checkpoint-4" / "training_state"
    state = TrainerState(global_step=4, tokens_seen=100, examples_seen=8, files_done=["f1"],
                         current_file=CurrentFile(id="f2", name="b.jsonl", steps_done=2, total_steps=6,
                                                  global_step_start=2, started_at=1.0),
                         last_file=LastFile(id="f1", name="a.jsonl", final_loss=1.5, val_loss=None, global_step_end=2),
                         critical={"model.base_model": "models/base"}, critical_hash="h", reason="periodic")
    before = time.time()
    write_trainer_state(sd, state)
    back = read_trainer_state(sd)
    assert back.saved_at >= before and back.model_copy(update={"saved_at": None}) == state
    # as trainer/checkpoint.py wrote it before (and the versioner's restore, with its own keys)
    _write(sd / "trainer_state.json", {"global_step": 3, "files_done": [], "current_file": None,
                                       "restored_from": "v001", "restored_at": 2.0, "saved_at": 2.5})
    old = read_trainer_state(sd)
    assert old.global_step == 3 and old.restored_from == "v001" and old.tokens_seen == 0
    assert read_trainer_state(tmp_path / "nowhere") is None


def test_trainer_state_invalid_names_file_and_field(tmp_path):
    path = tmp_path / "trainer_state.json"
    _write(path, {"global_step": 3, "current_file": {"id": "x", "name": "a", "total_steps": "many",
                                                     "global_step_start": 0}})
    with pytest.raises(StateError, match=rf"{path}: .*current_file.total_steps"):
        read_trainer_state(tmp_path)


# ------------------------------------------------------------------ control
def test_control_round_trip_old_file_and_signal_files(layout):
    state = ControlState(desired="paused", skip=SkipRequest(reason="bad data", requested_at=1.0), reason="why")
    written = write_control(layout, state)
    assert written.updated_at is not None and read_control(layout) == written
    assert read_control(Layout.from_base(layout.base_dir / "elsewhere")) == ControlState()  # no file: running
    # core/control.py's file before the state package
    _write(control.control_path(layout), {"desired": "stopped", "stop_after_file": False, "skip": None,
                                          "reason": "stop requested", "requested_at": 1.0, "last_action": "stop",
                                          "updated_at": 1.0})
    assert read_control(layout).desired == "stopped"
    # a signal file is a one-shot request, absorbed and removed
    (layout.control / ".resume").touch()
    state = read_control(layout)
    assert state.desired == "running" and state.reason == "signal file control/.resume"
    assert not (layout.control / ".resume").exists() and read_control(layout).desired == "running"
    layout.emergency_stop.touch()
    assert read_control(layout).desired == "stopped"
    assert json.loads(control.control_path(layout).read_text())["desired"] == "running"  # never written


def test_control_invalid_names_field(layout):
    _write(control.control_path(layout), {"desired": "sleeping"})
    with pytest.raises(StateError, match=rf"{control.control_path(layout)}: .*desired"):
        read_control(layout)


# ------------------------------------------------------------------ training status
def test_training_status_writes_only_what_its_writers_set(layout):
    writer = StatusWriter(layout.training_status, layout.metrics)
    writer.update(state="training", global_step=3, file="a.jsonl", loss=0.5)
    writer.update(file=None, state="idle")
    on_disk = json.loads(layout.training_status.read_text())
    assert set(on_disk) == {"schema_version", "state", "global_step", "file", "loss", "updated_at", "pid"}
    assert on_disk["file"] is None and on_disk["state"] == "idle"
    assert read_training_status(layout).global_step == 3
    with pytest.raises(StateError, match=r"colour"):  # a field the record does not have is refused where it is made
        writer.update(colour="red")
    # written before the state package (the demo's keys)
    _write(layout.training_status, {"state": "training", "global_step": 9, "gpu": [], "ram": None,
                                    "preview": {"prompt": "p"}, "deployed_version": "v1", "updated_at": 1.0, "pid": 3})
    assert read_training_status(layout).deployed_version == "v1"
    assert StatusWriter(layout.training_status, layout.metrics).update(state="idle").global_step == 9


def test_training_status_torn_file(layout):
    layout.training_status.write_text('{"state": "trai')
    with pytest.raises(StateError, match=rf"{layout.training_status}: not JSON"):
        read_training_status(layout)
    write_training_status(layout.training_status, TrainingStatus(state="idle"))
    assert read_training_status(layout).state == "idle"


# ------------------------------------------------------------------ metrics
def test_metrics_round_trip_kinds_and_old_lines(layout, caplog):
    path = layout.metrics
    append_metric(path, Metric(type="train", global_step=1, loss=2.0, lr=1e-4, tokens_per_s=10.0))
    append_metric(path, Metric(type="eval", global_step=1, val_loss=1.9, preview={"prompt": "p", "match": True}))
    append_metric(path, Metric(type="checkpoint", global_step=1, path="checkpoint-1", reason="periodic"))
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert set(lines[0]) == {"schema_version", "type", "ts", "global_step", "loss", "lr", "tokens_per_s"}
    # an engine line from before the state package, then a torn line, then one of a kind nobody writes
    with open(path, "a") as fh:
        fh.write(json.dumps({"ts": 5.0, "type": "train", "global_step": 2, "file": "a.jsonl", "file_step": 2,
                             "file_total_steps": 4, "loss": 1.5, "lr": 1e-4, "grad_norm": 0.3, "tokens": 10,
                             "tokens_per_s": 9.0, "step_time_s": 1.0, "processes": 1}) + "\n")
        fh.write('{"type": "train", "glo\n')
        fh.write(json.dumps({"type": "eval", "global_step": 3, "loss": 1.0}) + "\n")
    with caplog.at_level(logging.WARNING, logger="core.state.metrics"):
        got = list(read_metrics(path))
    assert [(m.type, m.global_step) for m in got] == [("train", 1), ("eval", 1), ("checkpoint", 1), ("train", 2)]
    assert f"{path}:5" in caplog.text and f"{path}:6" in caplog.text and "do not belong to a eval line" in caplog.text
    with pytest.raises(StateError, match=rf"{path}:5"):
        list(read_metrics(path, strict=True))


def test_metric_fields_belong_to_their_kind():
    with pytest.raises(StateError, match=r"w:1: .*needs \['loss'\]"):
        parse_metric({"type": "train", "global_step": 1}, "w:1")
    with pytest.raises(StateError, match=r"needs \['path'\]"):
        parse_metric({"type": "checkpoint", "global_step": 1}, "w:2")
    with pytest.raises(StateError, match=r"type"):
        parse_metric({"type": "gossip", "global_step": 1}, "w:3")


def test_metrics_rewind_and_block_decode(layout):
    path = layout.metrics
    for step in range(1, 11):
        append_metric(path, Metric(type="train", global_step=step, loss=1.0 / step))
    assert rewind_metrics(path, 6) == 4
    assert [m.global_step for m in read_metrics(path)] == [1, 2, 3, 4, 5, 6]
    lines = [b'{"type": "train", "global_step": 1, "loss": 1}', b"torn", b'{"type": "nope", "global_step": 2}',
             b'{"type": "eval", "global_step": 3}']
    assert [o for o, _ in decode_metric_lines(lines, [0, 10, 20, 30])] == [0, 30]


# ------------------------------------------------------------------ events
def test_events_round_trip_flat_on_disk_and_old_lines(layout, caplog):
    ev = append_event(layout, "training_started", source="daemon", file="a.jsonl", pid=5, global_step=0)
    on_disk = json.loads(layout.events.read_text())
    assert on_disk == {"schema_version": 1, "ts": ev.ts, "source": "daemon", "event": "training_started",
                       "file": "a.jsonl", "pid": 5, "global_step": 0}
    with open(layout.events, "a") as fh:  # the queue's line before the state package, a torn one, a nameless one
        fh.write(json.dumps({"ts": 2.0, "at": "2026-01-01T00:00:00Z", "source": "queue", "event": "enqueued",
                             "file": "b.jsonl", "from": "inbox"}) + "\n")
        fh.write('{"ts": 3.0, "source": "da\n')
        fh.write(json.dumps({"ts": 4.0, "source": "daemon"}) + "\n")
    with caplog.at_level(logging.WARNING, logger="core.state.events"):
        got = read_events(layout.events)
    assert [(e.source, e.event) for e in got] == [("daemon", "training_started"), ("queue", "enqueued")]
    assert got[1].get("from") == "inbox" and got[1].to_json()["at"] == "2026-01-01T00:00:00Z"
    assert f"{layout.events}:3" in caplog.text and f"{layout.events}:4" in caplog.text and "event" in caplog.text
    assert [e.event for e in tail_events(layout.events, 3)] == ["enqueued"]  # the last 3 lines, 1 an event
    assert Event.model_validate(got[1].to_json()) == got[1]


def test_event_tail_follows_appends_and_replacement(layout):
    tail = EventTail(layout.events)
    assert tail.read_new() == ([], False, [])
    append_event(layout, "a", source="daemon")
    new, reset, _ = tail.read_new()
    assert [e.event for e in new] == ["a"] and reset
    with open(layout.events, "a") as fh:
        fh.write('{"ts": 1, "source": "daemon", "event": "half')  # no newline yet: not read
    assert tail.read_new()[0] == []
    with open(layout.events, "a") as fh:
        fh.write('"}\n')
    assert [e.event for e in tail.read_new()[0]] == ["half"]
    layout.events.unlink()
    append_event(layout, "b", source="watchdog")
    new, reset, _ = tail.read_new()
    assert reset and [e.event for e in new] == ["b"]


# ------------------------------------------------------------------ crash history, fault streak
def test_crash_history_round_trip_and_old_lines(layout, caplog):
    path = faults.crash_history_path(layout)
    crash = Crash(category="killed", action="system_retry", exit_code=-9, signal="SIGKILL", message="m",
                  file="a.jsonl", global_step=3, ts=1.0, blame="system", started_training=False)
    faults.append_crash(path, crash)
    with open(path, "a") as fh:  # a line from before blame existed, then a torn one
        fh.write(json.dumps({"category": "nan_loss", "action": "fail", "exit_code": 11, "signal": None,
                             "message": "nan", "file": "b.jsonl", "global_step": 4, "ts": 2.0}) + "\n")
        fh.write('{"category": "kil\n')
    with caplog.at_level(logging.WARNING, logger="core.state.base"):
        got = faults.read_crashes(path)
    assert got[0] == crash and got[1].blame == "file" and got[1].started_training is None and len(got) == 2
    assert f"{path}:3" in caplog.text


def test_fault_streak_round_trip_old_and_invalid(layout):
    path = faults.fault_streak_path(layout)
    assert faults.read_fault_streak(path) == FaultStreak()
    streak = FaultStreak(count=2, retry_at=5.0, faults=[StreakFault(ts=1.0, category="killed", message="m", file=None)])
    faults.write_fault_streak(path, streak)
    assert faults.read_fault_streak(path) == streak
    _write(path, {"count": 0, "retry_at": None, "faults": []})  # crash_detector's clear, before the state package
    assert faults.read_fault_streak(path) == FaultStreak()
    _write(path, {"count": 1, "retry_at": None, "faults": [{"ts": 1.0, "category": "killed"}]})
    with pytest.raises(StateError, match=rf"{path}: .*faults.0.message"):
        faults.read_fault_streak(path)


def test_fault_marker_fires_once(layout):
    assert claim_fault_marker(layout.status, "sleep", 4)
    assert not claim_fault_marker(layout.status, "sleep", 4)
    assert (layout.status / ".fault_fired_sleep").read_text() == "4"


def test_a_tree_written_by_these_modules_validates(layout):
    from core.state.registry import validate_tree

    write_heartbeat(layout, Heartbeat(pid=1, phase="train", global_step=2, ts=1.0))
    write_heartbeat(layout, Heartbeat(pid=2, phase="checkpoint", global_step=2, ts=1.0), rank=1)
    child_result.write_child_result(layout, ChildResult(pid=1, exit_code=ExitCode.NAN_LOSS, category="nan_loss",
                                                        message="nan", finished_at=1.0))
    write_trainer_state(layout.current_model / "checkpoint-2" / "training_state", TrainerState(global_step=2))
    write_control(layout, ControlState(desired="paused"))
    StatusWriter(layout.training_status, layout.metrics).update(state="training", global_step=2)
    append_metric(layout.metrics, Metric(type="train", global_step=2, loss=1.0))
    append_event(layout, "training_started", source="daemon", file="a.jsonl")
    faults.append_crash(faults.crash_history_path(layout), Crash(category="killed", action="retry", exit_code=-9,
                                                                 signal="SIGKILL", message="m"))
    faults.write_fault_streak(faults.fault_streak_path(layout), FaultStreak(count=1, retry_at=2.0))
    assert validate_tree(layout.base_dir) == []
    with open(layout.metrics, "a") as fh:
        fh.write('{"type": "train", "global_step": 3}\n')
    assert [p.split(":")[0] for p in validate_tree(layout.base_dir)] == ["status/metrics.jsonl"]
