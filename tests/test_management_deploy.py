"""End to end on CPU: checkpoint -> scored -> deployed to a live inference server -> verified -> promoted;
a broken checkpoint refused and a failed health window rolled back while the old version keeps serving;
an rsync-daemon target over loopback; remote cleanup that never touches the active or previous version."""
from __future__ import annotations

import shutil
import threading
import time

import httpx
import pytest

from core.config import DeployTarget
from management.lifecycle import LifecycleWorker
from management.deployment_orchestrator import Orchestrator, history, load_state, tried_content_ids
from tests.management_support import (ADMIN_TOKEN, LiveServer, RsyncDaemon, make_checkpoint, served,
                                      write_chat_rows)


def _config(make_config, **over):
    cfg = make_config({"comparison.validation_file": "val.jsonl", "comparison.validation_samples": 6,
                       "comparison.eval_samples": 0, "comparison.margin": 0.0, "deploy.health_window_seconds": 0.5,
                       "deploy.health_probe_interval": 0.1, "data_manager.enabled": False,
                       "retention.min_age_hours": 0, **over})
    (cfg.layout.control / "admin.token").write_text(ADMIN_TOKEN + "\n")
    write_chat_rows(cfg.layout.base_dir / "val.jsonl", 6)
    return cfg


def _target(name, destination, server, server_path=None):
    return DeployTarget(name=name, destination=str(destination), server_url=server.url, server_path=server_path)


class Load:
    """Clients sending chat requests for the whole block; every answer's status and serving version is kept."""

    def __init__(self, url: str, n: int = 3):
        self.url, self.n = url, n
        self.stop = threading.Event()
        self.results: list[tuple[int | None, str | None]] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]

    def _run(self):
        body = {"model": "cadence-tiny", "messages": [{"role": "user", "content": "count to ten"}], "max_tokens": 8,
                "ignore_eos": True}
        with httpx.Client(timeout=60) as client:
            while not self.stop.is_set():
                try:
                    r = client.post(self.url + "/v1/chat/completions", json=body)
                    self.results.append((r.status_code, r.headers.get("x-model-version")))
                except httpx.HTTPError as exc:
                    self.results.append((None, repr(exc)))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)

    @property
    def failures(self):
        return [r for r in self.results if r[0] != 200]


@pytest.fixture
def deployed(make_config, micro_model_dir, tmp_path):
    """A live server with checkpoint-10 deployed through the lifecycle worker to a local target."""
    cfg = _config(make_config)
    with LiveServer(cfg) as server:
        cfg.deploy.targets = [_target("local", tmp_path / "target", server)]
        make_checkpoint(cfg, micro_model_dir, 10, seed=1)
        worker = LifecycleWorker(cfg)
        worker.run_once()
        yield cfg, server, worker


def test_new_checkpoint_is_scored_deployed_verified_and_promoted(deployed, tmp_path):
    cfg, server, worker = deployed
    state = load_state(cfg)
    active = state["targets"]["local"]["active"]
    assert active["checkpoint"] == "checkpoint-10" and state["in_progress"] is None
    now = served(server)
    assert now["version"] == active["version"] and now["content_id"] == active["content_id"] and now["global_step"] == 10
    events = [h["event"] for h in history(cfg) if h.get("version") == active["version"]]
    assert events == ["started", "copied", "verified", "loaded", "health_ok", "promoted"]
    folder = tmp_path / "target" / active["version"]
    assert (folder / "model.safetensors").is_file() and (folder / "manifest.json").is_file()
    assert not (folder / "training_state").exists()  # model files only, never optimizer state
    assert not list((tmp_path / "target").glob(".staging-*"))
    # the version snapshot has its training metadata; protected.json pins the deployed checkpoint
    meta = (cfg.layout.versions / active["version"] / "training_metadata.json").read_text()
    for key in ("base_model", "step", "files_trained", "examples_trained", "final_loss", "val_loss", "hyperparameters",
                "training_time_s", "config_hash", "trained_at", "file_digests"):
        assert f'"{key}"' in meta
    protected = (cfg.layout.current_model / "protected.json").read_text()
    assert '"checkpoint-10"' in protected
    # another pass has nothing new: nothing is deployed twice
    worker.run_once()
    assert [h["event"] for h in history(cfg)].count("promoted") == 1


def test_broken_checkpoint_is_refused_while_the_old_version_serves(deployed, micro_model_dir, tmp_path):
    cfg, server, worker = deployed
    before = served(server)
    make_checkpoint(cfg, micro_model_dir, 20, seed=2, nan=True)    # NaN weights: val_loss NaN, never a champion
    worker.run_once()
    assert served(server)["version"] == before["version"]
    assert [h["event"] for h in history(cfg)].count("started") == 1
    with Load(server.url) as load:                                  # an operator forces it anyway, under load
        time.sleep(0.3)
        with Orchestrator(cfg) as orch:
            result = orch.deploy("checkpoint-20")
        time.sleep(0.3)
    assert result["status"] == "failed"
    assert load.results and not load.failures
    assert {v for _, v in load.results} == {before["version"]}     # the old version served throughout
    rejected = [h for h in history(cfg) if h["event"] == "load_rejected"]
    assert rejected[-1]["code"] == "nonfinite_weights" and rejected[-1]["still_serving"] == before["version"]
    assert not (tmp_path / "target" / result["version"]).exists()
    assert load_state(cfg)["targets"]["local"]["active"]["version"] == before["version"]
    with Orchestrator(cfg) as orch:                                 # the same content is never tried again
        assert orch.deploy("checkpoint-20")["status"] == "skipped"


def test_a_champion_removed_from_disk_is_passed_over_and_the_next_one_is_deployed(deployed, micro_model_dir,
                                                                                   monkeypatch):
    """The trainer's rolling retention removes checkpoints the scorer has judged; the newest passing one used to be
    picked again on every pass, its deploy failing ('not a published checkpoint'), until a newer one passed."""
    from management import champion_rule
    cfg, server, worker = deployed
    monkeypatch.setattr(champion_rule, "champion_decision",  # the rule under test elsewhere: here any newer one passes
                        lambda entry, baseline, cc, rule=None, floor=None: champion_rule.Decision(True, "newer", rule="paired"))
    make_checkpoint(cfg, micro_model_dir, 20, seed=2)
    make_checkpoint(cfg, micro_model_dir, 30, seed=3)
    worker.score()
    shutil.rmtree(cfg.layout.current_model / "checkpoint-30")       # removed after scoring, before the deploy step
    result = worker.champion_and_deploy()
    assert result["status"] == "promoted", result
    assert load_state(cfg)["targets"]["local"]["active"]["checkpoint"] == "checkpoint-20"
    assert served(server)["global_step"] == 20
    # the champion was pinned in protected.json before its deploy, so rolling retention keeps it meanwhile
    assert '"champion": "checkpoint-20"' in (cfg.layout.current_model / "protected.json").read_text().replace("\n", "")


def test_failed_health_window_rolls_back(deployed, micro_model_dir, tmp_path):
    cfg, server, worker = deployed
    before = served(server)
    make_checkpoint(cfg, micro_model_dir, 30, seed=3)
    cfg.deploy.max_latency_seconds = 1e-6                           # no server answers that fast: health fails
    with Load(server.url) as load:
        with Orchestrator(cfg) as orch:
            result = orch.deploy("checkpoint-30")
    assert result["status"] == "failed" and result["targets"] == {"local": "rolled_back"}
    assert not load.failures
    after = served(server)
    assert after["content_id"] == before["content_id"]
    events = [h["event"] for h in history(cfg) if h.get("version") == result["version"]]
    assert events == ["started", "copied", "verified", "loaded", "health_failed", "rolled_back", "failed"]
    assert load_state(cfg)["targets"]["local"]["active"]["content_id"] == before["content_id"]
    assert not (tmp_path / "target" / result["version"]).exists()
    assert result["content_id"] in tried_content_ids(cfg)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed (apt-get install rsync)")
def test_rsync_daemon_target_and_cleanup_across_two_targets(make_config, micro_model_dir, tmp_path):
    cfg = _config(make_config, **{"deploy.keep_remote_versions": 2})
    module_root = tmp_path / "box_b"
    with LiveServer(cfg) as local_server, LiveServer(cfg) as remote_server, \
            RsyncDaemon(module_root, tmp_path / "rsyncd") as daemon:
        cfg.deploy.targets = [_target("local", tmp_path / "target", local_server),
                              _target("remote", f"{daemon.url}/deployed", remote_server, str(module_root / "deployed"))]
        versions = []
        for step in (10, 20, 30):
            make_checkpoint(cfg, micro_model_dir, step, seed=step, scale=0.02)
            with Orchestrator(cfg) as orch:
                result = orch.deploy(f"checkpoint-{step}")
            assert result["status"] == "promoted", result
            versions.append(result["version"])
            for server in (local_server, remote_server):
                assert served(server)["version"] == result["version"]
        state = load_state(cfg)
        for name, root in (("local", tmp_path / "target"), ("remote", module_root / "deployed")):
            assert state["targets"][name]["active"]["version"] == versions[-1]
            assert state["targets"][name]["previous"]["version"] == versions[-2]
            left = sorted(p.name for p in root.iterdir())
            assert left == sorted(versions[-2:]), (name, left)     # keep 2: exactly the active and the previous
            assert not (root / versions[-1] / "training_state").exists()
        # an operator rollback flips the primary back to the previous version
        with Orchestrator(cfg) as orch:
            orch.rollback("local")
        assert served(local_server)["version"] == versions[-2]
        assert load_state(cfg)["targets"]["local"]["active"]["version"] == versions[-2]


@pytest.mark.parametrize("link_local", [False, True])
def test_corrupted_checkpoint_never_reaches_serving(deployed, micro_model_dir, tmp_path, link_local):
    """A checkpoint whose weights changed after its manifest was written: a byte copy fails the staged manifest
    check before the server is asked; a hard-linked copy is refused by the server's own check. Either way the old
    version keeps serving and nothing corrupt stays on the target."""
    cfg, server, worker = deployed
    before = served(server)
    cfg.deploy.link_local = link_local
    ckpt = make_checkpoint(cfg, micro_model_dir, 40, seed=4)
    with open(ckpt.path / "model.safetensors", "r+b") as fh:   # bit rot after publish
        fh.seek(-16, 2)
        fh.write(b"\xff" * 16)
    with Orchestrator(cfg) as orch:
        result = orch.deploy("checkpoint-40")
    assert result["status"] == "failed"
    events = [h for h in history(cfg) if h.get("version") == result["version"]]
    if link_local:
        assert [h["code"] for h in events if h["event"] == "load_rejected"] == ["manifest_mismatch"]
    else:
        assert "loaded" not in [h["event"] for h in events] and "load_rejected" not in [h["event"] for h in events]
        assert "manifest" in events[-1]["reason"]
    assert served(server)["content_id"] == before["content_id"]
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == [before["version"]]
