"""The lifecycle worker as a process (pid file, one pass end to end, SIGTERM) and every lifecycle CLI's --help and --json."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from core.config import DeployTarget
from management.deployment_orchestrator import history, load_state
from tests.management_support import ADMIN_TOKEN, LiveServer, make_checkpoint, served, write_chat_rows, write_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIS = ["compare", "deploy", "versions", "backup", "disk", "retention"]  # `cadence SUB`: the lifecycle modules' CLIs


def _env():
    return dict(os.environ, PYTHONPATH=REPO)


@pytest.mark.parametrize("script", CLIS)
def test_cli_help(script):
    out = subprocess.run([sys.executable, "-m", "core.cli", script, "--help"], capture_output=True,
                         text=True, timeout=60, env=_env())
    assert out.returncode == 0 and "usage:" in out.stdout and "--json" in out.stdout


@pytest.mark.slow
def test_worker_process_scores_deploys_and_stops_cleanly(make_config, micro_model_dir, tmp_path):
    cfg = make_config({"comparison.validation_file": "val.jsonl", "comparison.validation_samples": 4,
                       "comparison.eval_samples": 2, "comparison.max_new_tokens": 4, "comparison.interval": 600,
                       "comparison.watch_interval": 0.2,
                       "data_manager.eval_count": 2, "data_manager.min_queue_depth": 0,
                       "deploy.health_window_seconds": 0.3, "deploy.health_probe_interval": 0.1,
                       "retention.min_age_hours": 0})
    (cfg.layout.control / "admin.token").write_text(ADMIN_TOKEN + "\n")
    write_chat_rows(cfg.layout.base_dir / "val.jsonl", 4)
    with LiveServer(cfg) as server:
        cfg.deploy.targets = [DeployTarget(name="local", destination=str(tmp_path / "target"), server_url=server.url)]
        config_path = write_config_file(cfg)
        proc = subprocess.Popen([sys.executable, "-m", "management", "--config", str(config_path)], cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 30
            while not cfg.layout.pid_file("lifecycle").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(1.0)                                      # its first pass found nothing to do
            make_checkpoint(cfg, micro_model_dir, 10, seed=1)   # published long before the next 600 s pass
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and not any(h["event"] == "promoted" for h in history(cfg)):
                assert proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
            assert cfg.layout.pid_file("lifecycle").read_text().strip() == str(proc.pid)
            active = load_state(cfg)["targets"]["local"]["active"]
            assert active["checkpoint"] == "checkpoint-10" and served(server)["content_id"] == active["content_id"]
            ledger = json.loads(cfg.layout.comparisons.read_text())
            assert ledger["champion"]["checkpoint"] == "checkpoint-10"
            assert set(ledger["checkpoints"]["checkpoint-10"]["accuracy"]) == {"binary", "syllo"}
        finally:
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out[-3000:]
        assert not cfg.layout.pid_file("lifecycle").exists()
        for script, args in (("deploy", ["status"]), ("compare", ["status"]),
                             ("versions", ["list"]), ("disk", ["free", "--dry-run"])):
            res = subprocess.run([sys.executable, "-m", "core.cli", script, "--config", str(config_path),
                                  *args, "--json"], capture_output=True, text=True, timeout=120, env=_env())
            assert res.returncode == 0, res.stderr[-2000:]
            json.loads(res.stdout)
