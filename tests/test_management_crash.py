"""kill -9 of the deployment orchestrator at every stage, then a restart: exactly one active version, served by the
server and recorded in the state file, and no content deployed twice."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from core.config import DeployTarget
from management.deployment_orchestrator import Orchestrator, history, load_state
from tests.management_support import ADMIN_TOKEN, LiveServer, make_checkpoint, served, write_config_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (fault point, extra config, which version must be active after the restart)
STAGES = [
    ("mid_copy", {}, "new"),
    ("after_copy", {}, "new"),
    ("mid_verify", {}, "new"),
    ("mid_flip", {}, "new"),
    ("after_flip", {}, "new"),
    ("after_promote", {}, "new"),
    ("mid_rollback", {"max_latency_seconds": 1e-6}, "old"),   # health fails, so the deployment rolls back
]


def _orchestrator(cfg, config_path, *args, fault=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CADENCE_DEPLOY_FAULT", None)
    if fault:
        env["CADENCE_DEPLOY_FAULT"] = fault
    if fault == "mid_copy":
        env["CADENCE_DEPLOY_BWLIMIT"] = "100"   # KB/s: the copy is still running when mid_copy strikes
    return subprocess.run([sys.executable, "-m", "core.cli", "deploy",
                           "--config", str(config_path), *args], env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.slow
def test_kill_minus_nine_at_every_stage_converges_to_one_active_version(make_config, micro_model_dir, tmp_path):
    cfg = make_config({"deploy.health_window_seconds": 0.4, "deploy.health_probe_interval": 0.1,
                       "data_manager.enabled": False, "deploy.keep_remote_versions": 2})
    (cfg.layout.control / "admin.token").write_text(ADMIN_TOKEN + "\n")
    target_dir = tmp_path / "target"
    with LiveServer(cfg) as server:
        cfg.deploy.targets = [DeployTarget(name="local", destination=str(target_dir), server_url=server.url)]
        make_checkpoint(cfg, micro_model_dir, 10, seed=10)
        with Orchestrator(cfg) as orch:
            assert orch.deploy("checkpoint-10")["status"] == "promoted"
        for i, (point, extra, expect) in enumerate(STAGES):
            step = 20 + 10 * i
            cfg.deploy.max_latency_seconds = extra.get("max_latency_seconds")
            config_path = write_config_file(cfg)
            old = load_state(cfg)["targets"]["local"]["active"]
            make_checkpoint(cfg, micro_model_dir, step, seed=step)

            killed = _orchestrator(cfg, config_path, "deploy", "--checkpoint", f"checkpoint-{step}", fault=point)
            assert killed.returncode == -9, f"{point}: not killed ({killed.returncode})\n{killed.stderr[-2000:]}"
            assert load_state(cfg)["in_progress"] is not None or point == "after_promote", point

            restarted = _orchestrator(cfg, config_path, "recover", "--json")
            assert restarted.returncode == 0, f"{point}: recover failed\n{restarted.stderr[-3000:]}"

            state = load_state(cfg)
            active = state["targets"]["local"]["active"]
            assert state["in_progress"] is None, point
            assert served(server)["content_id"] == active["content_id"], point      # one active version, served
            if expect == "new":
                assert active["checkpoint"] == f"checkpoint-{step}", point
                assert state["targets"]["local"]["previous"]["content_id"] == old["content_id"], point
            else:
                assert active["content_id"] == old["content_id"], point
            hist = history(cfg)
            started = Counter(h["content_id"] for h in hist if h["event"] == "started")
            promoted = Counter(h["content_id"] for h in hist if h["event"] == "promoted")
            assert max(started.values()) == 1 and max(promoted.values()) == 1, (point, started, promoted)
            assert not list(target_dir.glob(".staging-*")), point
            names = {p.name for p in target_dir.iterdir()}
            assert active["version"] in names and len(names) <= 2, (point, names)

            with Orchestrator(cfg) as orch:                                          # never twice
                assert orch.deploy(f"checkpoint-{step}")["status"] == "skipped", point
