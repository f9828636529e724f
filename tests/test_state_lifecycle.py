"""The model-lifecycle and curriculum records of core/state/: round trip, the files written before the state package
still read, a torn or invalid file is a StateError naming the file and the field, a bad JSONL line is skipped with a
warning naming file:line, and every FILES entry names a real record model.

The "older file" fixtures are the shapes the code wrote before core/state/ existed (copied from what
management/, data_manager/, trainer/ and safety/ wrote then, without schema_version).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from core.config import Layout
from core.state import curriculum, deployment, ledger, lifecycle
from core.state.base import StateError, StateFile, StateRecord, read_record

LEGACY_DEPLOYMENT_STATE = {
    "targets": {"local": {
        "active": {"version": "v002_20261201_step30", "content_id": "c" * 64, "checkpoint": "checkpoint-30",
                   "path": "/srv/models/v002_20261201_step30", "deployed_at": 1764600000.5},
        "previous": {"version": "v001_20261201_step10", "content_id": "b" * 64, "checkpoint": "checkpoint-10",
                     "path": "/srv/models/v001_20261201_step10", "deployed_at": 1764590000.0}}},
    "in_progress": {"deploy_id": "0123456789ab", "version": "v003_20261201_step40", "content_id": "d" * 64,
                    "checkpoint": "checkpoint-40", "source": "/base/models/versions/v003_20261201_step40",
                    "started_at": 1764601000.0, "target": "local", "stage": "health", "targets_done": [],
                    "attempts": 1, "timings": {"local": {"copy": 0.12, "verify": 0.3, "load": 1.5, "server_load": None}},
                    "results": {}, "linked": {"local": True},
                    "baseline": {"version": "v002_20261201_step30", "content_id": "c" * 64}},
    "updated_at": 1764601002.25,
}

LEGACY_DEPLOYMENT_LINES = [
    {"ts": 1.0, "event": "started", "deploy_id": "d1", "version": "v1", "content_id": "c1", "checkpoint": "checkpoint-10",
     "targets": ["local", "edge"]},
    {"ts": 2.0, "event": "copied", "deploy_id": "d1", "version": "v1", "content_id": "c1", "checkpoint": "checkpoint-10",
     "target": "local", "seconds": 0.2},
    {"ts": 3.0, "event": "load_rejected", "deploy_id": "d1", "version": "v1", "content_id": "c1", "checkpoint": None,
     "target": "local", "status": 422, "code": "bad_manifest", "message": "no config.json", "still_serving": "v0"},
    {"ts": 4.0, "event": "health_failed", "deploy_id": "d1", "version": "v1", "content_id": "c1",
     "checkpoint": "checkpoint-10", "target": "local", "reason": "error rate 3/3 > 0.2", "probes": 3, "errors": 3,
     "median_latency_s": None},
    {"ts": 5.0, "event": "failed", "deploy_id": "d1", "version": "v1", "content_id": "c1", "checkpoint": "checkpoint-10",
     "targets": {"local": "rolled_back"}, "reason": "error rate 3/3 > 0.2"},
    {"ts": 6.0, "event": "converged", "target": "local", "version": "v0", "content_id": "c0", "status": 200,
     "served_before": None, "error": None},
    {"ts": 7.0, "event": "cleanup", "target": "local", "removed": [".staging-v1"], "kept": ["v0"]},
    {"ts": 8.0, "event": "promoted", "deploy_id": "d2", "version": "v2", "content_id": "c2", "checkpoint": "checkpoint-20",
     "target": "local", "previous": "v0", "timings": {"copy": 0.1, "verify": 0.2, "load": 1.0, "server_load": 0.8, "health": 2.0}},
    {"ts": 9.0, "event": "skipped", "version": "v2", "content_id": "c2", "reason": "this content was already deployed or tried"},
]

# management/model_comparison_engine.py before the paired rule: no rule, sets, baseline_scored or verdicts
LEGACY_LEDGER_MARGIN = {
    "format": 1, "primary_metric": "val_loss", "updated_at": "2026-11-30T10:00:00Z",
    "checkpoints": {
        "checkpoint-10": {"checkpoint": "checkpoint-10", "step": 10, "content_id": "a" * 64, "scored_at": "2026-11-30T09:59:00Z",
                          "training": {"files_done": 1, "final_loss": 1.5, "val_loss": None}, "status": "scored",
                          "error": None, "metrics": {"val_loss": 1.2, "val_rows": 20, "anchor_loss": None,
                                                     "seconds_per_token": 0.01, "accuracy:binary": 0.5, "accuracy_mean": 0.5},
                          "accuracy": {"binary": {"level": 1, "accuracy": 0.5, "correct": 10, "total": 20,
                                                  "scorer": "exact", "example": {"expected": "101", "answer": "100"}}},
                          "timings": {"load_s": 0.1, "loss_s": 0.5}, "score_seconds": 1.25},
        "checkpoint-20": {"checkpoint": "checkpoint-20", "step": 20, "content_id": None, "scored_at": "2026-11-30T10:00:00Z",
                          "training": {"files_done": 2, "final_loss": None, "val_loss": None}, "status": "failed",
                          "error": "RuntimeError: out of memory", "score_seconds": 0.5}},
    "ranking": ["checkpoint-10"],
    "champion": {"checkpoint": "checkpoint-10", "content_id": "a" * 64, "step": 10, "decided_at": "2026-11-30T10:00:01Z",
                 "reason": "no deployed baseline; val_loss 1.2", "baseline": None},
}

# ... and after it: per-set results, the deployed version's later scorings, verdicts, curriculum decisions
LEGACY_LEDGER_PAIRED = {
    "format": 1, "primary_metric": "val_loss", "rule": "paired", "updated_at": "2026-12-01T10:00:00Z",
    "checkpoints": {"checkpoint-30": {
        "checkpoint": "checkpoint-30", "step": 30, "content_id": "e" * 64, "scored_at": "2026-12-01T09:59:00Z",
        "training": {"files_done": 3, "final_loss": 0.9, "val_loss": 1.0}, "status": "scored", "error": None,
        "metrics": {"val_loss": 1.0, "val_rows": 20, "anchor_loss": 2.0, "seconds_per_token": None, "accuracy_mean": None},
        "accuracy": {}, "timings": {"load_s": 0.1, "loss_s": 0.5, "sets_s": 2.0}, "score_seconds": 3.0,
        "sets": {"ladder:binary:L1": {"kind": "ladder", "skill": "binary", "level": 1, "digest": "0123456789abcdef", "n": 3,
                                      "loss": [0.5, None, 0.7], "mean_loss": 0.6, "token_loss": 0.61, "nonfinite": 0,
                                      "exact": "101", "accuracy": 0.6666666666666666, "scorer": "binary",
                                      "example": {"expected": "101", "answer": "101"}},
                 "anchor:anchor": {"kind": "anchor", "skill": None, "level": None, "digest": "fedcba9876543210", "n": 2,
                                   "loss": [2.0, 2.0], "mean_loss": 2.0, "token_loss": 2.0, "nonfinite": 0, "exact": None,
                                   "accuracy": None, "scorer": None}},
        "baseline_scored": {"ladder:binary:L1": "2026-12-01T09:58:00Z"},
        "verdicts": [{"key": ["a" * 64, ["anchor:anchor"]], "baseline": "a" * 64, "baseline_checkpoint": "checkpoint-10",
                      "at": "2026-12-01T10:00:00Z", "paired": {"accepted": True, "reason": "better on ladder:binary:L1"},
                      "margin": {"accepted": False, "reason": "improvement +0.01 < margin 0.02"}}],
        "curriculum": {"binary": "1/3 evals at level 1"}}},
    "ranking": ["checkpoint-30"], "champion": None,
}

LEGACY_CURRICULUM = {
    "version": 1, "seq": 4, "threshold": 0.8, "window": 3, "updated_at": "2026-12-01T10:00:00+00:00",
    "skills": {"binary": {
        "level": 2, "entered_seq": 3, "entered_at": "2026-12-01T09:00:00+00:00",
        "history": [{"seq": s, "level": 1, "accuracy": 0.9, "step": 10 * s, "checkpoint": f"checkpoint-{10 * s}", "n": 20,
                     "at": "2026-12-01T09:00:00+00:00"} for s in (1, 2, 3)]
                   + [{"seq": 4, "level": 2, "accuracy": 0.1, "step": None, "checkpoint": None, "n": None,
                       "at": "2026-12-01T10:00:00+00:00"}],
        "promotions": [{"from": 1, "to": 2, "at": "2026-12-01T09:00:00+00:00", "step": 30, "mean": 0.9, "evals": [1, 2, 3]},
                       {"from": 2, "to": 2, "at": "2026-12-01T09:30:00+00:00", "step": None, "reason": "operator"}],
        "ladder": {"1": {"accuracy": 0.5, "step": 40, "checkpoint": "checkpoint-40", "at": "2026-12-01T10:00:00+00:00"}}}},
}

LEGACY_LADDER = {"format": 1, "rungs": {"binary/1": {"skill": "binary", "level": 1, "file": "binary/level_1.jsonl",
                                                     "sha256": "f" * 64, "items": 50, "seed": 2 ** 40 + 1,
                                                     "written_at": "2026-12-01T09:00:00+00:00"}}}

LEGACY_DATA_MANAGER = {"rotation_index": 3, "last_attempt_at": 1764600000.0, "last_generation_at": 1764600000.0,
                       "batches_generated": 2, "updated_at": "2026-12-01T10:00:00+00:00", "last_error": None,
                       "last_batch": {"skill": "binary", "level": 2, "seed": 42, "count": 120, "replayed": {"syllo": 10},
                                      "rehearsed": {"binary:1": 10}, "sized": {"examples_per_second": 4.2,
                                                                             "file_seconds": 30, "count": 100},
                                      "file": "dm_binary_L02_20261201T100000_42.jsonl", "at": "2026-12-01T10:00:00+00:00"}}

LEGACY_VERSION_METADATA = {
    "base_model": "models/base", "model_name": "cadence", "checkpoint": "checkpoint-30", "step": 30, "files_trained": 2,
    "files": ["a.jsonl", "b.jsonl"], "examples_trained": 64, "tokens_trained": 4096, "final_loss": 0.9, "val_loss": None,
    "hyperparameters": {"mode": "full", "learning_rate": 2e-5, "lr_schedule": "constant", "warmup_steps": 0,
                        "weight_decay": 0.0, "micro_batch_tokens": 2048, "gradient_accumulation_steps": 1, "epochs": 1,
                        "max_length": 512, "seed": 42},
    "training_time_s": 12.5, "config_hash": "0123456789abcdef", "trained_at": "2026-12-01T09:00:00Z",
    "consolidated_at": "2026-12-01T09:01:00Z", "content_id": "c" * 64, "file_digests": {"config.json": "blake3:ab"},
}

LEGACY_ADAPTER_METADATA = {
    "base_model": "/base/models/base", "model_name": "cadence", "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.05,
    "target_modules": ["q_proj", "v_proj"], "learning_rate": 1e-4, "epochs": 1, "global_step": 12,
    "training_examples": 48, "files_trained": 1, "final_loss": 1.1, "val_loss": None, "training_time_s": 3.5,
    "trained_at": "2026-12-01T09:00:00Z"}

LEGACY_MANIFEST = {"format": 1, "created_at": "2026-12-01T09:00:00Z", "global_step": 30,
                   "files": {"config.json": {"blake3": "ab" * 32, "size": 600},
                             "model.safetensors": {"sha256": "cd" * 32, "size": 1 << 20},
                             "training_state/trainer_state.json": {"blake3": "ef" * 32, "size": 300}}}

# model -> (older file content, where the pre-state-package code put it)
LEGACY_JSON = [
    (deployment.DeploymentState, LEGACY_DEPLOYMENT_STATE),
    (ledger.Ledger, LEGACY_LEDGER_MARGIN),
    (ledger.Ledger, LEGACY_LEDGER_PAIRED),
    (curriculum.CurriculumState, LEGACY_CURRICULUM),
    (curriculum.LadderIndex, LEGACY_LADDER),
    (curriculum.DataManagerState, LEGACY_DATA_MANAGER),
    (curriculum.DataManagerState, {"rotation_index": 0, "last_attempt_at": None, "last_generation_at": None,
                                   "batches_generated": 0, "updated_at": "2026-12-01T10:00:00+00:00",
                                   "last_error": {"message": "binary L1: quality: too few distinct prompts",
                                                  "at": "2026-12-01T10:00:00+00:00"}}),
    (lifecycle.ProtectedCheckpoints, {"deployed": ["checkpoint-10"], "champion": "checkpoint-30",
                                      "best": ["checkpoint-30", "checkpoint-10"], "newest": "checkpoint-40"}),
    (lifecycle.ProtectedCheckpoints, {"newest": "checkpoint-40"}),
    (lifecycle.VersionMetadata, LEGACY_VERSION_METADATA),
    (lifecycle.AdapterMetadata, LEGACY_ADAPTER_METADATA),
    (lifecycle.BackupInfo, {"source": "/base/models/current_model/checkpoint-30", "label": None, "created_at": 1764600000.1}),
    (lifecycle.ArchivedRun, {"reason": "operator started a new run", "archived_at": 1764600000.2}),
    (lifecycle.ModelManifest, LEGACY_MANIFEST),
]


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout.from_base(tmp_path)


@pytest.mark.parametrize("model,data", LEGACY_JSON, ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_files_written_before_the_state_package_read_and_keep_their_keys(tmp_path, model, data):
    path = tmp_path / "legacy.json"
    path.write_text(json.dumps(data, indent=2))
    record = read_record(model, path)
    assert record.schema_version == model.SCHEMA_VERSION
    assert {k: v for k, v in record.to_json().items() if k != "schema_version"} == data  # same keys, same values
    # written back and read again: the same record, now with its schema_version on disk
    from core.state.base import write_record

    write_record(path, record)
    on_disk = json.loads(path.read_text())
    assert on_disk["schema_version"] == model.SCHEMA_VERSION
    assert read_record(model, path) == record


def test_deployment_state_round_trip_through_the_layout(layout):
    assert deployment.read_deployment_state(layout) == deployment.DeploymentState()  # never deployed: empty, not None
    state = deployment.DeploymentState.model_validate(LEGACY_DEPLOYMENT_STATE)
    deployment.write_deployment_state(layout, state)
    again = deployment.read_deployment_state(layout)
    assert again == state and again.active("local").checkpoint == "checkpoint-30"
    assert again.in_progress.stage is deployment.Stage.health and again.in_progress.timings["local"]["server_load"] is None
    assert again.active("edge") is None and again.active(None) is None
    assert layout.deployment_state == layout.base_dir / "status" / "deployment_state.json"


def test_deployment_events_read_exactly_with_a_closed_event_list(layout, caplog):
    layout.status.mkdir(parents=True)
    lines = [json.dumps(line) for line in LEGACY_DEPLOYMENT_LINES]
    lines.insert(3, '{"ts": 3.5, "event": "deployed", "version": "v9"}')  # not an event the orchestrator writes
    lines.append('{"ts": 10.0, "event": "promo')  # torn by a crash mid-append
    layout.deployments.write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="core.state.base"):
        events = list(deployment.deployment_events(layout))
    assert [e.event for e in events] == [deployment.DeployEvent(line["event"]) for line in LEGACY_DEPLOYMENT_LINES]
    assert events[4].targets == {"local": "rolled_back"} and events[0].targets == ["local", "edge"]
    warned = [r.getMessage() for r in caplog.records]
    assert any(f"{layout.deployments}:4" in m and "event" in m for m in warned), warned
    assert any(f"{layout.deployments}:11" in m for m in warned), warned
    # the tail reader sees the same records from the end of the file
    caplog.clear()
    tail = deployment.recent_deployment_events(layout, 3)
    assert [e.ts for e in tail] == [8.0, 9.0]  # the last three lines: promoted, skipped and the torn one
    assert any("line 1 from the end" in r.getMessage() for r in caplog.records)


def test_deployment_event_append_round_trip_and_refuses_unknown_fields(layout):
    event = deployment.DeploymentEvent(ts=1.5, event="promoted", deploy_id="d", version="v", content_id="c",
                                       checkpoint="checkpoint-1", target="local", previous=None)
    deployment.append_deployment_event(layout, event)
    line = json.loads(layout.deployments.read_text())
    assert line == {"schema_version": 1, "ts": 1.5, "event": "promoted", "deploy_id": "d", "version": "v",
                    "content_id": "c", "checkpoint": "checkpoint-1", "target": "local", "previous": None}
    assert list(deployment.deployment_events(layout)) == [event]
    with pytest.raises(ValueError, match="colour"):
        deployment.DeploymentEvent(ts=1.0, event="started", colour="blue")
    with pytest.raises(ValueError, match="event"):
        deployment.DeploymentEvent(ts=1.0, event="success")


def test_ledger_round_trip_keeps_absent_keys_absent(layout):
    assert ledger.read_ledger(layout) is None
    record = ledger.Ledger.model_validate(LEGACY_LEDGER_PAIRED)
    ledger.write_ledger(layout, record)
    on_disk = json.loads(layout.comparisons.read_text())
    assert "verdicts" not in on_disk["checkpoints"]["checkpoint-30"]["sets"]["anchor:anchor"]
    assert "example" not in on_disk["checkpoints"]["checkpoint-30"]["sets"]["anchor:anchor"]
    assert on_disk["champion"] is None  # a decision ("no champion"), kept as null
    again = ledger.read_ledger(layout)
    entry = again.checkpoints["checkpoint-30"]
    assert entry.status is ledger.ScoreStatus.scored and entry.metric("val_loss") == 1.0 and entry.metric("seconds_per_token") is None
    assert entry.verdicts[0].paired.accepted and not entry.verdicts[0].margin.accepted
    assert entry.sets["ladder:binary:L1"].loss == [0.5, None, 0.7]


@pytest.mark.parametrize("model,data,field", [
    (deployment.DeploymentState, {"targets": {"local": {"active": {"version": "v1"}}}}, "targets.local.active.content_id"),
    (deployment.DeploymentState, dict(LEGACY_DEPLOYMENT_STATE, in_progress=dict(LEGACY_DEPLOYMENT_STATE["in_progress"],
                                                                                stage="teleport")), "in_progress.stage"),
    (ledger.Ledger, {"checkpoints": {"checkpoint-1": {"checkpoint": "checkpoint-1", "step": "one", "status": "scored"}}},
     "checkpoints.checkpoint-1.step"),
    (ledger.Ledger, {"checkpoints": [{"checkpoint": "checkpoint-1"}]}, "checkpoints"),  # another container: refused
    (ledger.Ledger, dict(LEGACY_LEDGER_MARGIN, results={}), "results"),
    (curriculum.CurriculumState, {"skills": {"binary": {"level": 2, "history": [{"seq": 1, "level": 1}]}}},
     "skills.binary.history.0.accuracy"),
    (curriculum.LadderIndex, {"rungs": {"binary/1": {"skill": "binary", "level": 1}}}, "rungs.binary/1.sha256"),
    (curriculum.DataManagerState, {"rotation_index": "next"}, "rotation_index"),
    (lifecycle.ProtectedCheckpoints, {"deployed": "checkpoint-10"}, "deployed"),
    (lifecycle.BackupInfo, {"source": "/x"}, "created_at"),
    (lifecycle.VersionMetadata, dict(LEGACY_VERSION_METADATA, step="thirty"), "step"),
    (lifecycle.AdapterMetadata, {k: v for k, v in LEGACY_ADAPTER_METADATA.items() if k != "lora_r"}, "lora_r"),
    (lifecycle.ArchivedRun, {"reason": "x"}, "archived_at"),
    (lifecycle.ModelManifest, {"format": 1, "files": {"config.json": {"blake3": "ab"}}}, "files.config.json.size"),
])
def test_invalid_file_is_a_state_error_naming_file_and_field(tmp_path, model, data, field):
    path = tmp_path / "record.json"
    path.write_text(json.dumps(data))
    with pytest.raises(StateError) as err:
        read_record(model, path)
    assert str(path) in str(err.value) and field in str(err.value)


@pytest.mark.parametrize("model", [deployment.DeploymentState, ledger.Ledger, curriculum.CurriculumState,
                                   curriculum.LadderIndex, curriculum.DataManagerState, lifecycle.ProtectedCheckpoints])
def test_torn_file_is_a_state_error_naming_the_file(tmp_path, model):
    path = tmp_path / "torn.json"
    path.write_text('{"checkpoints": {"checkpoint-1": {"chec')
    with pytest.raises(StateError, match=f"{path}: not JSON"):
        read_record(model, path)


def test_a_newer_schema_is_refused_not_guessed(tmp_path):
    path = tmp_path / "comparisons.json"
    path.write_text(json.dumps(dict(LEGACY_LEDGER_MARGIN, schema_version=2)))
    with pytest.raises(StateError, match="schema_version 2 is newer"):
        read_record(ledger.Ledger, path)


def test_curriculum_promotion_keeps_its_from_key(tmp_path):
    path = tmp_path / "curriculum.json"
    state = curriculum.CurriculumState.model_validate(LEGACY_CURRICULUM)
    assert state.skills["binary"].promotions[0].from_level == 1
    curriculum.write_curriculum(path, state)
    on_disk = json.loads(path.read_text())
    assert on_disk["skills"]["binary"]["promotions"][0]["from"] == 1 and "from_level" not in path.read_text()
    assert curriculum.read_curriculum(path) == state


def test_the_owners_write_what_the_models_read(make_config):
    """Curriculum, ladder and data-manager state written by their owners in data_manager/ validate against the models
    (and the rung files, whose bytes the ladder fixes, validate line by line)."""
    from data_manager.curriculum_manager import Curriculum
    from data_manager.ladder import Ladder

    cfg = make_config()
    cur = Curriculum.from_config(cfg)
    for _ in range(3):
        cur.record_eval("binary", 1, 0.9, step=5, checkpoint="checkpoint-5", n=20)
    cur.record_ladder("binary", {1: 0.4}, step=6)
    cur.set_level("binary", 3)
    state = curriculum.read_curriculum(cfg.layout.curriculum)
    assert state.skills["binary"].level == 3 and [p.to for p in state.skills["binary"].promotions] == [2, 3]
    items = [{"user_prompt": f"q{i}", "assistant_response": "a", "metadata": {"skill": "binary", "level": 1, "index": i}}
             for i in range(3)]
    rung = Ladder(cfg.layout.evals).rung("binary", 1, lambda: items, seed=7)
    index = curriculum.read_ladder_index(cfg.layout.ladder_index)
    assert index.rungs["binary/1"].sha256 == rung.sha256 and index.rungs["binary/1"].seed == 7
    rows = list(read_records_strict(curriculum.RungItem, rung.path))
    assert [r.metadata.index for r in rows] == [0, 1, 2]  # the skill's own metadata kept


def read_records_strict(model, path: Path):
    from core.state.base import read_records

    return read_records(model, path, strict=True)


def test_protected_and_backup_and_archive_round_trip(tmp_path):
    root = tmp_path / "current_model"
    assert lifecycle.read_protected(root) is None
    lifecycle.write_protected(root, lifecycle.ProtectedCheckpoints(champion="checkpoint-3", best=["checkpoint-3"]))
    assert json.loads((root / "protected.json").read_text()) == {"schema_version": 1, "champion": "checkpoint-3",
                                                                 "best": ["checkpoint-3"]}
    assert lifecycle.read_protected(root).names() == {"checkpoint-3"}
    backup = tmp_path / "backup"
    lifecycle.write_backup_info(backup, lifecycle.BackupInfo(source="/x", label="pre", created_at=5.0))
    assert lifecycle.read_backup_info(backup) == lifecycle.BackupInfo(source="/x", label="pre", created_at=5.0)
    run = tmp_path / "run"
    lifecycle.write_archived_run(run, lifecycle.ArchivedRun(reason="new run", archived_at=1.0))
    assert lifecycle.read_archived_run(run).reason == "new run"


def test_a_torn_protected_file_stops_the_trainers_pruning_rather_than_guessing(tmp_path, caplog):
    from trainer.checkpoint import prune_checkpoints

    root = tmp_path / "current_model"
    for step in (1, 2, 3):
        (root / f"checkpoint-{step}").mkdir(parents=True)
        (root / f"checkpoint-{step}" / "manifest.json").write_text(json.dumps({"format": 1, "files": {}}))
    (root / "protected.json").write_text('{"champion": "checkpoint-1", "be')
    with caplog.at_level(logging.ERROR, logger="trainer.checkpoint"):
        assert prune_checkpoints(root, keep=1) == []
    assert all((root / f"checkpoint-{s}").is_dir() for s in (1, 2, 3))
    assert any("protected.json" in r.getMessage() for r in caplog.records)


def test_frozen_validation_rows_are_chat_rows_without_schema_version(layout, caplog):
    rows = [lifecycle.ValidationRow(messages=[lifecycle.ChatMessage(role="user", content="1+1?"),
                                              lifecycle.ChatMessage(role="assistant", content="10")])]
    lifecycle.freeze_validation_rows(layout, rows)
    assert json.loads(layout.comparison_validation.read_text()) == {
        "messages": [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "10"}]}
    with open(layout.comparison_validation, "a") as fh:
        fh.write('{"messages": [{"role": "user"}]}\n')
    with caplog.at_level(logging.WARNING, logger="core.state.base"):
        assert lifecycle.read_validation_rows(layout) == rows
    assert any(f"{layout.comparison_validation}:2" in r.getMessage() and "content" in r.getMessage()
               for r in caplog.records)


def test_every_files_entry_names_a_record_model_and_owns_its_layout_path():
    from core.state.registry import owner_of

    entries = deployment.FILES + ledger.FILES + curriculum.FILES + lifecycle.FILES
    assert all(isinstance(f, StateFile) and issubclass(f.model, StateRecord) for f in entries)
    assert all(f.kind in ("json", "jsonl") for f in entries)
    layout = Layout.from_base(Path("/base"))
    expected = {layout.deployment_state: deployment.DeploymentState, layout.deployments: deployment.DeploymentEvent,
                layout.comparisons: ledger.Ledger, layout.curriculum: curriculum.CurriculumState,
                layout.ladder_index: curriculum.LadderIndex, layout.data_manager_state: curriculum.DataManagerState,
                layout.protected: lifecycle.ProtectedCheckpoints, layout.comparison_validation: lifecycle.ValidationRow,
                layout.evals / "binary" / "level_3.jsonl": curriculum.RungItem,
                layout.versions / "v001_20261201_step10" / "training_metadata.json": lifecycle.VersionMetadata,
                layout.versions / "v001_20261201_step10" / "manifest.json": lifecycle.ModelManifest,
                layout.versions / "v001_20261201_step10" / "adapter" / "training_metadata.json": lifecycle.AdapterMetadata,
                layout.current_model / "checkpoint-10" / "adapter" / "training_metadata.json": lifecycle.AdapterMetadata,
                layout.current_model / "checkpoint-10" / "manifest.json": lifecycle.ModelManifest,
                layout.backups / "20261201T000000Z_checkpoint-10" / "backup.json": lifecycle.BackupInfo,
                layout.previous_runs / "run_20261201_000000" / "ARCHIVED.json": lifecycle.ArchivedRun,
                layout.previous_runs / "run_20261201_000000" / "protected.json": lifecycle.ProtectedCheckpoints}
    for path, model in expected.items():
        rel = path.relative_to(layout.base_dir).as_posix()
        spec = owner_of(rel, entries)
        assert spec is not None and spec.model is model, (rel, spec)


def test_a_demo_run_validates_against_the_models(tmp_path):
    """monitoring/demo.py writes a ledger, deployment state and history, curriculum and queue files: each of the
    records this module owns validates (the queue's and the process records are other modules')."""
    from core.config import from_dict
    from core.state.registry import owner_of
    from monitoring.demo import write_run

    cfg = from_dict({"paths": {"base_dir": str(tmp_path)}}, tmp_path)
    write_run(cfg, steps=1200)
    mine = deployment.FILES + ledger.FILES + curriculum.FILES + lifecycle.FILES
    checked = []
    for path in sorted(tmp_path.rglob("*.json*")):
        rel = path.relative_to(tmp_path).as_posix()
        spec = owner_of(rel, mine)
        if spec is None:
            continue
        if spec.kind == "jsonl":
            list(read_records_strict(spec.model, path))
        else:
            read_record(spec.model, path)
        checked.append(rel)
    assert {"status/comparisons.json", "status/deployment_state.json", "status/deployments.jsonl",
            "status/curriculum.json"} <= set(checked), checked


def test_the_monitor_reads_one_shape_and_reports_another_instead_of_guessing(tmp_path):
    """A ledger in some other container and promotion-like words in the history are not guessed at: the ledger is
    reported as invalid (file and field named, no 500), and only `promoted` counts as a promotion."""
    from core.config import from_dict
    from monitoring import sources

    cfg = from_dict({"paths": {"base_dir": str(tmp_path)}}, tmp_path)
    layout = cfg.layout.ensure()
    layout.comparisons.write_text(json.dumps({"results": [{"name": "checkpoint-10", "val_loss": 1.0}]}))
    ranks = sources.rankings(cfg)
    assert ranks["records"] == [] and ranks["champion"] is None and not ranks["present"]
    assert str(layout.comparisons) in ranks["error"] and "results" in ranks["error"]
    lines = [{"ts": 1.0, "event": "deployed", "checkpoint": "checkpoint-10"},
             {"ts": 2.0, "outcome": "success", "event": "loaded", "checkpoint": "checkpoint-20"},
             {"ts": 3.0, "event": "promoted", "checkpoint": "checkpoint-30", "version": "v1"}]
    layout.deployments.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = sources.deployments(cfg)
    assert [p["checkpoint"] for p in out["promotions"]] == ["checkpoint-30"] and out["deployed"] == "checkpoint-30"
    assert [d["event"] for d in out["deployments"]] == ["promoted", "loaded"]  # the unknown event was skipped
    layout.deployment_state.write_text('{"targets": {"local": {"active": {"version": "v1"')
    out = sources.deployments(cfg)
    assert str(layout.deployment_state) in out["error"] and out["targets"] is None
    assert out["deployed"] == "checkpoint-30"  # the history still answers
