"""Fault injection with real processes and real signals: the daemon, its training child, the watchdog."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.atomic_io import read_json
from core.config import load_config
from core.control import read_control, request
from core.procs import live_pid, pid_alive

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def demo_rows(n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, 15), rng.randint(0, 15)
        rows.append({"messages": [{"role": "user", "content": f"{a:b} + {b:b} ="}, {"role": "assistant", "content": f"{a + b:b}"}]})
    return rows


class Cadence:
    """A base_dir with config.json, a daemon process and helpers to watch it."""

    def __init__(self, base: Path, model_dir: Path, extra: dict | None = None, fault: str | None = None):
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        self.config = base / "config.json"
        cfg = {
            "paths": {"base_dir": "."},
            "model": {"base_model": str(model_dir), "max_length": 128},
            "training": {"learning_rate": 1e-3, "warmup_steps": 2, "micro_batch_tokens": 128, "save_steps": 3,
                         "eval_steps": 0, "eval_split_fraction": 0.0},
            "daemon": {"poll_interval": 1, "settle_seconds": 0.2, "loop_interval": 0.2, "shutdown_timeout": 30},
            "safety": {"min_free_disk_gb": 0, "warn_free_disk_gb": 0, "watchdog_interval": 0.5,
                       "stuck_timeout": 8, "stuck_timeout_eval": 8, "stuck_timeout_checkpoint": 8,
                       "stuck_timeout_load": 300},
            "queue": {"retry_backoff_seconds": 0},
        }
        cfg["safety"]["system_fault_backoff_seconds"] = 0.5
        for dotted, value in (extra or {}).items():
            node = cfg
            *head, last = dotted.split(".")
            for k in head:
                node = node.setdefault(k, {})
            node[last] = value
        self.write_config(cfg)
        self.cfg = load_config(self.config)
        self.layout = self.cfg.layout.ensure()
        self.env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if fault:
            self.env["CADENCE_FAULT_INJECT"] = fault
        self.procs: list[subprocess.Popen] = []

    def write_config(self, data: dict) -> None:
        self.config_data = data
        self.config.write_text(json.dumps(data))

    def start(self, script: str = "core/training_daemon.py") -> subprocess.Popen:
        log = open(self.base / f"{Path(script).stem}.out", "ab")
        proc = subprocess.Popen([sys.executable, str(REPO / script), "--config", str(self.config)], cwd=REPO,
                                stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.procs.append(proc)
        return proc

    def drop(self, name: str, rows: list[dict]) -> None:
        tmp = self.layout.inbox / f".{name}.part"
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.rename(tmp, self.layout.inbox / name)

    def files(self, state: str) -> list[str]:
        # a move renames the data file first and writes its sidecar next: a file counts once its sidecar is there
        d = self.layout.queue_dir(state)
        return sorted(p.name for p in d.glob("*.jsonl") if (d / p.name.replace(".jsonl", ".meta.json")).exists())

    def meta(self, state: str, name: str) -> dict:
        return read_json(self.layout.queue_dir(state) / name.replace(".jsonl", ".meta.json"), {})

    def events(self, kind: str | None = None) -> list[dict]:
        if not self.layout.events.exists():
            return []
        evs = [json.loads(l) for l in self.layout.events.read_text().splitlines() if l.strip()]
        return [e for e in evs if kind is None or e.get("event") == kind]

    def heartbeat(self) -> dict:
        return read_json(self.layout.status / "heartbeat.json", {}) or {}

    def train_metrics(self) -> list[dict]:
        if not self.layout.metrics.exists():
            return []
        return [m for m in (json.loads(l) for l in self.layout.metrics.read_text().splitlines() if l.strip())
                if m.get("type") == "train"]

    def wait(self, predicate, timeout: float = 120, what: str = "condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in [*self.layout.logs.glob("*.log"), *self.base.glob("*.out")])
        raise AssertionError(f"timed out waiting for {what}\nevents: {self.events()[-15:]}\n{logs}")

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
        for name in ("trainer", "daemon"):
            pid = live_pid(self.layout.pid_file(name))
            if pid:
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cadence(tmp_path, micro_model_dir):
    made = []

    def make(**kw):
        c = Cadence(tmp_path / f"c{len(made)}", micro_model_dir, **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def assert_monotonic_steps(c: Cadence) -> list[int]:
    steps = [m["global_step"] for m in c.train_metrics()]
    assert steps == list(range(1, len(steps) + 1)), steps
    return steps


def test_kill9_child_repeatedly_over_three_files(cadence):
    c = cadence(fault="slow:0.05")
    names = ["one.jsonl", "two.jsonl", "three.jsonl"]
    for i, name in enumerate(names):
        c.drop(name, demo_rows(120, i))
    c.start()
    rng = random.Random(0)
    kills = 0
    last_killed_step = -1
    while kills < 4 and len(c.files("recently_completed")) < 3:
        # wait until the child has checkpointed past its start and run a few more steps, then SIGKILL it
        def ready():
            hb, pid = c.heartbeat(), live_pid(c.layout.pid_file("trainer"))
            step = hb.get("global_step") or 0
            return pid if pid and hb.get("pid") == pid and step >= last_killed_step + 4 + rng.randint(0, 3) else None
        try:
            pid = c.wait(ready, 60, "a training child mid-file")
        except AssertionError:
            break
        last_killed_step = c.heartbeat().get("global_step")
        os.kill(pid, signal.SIGKILL)
        kills += 1
        c.wait(lambda: not pid_alive(pid), 10)
    # generous: the box these tests share runs at a load of ~14 on 2 cores
    c.wait(lambda: len(c.files("recently_completed")) == 3, 480, "all three files completed")
    assert kills >= 3
    assert c.files("processing") == [] and c.files("failed") == []
    per_file = [c.meta("recently_completed", n)["result"] for n in names]
    assert all(r["steps"] == r["total_steps"] for r in per_file)
    steps = assert_monotonic_steps(c)
    assert steps[-1] == sum(r["total_steps"] for r in per_file)
    # each file's sidecar names its first and last global step, across every kill and resume
    by_file = {}
    for m in c.train_metrics():
        by_file.setdefault(m["file"], []).append(m["global_step"])
    assert [(c.meta("recently_completed", n)["global_step_start"], c.meta("recently_completed", n)["global_step_end"])
            for n in names] == [(by_file[n][0], by_file[n][-1]) for n in names]
    crashes = [json.loads(l) for l in (c.layout.status / "crash_history.jsonl").read_text().splitlines()]
    assert len(crashes) == kills and {x["category"] for x in crashes} == {"killed"}


def test_watchdog_restarts_a_killed_daemon_and_training_resumes(cadence):
    c = cadence(fault="slow:0.1")
    c.drop("data.jsonl", demo_rows(150, 1))
    c.start("safety/daemon_watchdog.py")
    first = c.wait(lambda: live_pid(c.layout.pid_file("daemon")), 30, "daemon started by the watchdog")
    c.wait(lambda: (c.heartbeat().get("global_step") or 0) >= 4, 60, "training under way")
    trainer = live_pid(c.layout.pid_file("trainer"))
    os.kill(first, signal.SIGKILL)
    killed_at = time.time()
    second = c.wait(lambda: (p := live_pid(c.layout.pid_file("daemon"))) and p != first and p, 30, "daemon restarted")
    restarted_in = time.time() - killed_at
    c.wait(lambda: trainer is None or not pid_alive(trainer), 30, "orphaned trainer gone")
    c.wait(lambda: c.files("recently_completed") == ["data.jsonl"], 120, "file completed after the restart")
    assert second != first and restarted_in < 30
    assert c.events("daemon_restarted")
    assert_monotonic_steps(c)


def test_pause_resume_stop_and_skip(cadence):
    c = cadence(fault="slow:0.1")
    c.drop("a.jsonl", demo_rows(150, 1))
    c.drop("b.jsonl", demo_rows(150, 2))
    daemon = c.start()
    c.wait(lambda: (c.heartbeat().get("global_step") or 0) >= 3, 60, "training")
    trainer = live_pid(c.layout.pid_file("trainer"))
    request(c.layout, "pause")
    c.wait(lambda: c.heartbeat().get("phase") == "paused", 30, "paused")
    paused_step = read_json(c.layout.training_status)["global_step"]
    time.sleep(1.0)
    assert read_json(c.layout.training_status)["global_step"] == paused_step  # really paused
    assert c.files("recently_completed") == []
    request(c.layout, "resume")
    c.wait(lambda: (c.heartbeat().get("global_step") or 0) > paused_step + 1, 30, "resumed")
    assert live_pid(c.layout.pid_file("trainer")) == trainer  # same file, same process, model kept

    request(c.layout, "stop")
    c.wait(lambda: daemon.poll() is not None, 60, "daemon exit after stop")
    current = c.files("normal")
    assert "a.jsonl" in current or "b.jsonl" in current
    assert c.files("recently_completed") in ([], ["a.jsonl"], ["b.jsonl"])
    stopped = [n for n in ("a.jsonl", "b.jsonl") if c.meta("normal", n).get("last_interruption")]
    assert stopped, "the stopped file is back in its queue with its progress"
    m = c.meta("normal", stopped[0])
    assert m["progress"]["global_step"] > 0 and m["state"] == "normal" and not m.get("finished_at")

    request(c.layout, "resume")
    c.start()
    c.wait(lambda: live_pid(c.layout.pid_file("trainer")) and (c.heartbeat().get("global_step") or 0) > m["progress"]["global_step"], 60)
    request(c.layout, "skip", reason="bad idea")
    c.wait(lambda: c.files("failed"), 60, "skipped file set aside")
    skipped = c.files("failed")[0]
    assert "bad idea" in json.dumps(c.meta("failed", skipped)["errors"])
    c.wait(lambda: len(c.files("recently_completed")) == 1, 120, "the other file completes")
    assert_monotonic_steps(c)


def test_stuck_child_is_killed_with_stacks_and_retried(cadence):
    c = cadence(fault="sleep:4")
    c.drop("x.jsonl", demo_rows(100, 3))
    c.start()
    c.wait(lambda: c.events("stuck_child_killed"), 60, "stuck child killed")
    c.wait(lambda: c.files("recently_completed") == ["x.jsonl"], 120, "file completed on retry")
    log = (c.layout.logs / "trainer.log").read_text()
    assert "thread 0x" in log.lower() and "most recent call first" in log  # every thread's stack was dumped
    crashes = [json.loads(l) for l in (c.layout.status / "crash_history.jsonl").read_text().splitlines()]
    assert crashes[0]["category"] == "stuck"
    # Retried: a second child trained it (whether the killed attempt counts toward max_attempts depends on whether
    # it checkpointed progress before the hang, which is timing; the retry itself is not).
    starts = [e for e in c.events("training_started") if e.get("file") == "x.jsonl"]
    assert len(starts) >= 2, starts


def test_injected_oom_halves_micro_batch_and_file_completes(cadence):
    c = cadence(fault="oom:2", extra={"training.micro_batch_tokens": 512})
    c.drop("x.jsonl", demo_rows(100, 4))
    c.start()
    c.wait(lambda: c.files("recently_completed") == ["x.jsonl"], 120, "file completed after OOM")
    meta = c.meta("recently_completed", "x.jsonl")
    assert "training.micro_batch_tokens=256" in meta["overrides"]
    assert "training.gradient_accumulation_steps=2" in meta["overrides"]
    crash = json.loads((c.layout.status / "crash_history.jsonl").read_text().splitlines()[0])
    assert crash["category"] == "cuda_oom" and crash["action"] == "shrink_batch_retry"
    assert_monotonic_steps(c)


def test_enospc_at_checkpoint_pauses_with_alert_and_previous_checkpoint_loads(cadence):
    c = cadence(fault="enospc:6")
    c.drop("x.jsonl", demo_rows(150, 5))
    c.start()
    c.wait(lambda: c.events("alert"), 90, "disk-full alert")
    assert read_control(c.layout).desired == "paused"
    ckpts = sorted(p.name for p in c.layout.current_model.iterdir() if p.name.startswith(("checkpoint-", ".tmp")))
    assert ckpts == ["checkpoint-3"], ckpts  # nothing partial, nothing at step 6
    assert c.files("normal") == ["x.jsonl"]
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(c.layout.current_model / "checkpoint-3")
    request(c.layout, "resume")
    c.wait(lambda: c.files("recently_completed") == ["x.jsonl"], 120, "completes after resume")


def test_critical_change_refused_noncritical_applies_at_next_file(cadence):
    c = cadence()
    c.drop("first.jsonl", demo_rows(40, 6))
    c.start()
    c.wait(lambda: c.files("recently_completed") == ["first.jsonl"], 90)
    data = json.loads(json.dumps(c.config_data))
    data["model"]["max_length"] = 64
    data["training"]["micro_batch_tokens"] = 128
    c.write_config(data)
    c.drop("second.jsonl", demo_rows(40, 7))
    c.wait(lambda: c.events("blocked"), 30, "critical change refused")
    assert "model.max_length" in c.events("blocked")[-1]["reason"]
    time.sleep(1.5)
    assert c.files("normal") == ["second.jsonl"]  # nothing trained under a refused config
    data["model"]["max_length"] = 128
    data["training"]["learning_rate"] = 5e-4
    c.write_config(data)
    c.wait(lambda: c.files("recently_completed") == ["first.jsonl", "second.jsonl"], 90)
    lrs = {m["file"]: m["lr"] for m in c.train_metrics()}
    assert lrs["second.jsonl"] == pytest.approx(5e-4) and lrs["first.jsonl"] == pytest.approx(1e-3)


def test_requests_made_while_daemon_is_down_apply_at_start(cadence):
    c = cadence()
    request(c.layout, "pause", reason="maintenance")
    c.drop("x.jsonl", demo_rows(30, 8))
    c.start()
    c.wait(lambda: read_json(c.layout.training_status, {}).get("state") == "paused", 30)
    time.sleep(1.5)
    assert c.files("normal") == ["x.jsonl"] and live_pid(c.layout.pid_file("trainer")) is None
    out = subprocess.run([sys.executable, "core/training_controller.py", "status", "--json", "--config", str(c.config)],
                         cwd=REPO, capture_output=True, text=True, env=c.env)
    status = json.loads(out.stdout)
    assert status["state"] == "paused" and status["desired"] == "paused" and status["daemon_pid"]
    request(c.layout, "resume")
    c.wait(lambda: c.files("recently_completed") == ["x.jsonl"], 90)


def test_second_daemon_refused_by_lock(cadence):
    c = cadence()
    first = c.start()
    c.wait(lambda: live_pid(c.layout.pid_file("daemon")), 30)
    second = c.start()
    assert second.wait(30) == 3
    assert first.poll() is None


def test_standard_validation_rejects_before_training_and_daemon_goes_on(cadence):
    c = cadence()
    long_rows = [{"messages": [{"role": "user", "content": "cat " * 300}, {"role": "assistant", "content": "dog"}]}] * 30
    c.drop("long.jsonl", long_rows)
    c.start()
    c.wait(lambda: c.files("rejected") == ["long.jsonl"], 90, "STANDARD rejection")
    reason = read_json(c.layout.queue_dir("rejected") / "long.reason.json")
    assert reason["level"] == "standard"
    c.wait(lambda: c.events("rejected_before_training"), 30, "the daemon saw the rejection")
    c.drop("good.jsonl", demo_rows(30, 9))
    c.wait(lambda: c.files("recently_completed") == ["good.jsonl"], 90, "the next good file trains")
    assert not (c.layout.current_model / "checkpoint-0").exists()


def kill_in_startup(c: Cadence, last_pid: int | None) -> int:
    """SIGKILL the next trainer while it is still starting up (heartbeat phase load, no training step begun)."""
    def starting():
        hb, pid = c.heartbeat(), live_pid(c.layout.pid_file("trainer"))
        return pid if pid and pid != last_pid and hb.get("pid") == pid and hb.get("phase") == "load" else None
    pid = c.wait(starting, 90, "a trainer in start-up")
    os.kill(pid, signal.SIGKILL)
    c.wait(lambda: not pid_alive(pid), 10)
    return pid


def test_kills_during_startup_pause_the_system_and_keep_files_queued(cadence):
    c = cadence(fault="startup:3", extra={"safety.crash_loop_faults": 3, "queue.max_attempts": 3})
    names = ["one.jsonl", "two.jsonl", "three.jsonl"]
    for i, name in enumerate(names):
        c.drop(name, demo_rows(24, 20 + i))
    c.start()
    pid = None
    for _ in range(3):
        pid = kill_in_startup(c, pid)
    c.wait(lambda: c.events("alert"), 30, "crash-loop alert")
    control = read_control(c.layout)
    assert control.desired == "paused" and control.reason.startswith("ALERT crash loop: 3 system faults in a row (killed)")
    assert "SIGKILL from outside Cadence" in control.reason
    (alert,) = c.events("alert")
    assert alert["kind"] == "crash_loop" and alert["cause"] == "killed" and len(alert["faults"]) == 3
    faults = c.events("system_fault")
    assert [f["faults_in_a_row"] for f in faults] == [1, 2, 3] and {f["category"] for f in faults} == {"killed"}
    crashes = [json.loads(l) for l in (c.layout.status / "crash_history.jsonl").read_text().splitlines()]
    assert [(x["category"], x["action"], x["blame"], x["started_training"]) for x in crashes] == \
        [("killed", "system_retry", "system", False)] * 3
    # nothing blamed on the data: every file still queued with its attempts untouched, nothing failed
    c.wait(lambda: read_json(c.layout.training_status, {}).get("state") == "paused", 30, "paused status")
    assert c.files("normal") == sorted(names) and c.files("failed") == [] and c.files("processing") == []
    assert [c.meta("normal", n)["attempts"] for n in names] == [0, 0, 0]
    assert c.meta("normal", "one.jsonl")["interruptions"] == 3  # the file the kills landed on
    time.sleep(1.5)
    assert live_pid(c.layout.pid_file("trainer")) is None  # paused: no trainer is started again
    # the operator sees why, in the controller and in the monitor
    out = subprocess.run([sys.executable, "core/training_controller.py", "status", "--config", str(c.config)],
                         cwd=REPO, capture_output=True, text=True, env=c.env)
    assert "state:        paused" in out.stdout and "reason:       ALERT crash loop: 3 system faults" in out.stdout
    from monitoring.sources import status as monitor_status

    shown = monitor_status(c.cfg)
    assert shown["control_reason"] == control.reason and control.reason in shown["liveness"]["detail"]
    # resumed, the same files train, each once, counted as their first attempt
    request(c.layout, "resume")
    c.wait(lambda: len(c.files("recently_completed")) == 3, 240, "all three files completed after resume")
    assert [c.meta("recently_completed", n)["attempts"] for n in names] == [1, 1, 1]
    assert_monotonic_steps(c)


def test_data_error_before_the_first_step_still_counts_an_attempt(cadence):
    c = cadence(extra={"validation.standard_on_arrival": True})
    src = c.base / "bad.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in demo_rows(24, 30)))
    out = subprocess.run([sys.executable, "core/training_queue.py", "--config", str(c.config), "add", str(src)],
                         cwd=REPO, capture_output=True, text=True, env=c.env)
    assert out.returncode == 0, out.stderr
    assert c.meta("normal", "bad.jsonl")["validation"]["level"] == "standard"  # the child will not validate again
    with open(c.layout.queue_dir("normal") / "bad.jsonl", "a") as fh:  # the data changes on disk after validation
        fh.write("{not json\n")
    c.start()
    c.wait(lambda: c.files("failed") == ["bad.jsonl"], 180, "the bad file failed")
    meta = c.meta("failed", "bad.jsonl")
    assert meta["attempts"] == 1 and "data_error" in meta["errors"][-1]["error"] and "invalid JSON" in meta["errors"][-1]["error"]
    (crash,) = [json.loads(l) for l in (c.layout.status / "crash_history.jsonl").read_text().splitlines()]
    assert (crash["category"], crash["action"], crash["blame"], crash["started_training"]) == \
        ("data_error", "fail", "file", False)
    assert c.events("system_fault") == [] and read_control(c.layout).desired == "running"
    c.drop("good.jsonl", demo_rows(24, 31))
    c.wait(lambda: c.files("recently_completed") == ["good.jsonl"], 180, "the next file trains")


def test_file_killed_after_progress_resumes_before_a_higher_priority_file(cadence):
    c = cadence(fault="slow:0.1")
    c.drop("first.jsonl", demo_rows(150, 40))
    c.start()
    c.wait(lambda: (c.layout.current_model / "checkpoint-6").exists(), 90, "checkpoint progress in first.jsonl")
    (c.layout.inbox / "urgent.job.json").write_text(json.dumps({"priority": "high"}))
    c.drop("urgent.jsonl", demo_rows(40, 41))
    c.wait(lambda: c.files("high") == ["urgent.jsonl"], 30, "a high-priority file queued meanwhile")
    pid = live_pid(c.layout.pid_file("trainer"))
    os.kill(pid, signal.SIGKILL)
    c.wait(lambda: c.files("normal") == ["first.jsonl"] and c.meta("normal", "first.jsonl").get("global_step_start"), 30)
    after_kill = c.meta("normal", "first.jsonl")
    assert after_kill["global_step_start"] == 1 and after_kill["attempts"] == 0  # progress: not an attempt
    c.wait(lambda: c.files("recently_completed") == ["first.jsonl", "urgent.jsonl"], 240, "both files completed")
    starts = [e["file"] for e in c.events("training_started")]
    assert starts == ["first.jsonl", "first.jsonl", "urgent.jsonl"], starts
    assert [e["file"] for e in c.events("resume_first")] == ["first.jsonl"]
    first, urgent = c.meta("recently_completed", "first.jsonl"), c.meta("recently_completed", "urgent.jsonl")
    steps = assert_monotonic_steps(c)
    by_file = {}
    for m in c.train_metrics():
        by_file.setdefault(m["file"], []).append(m["global_step"])
    # global_step_start/end: the file's first and last global step, kept across the resume
    assert (first["global_step_start"], first["global_step_end"]) == (by_file["first.jsonl"][0], by_file["first.jsonl"][-1]) == (1, first["result"]["total_steps"])
    assert (urgent["global_step_start"], urgent["global_step_end"]) == (by_file["urgent.jsonl"][0], steps[-1])
    assert urgent["global_step_start"] == first["global_step_end"] + 1


def test_daemon_killed_while_its_trainer_starts_is_a_system_fault(cadence):
    c = cadence(fault="startup:4")
    c.drop("x.jsonl", demo_rows(40, 50))
    c.start("safety/daemon_watchdog.py")
    first = c.wait(lambda: live_pid(c.layout.pid_file("daemon")), 30, "daemon started by the watchdog")
    # the same start-up window as above, but this time the daemon dies under its trainer
    c.wait(lambda: (pid := live_pid(c.layout.pid_file("trainer"))) and c.heartbeat().get("pid") == pid
           and c.heartbeat().get("phase") == "load", 90, "a trainer in start-up")
    os.kill(first, signal.SIGKILL)
    c.wait(lambda: c.events("system_fault"), 90, "the restarted daemon recovered the file as a system fault")
    (fault,) = c.events("system_fault")
    assert fault["file"] == "x.jsonl" and "the daemon died" in fault["message"] and fault["faults_in_a_row"] == 1
    assert [e["counted_as_attempt"] for e in c.events("recovered")] == [False]
    c.wait(lambda: c.files("recently_completed") == ["x.jsonl"], 180, "file completed after the restart")
    meta = c.meta("recently_completed", "x.jsonl")
    assert meta["attempts"] == 1 and meta["errors"] == [] and meta["global_step_start"] == 1
