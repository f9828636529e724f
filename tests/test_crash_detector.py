"""The crash detector's policy: who is blamed for an exit (system or file), the action, the system-fault streak."""
from __future__ import annotations

import json
import signal

from core.config import SafetyConfig
from core.state.faults import FaultStreak
from core.state.heartbeat import Heartbeat
from safety import crash_detector
from safety.crash_detector import ACTIONS, CATEGORIES, SYSTEM_RETRY, classify, decide, record


def test_every_category_has_a_policy_row():
    assert set(ACTIONS) == set(CATEGORIES)
    assert {blame for _, blame in ACTIONS.values()} == {"system", "file", "startup"}


def test_blame_before_and_after_the_first_training_step():
    table = {c: (decide(c, started_training=False), decide(c, started_training=True)) for c in CATEGORIES}
    assert table == {
        # before the first step                  after it
        "cuda_oom": ((SYSTEM_RETRY, "system"), ("shrink_batch_retry", "file")),
        "cpu_oom": ((SYSTEM_RETRY, "system"), ("shrink_batch_retry", "file")),
        "cuda_error": ((SYSTEM_RETRY, "system"), ("retry", "file")),
        "nan_loss": (("fail", "file"), ("fail", "file")),
        "disk_full": (("free_disk_and_pause", "system"), ("free_disk_and_pause", "system")),
        "data_error": (("fail", "file"), ("fail", "file")),
        "config_error": (("pause", "system"), ("pause", "system")),
        "import_error": (("pause", "system"), ("pause", "system")),
        "killed": ((SYSTEM_RETRY, "system"), (SYSTEM_RETRY, "system")),
        "segfault": ((SYSTEM_RETRY, "system"), ("retry", "file")),
        "stuck": ((SYSTEM_RETRY, "system"), ("retry", "file")),
        "unknown": ((SYSTEM_RETRY, "system"), ("retry", "file")),
    }


def test_signals_are_classified():
    assert classify(-signal.SIGKILL) == ("killed", "SIGKILL from outside Cadence (OOM killer or an operator)")
    beat = Heartbeat(pid=1, phase="train", global_step=5, ts=0.0, ram_pct=97.0)
    assert classify(-signal.SIGKILL, heartbeat=beat)[0] == "cpu_oom"
    assert classify(-signal.SIGSEGV) == ("segfault", "segmentation fault")
    assert classify(1, log_tail="ModuleNotFoundError: No module named 'torch'")[0] == "import_error"


def test_record_writes_blame_and_resolved_action(tmp_path):
    path = tmp_path / "crash_history.jsonl"
    a = record(path, -9, "killed", "SIGKILL", "a.jsonl", 0, started_training=False)
    b = record(path, 10, "data_error", "a.jsonl:3: invalid JSON", "a.jsonl", 0, started_training=False)
    c = record(path, -11, "segfault", "segmentation fault", "a.jsonl", 7, started_training=True)
    assert [(x.action, x.blame) for x in (a, b, c)] == [(SYSTEM_RETRY, "system"), ("fail", "file"), ("retry", "file")]
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["category"], r["action"], r["blame"], r["started_training"]) for r in rows] == [
        ("killed", SYSTEM_RETRY, "system", False), ("data_error", "fail", "file", False),
        ("segfault", "retry", "file", True)]


def test_fault_streak_backs_off_doubling_with_a_cap_and_clears(tmp_path):
    safety = SafetyConfig(system_fault_backoff_seconds=10, system_fault_backoff_max_seconds=25)
    path = tmp_path / "fault_streak.json"
    assert crash_detector.fault_streak(path) == FaultStreak(count=0, retry_at=None, faults=[])
    t = 1_000_000.0
    retry = [crash_detector.note_system_fault(path, safety, "killed", f"kill {i}", "a.jsonl", now=t).retry_at - t
             for i in range(4)]
    assert retry == [10, 20, 25, 25]
    streak = crash_detector.fault_streak(path)  # on disk: a restarted daemon goes on counting
    assert streak.count == 4 and [f.message for f in streak.faults] == ["kill 0", "kill 1", "kill 2", "kill 3"]
    crash_detector.clear_fault_streak(path)
    assert crash_detector.fault_streak(path) == FaultStreak(count=0, retry_at=None, faults=[])
