"""The closed loop, end to end, with the repository's own config.json: generate -> train -> evaluate -> level up -> deploy.

Every process is real (`cadence start`, as scripts/start_all.sh does), on a fresh base dir with the
ports moved out of the way. Passes when the tiny model has mastered binary level 1 (the curriculum moved it to
level 2), the deployed version changed at least twice, and the monitor's API reports both.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def test_closed_loop_reaches_binary_level_2_and_deploys(tmp_path, tiny_model_dir):
    base = tmp_path / "cadence"
    shutil.copytree(tiny_model_dir, base / "models" / "base")
    from core.services import shifted_config

    off = 13000
    cfg = shifted_config(off, min_free_disk_gb=0, warn_free_disk_gb=0)
    config = base / "config.json"
    config.write_text(json.dumps(cfg))
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    services = [sys.executable, "-m", "core.cli"]
    subprocess.run(services + ["start", "--config", str(config)], cwd=REPO, env=env, check=True, capture_output=True)
    monitor = f"http://127.0.0.1:{8080 + off}"
    curriculum = base / "status" / "curriculum.json"
    try:
        deadline = time.time() + 480
        level, promoted = 1, []
        while time.time() < deadline:
            if curriculum.exists():
                level = json.loads(curriculum.read_text())["skills"].get("binary", {}).get("level", 1)
            deployments = base / "status" / "deployments.jsonl"
            if deployments.exists():
                promoted = [json.loads(l) for l in deployments.read_text().splitlines() if '"promoted"' in l]
            if level >= 2 and len({p["version"] for p in promoted}) >= 2:
                break
            time.sleep(2)
        logs = {p.name: p.read_text()[-2000:] for p in (base / "logs").glob("*.log")}
        assert level >= 2, f"binary still at level {level}\n{logs}"
        assert len({p["version"] for p in promoted}) >= 2, logs
        with httpx.Client(timeout=10) as client:
            cur = client.get(f"{monitor}/api/curriculum").json()  # what the page's curriculum panel shows
            assert cur["skills"]["binary"]["level"] >= 2
            served = client.get(f"http://127.0.0.1:{8765 + off}/v1/models").json()["data"][0]["version"]
        deployed = [json.loads(l) for l in (base / "status" / "deployments.jsonl").read_text().splitlines()]
        assert served in {d.get("version") for d in deployed if d.get("event") in ("loaded", "promoted")}
        # every trained file's queue sidecar names its first and last global step
        from core.state.queue_records import read_queue_meta

        done = [read_queue_meta(p) for p in (base / "queue" / "recently_completed").glob("*.meta.json")]
        assert done and all(m.global_step_start is not None and 1 <= m.global_step_start <= m.global_step_end
                            for m in done), [(m.name, m.global_step_start, m.global_step_end) for m in done]
    finally:
        subprocess.run(services + ["stop", "--config", str(config)], cwd=REPO, env=env, capture_output=True)
    # Every JSON/JSONL file the loop left under status/, control/, queue/ and models/ is a record owned by a
    # core/state module and validates against its model (or is named in registry.NOT_RECORDS: data, HF files).
    from core.state.registry import validate_tree

    problems = validate_tree(base)
    assert not problems, "\n".join(problems)
