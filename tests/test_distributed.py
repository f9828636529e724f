"""Distributed training with real processes: the daemon starts 2 ranks (CPU, gloo) for DDP and FSDP2.

Every run trains the same two-file queue with the micro model (tied embeddings,
like Qwen3-0.6B) through the real daemon; the 1-process run of the same plan is
the reference.

Tolerance: 2 ranks compute each step's gradient as the sum of two partial sums
(rank 0's micro-batches, rank 1's) where one process adds the micro-batch
gradients one after the other, so float32 rounding differs (~1e-7 relative per
gradient entry). AdamW divides by sqrt(v), which can amplify that for entries
whose gradient is near zero, but each step moves a weight by at most ~lr (1e-3
here), so over ~20 steps the weights agree to well within 1e-4 absolute while a
one-step difference in the plan (a skipped or repeated micro-batch) moves them by
~1e-3: atol 1e-4 (and rtol 1e-4) separates "the same update" from "a different
one". Steps, the LR at each step and the per-step losses (to 1e-4) are compared too.
"""
from __future__ import annotations

import json
import os
import signal

import pytest
import torch

from core.atomic_io import read_json
from core.control import request
from core.procs import live_pid, pid_alive
from tests.test_daemon_faults import Cadence, demo_rows

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

FILES = {"a.jsonl": demo_rows(100, 11), "b.jsonl": demo_rows(60, 12)}
TRAINING = {"training.micro_batch_tokens": 128, "training.gradient_accumulation_steps": 3, "training.save_steps": 3,
            "training.compile": "off",
            # the shared 2-core box is loaded: a process exit can take many seconds with nothing to heartbeat
            "safety.stuck_timeout": 120, "safety.stuck_timeout_eval": 120, "safety.stuck_timeout_checkpoint": 120}
ATOL = RTOL = 1e-4


def rank1_beat(c: Cadence) -> dict:
    return read_json(c.layout.status / "heartbeat.rank1.json", {}) or {}


def _port(i: int) -> int:
    return 18610 + i


def run_queue(base, model_dir, distributed: str = "none", world: int = 1, fault: str | None = None, extra=None,
              port: int = 0):
    over = dict(TRAINING, **(extra or {}))
    if distributed != "none":
        over.update({"training.distributed": distributed, "training.num_processes": world,
                     "training.master_port": _port(port)})
    c = Cadence(base, model_dir, extra=over, fault=fault)
    for name, rows in FILES.items():
        c.drop(name, rows)
    return c


def finish(c: Cadence, timeout: float = 240) -> None:
    c.wait(lambda: c.files("recently_completed") == sorted(FILES), timeout, "both files completed")


def final_weights(c: Cadence) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    from trainer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(c.layout.current_model)
    return load_file(str(ckpt.path / "model.safetensors"))


def train_records(c: Cadence) -> list[dict]:
    return [m for m in c.train_metrics()]


def assert_same_run(ref: Cadence, other: Cadence) -> None:
    a, b = final_weights(ref), final_weights(other)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=ATOL, rtol=RTOL, msg=lambda m: f"{k}: {m}")
    ra, rb = train_records(ref), train_records(other)
    assert [r["global_step"] for r in rb] == [r["global_step"] for r in ra]
    assert [r["lr"] for r in rb] == pytest.approx([r["lr"] for r in ra], rel=1e-12)
    assert [r["tokens"] for r in rb] == [r["tokens"] for r in ra]
    assert [r["loss"] for r in rb] == pytest.approx([r["loss"] for r in ra], abs=1e-4)
    for name in FILES:
        ma, mb = ref.meta("recently_completed", name), other.meta("recently_completed", name)
        assert (mb["global_step_start"], mb["global_step_end"]) == (ma["global_step_start"], ma["global_step_end"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, micro_model_dir):
    """The 1-process run of the two-file plan."""
    c = run_queue(tmp_path_factory.mktemp("ref"), micro_model_dir)
    c.start()
    try:
        finish(c)
        yield c
    finally:
        c.close()


@pytest.fixture
def cadence_runs():
    made = []
    yield made
    for c in made:
        c.close()


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_ranks_train_the_queue_as_one_process_does(reference, tmp_path, micro_model_dir, cadence_runs, mode):
    c = run_queue(tmp_path / mode, micro_model_dir, mode, 2, port=0 if mode == "ddp" else 1)
    cadence_runs.append(c)
    c.start()
    finish(c)
    assert_same_run(reference, c)
    started = c.events("training_started")
    assert len(started) == 2 and all(len(e["pids"]) == 2 for e in started)
    assert all(r["processes"] == 2 for r in train_records(c))
    # metrics from rank 0 only: assert_same_run compared one line per step (a second writer would double them)
    # the checkpoint is what a single process writes: from_pretrained loads it as is, tied embeddings included
    from transformers import AutoModelForCausalLM

    from trainer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(c.layout.current_model)
    model = AutoModelForCausalLM.from_pretrained(str(ckpt.path))
    assert model.config.architectures == ["Qwen3ForCausalLM"] and model.config.tie_word_embeddings
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    torch.testing.assert_close(model.get_input_embeddings().weight.detach(),
                               final_weights(c)["model.embed_tokens.weight"], atol=0, rtol=0)
    assert sorted(p.name for p in (ckpt.path / "training_state").iterdir()) == [
        "optimizer.safetensors", "rng.pt", "trainer_state.json"]
    rank1 = read_json(c.layout.status / "child_result.rank1.json")  # every rank reports its own exit
    assert rank1["category"] == "completed" and rank1["result"]["status"] == "completed"


def test_kill9_of_one_rank_restarts_the_group_and_the_result_is_unchanged(reference, tmp_path, micro_model_dir,
                                                                           cadence_runs):
    c = run_queue(tmp_path / "kill", micro_model_dir, "ddp", 2, fault="slow:0.3", port=2)
    cadence_runs.append(c)
    c.start()
    rank1 = c.wait(lambda: (p := live_pid(c.layout.pid_file("trainer.rank1"))) and
                   (rank1_beat(c).get("global_step") or 0) >= 5
                   and p, 120, "rank 1 past its first checkpoint")
    rank0 = live_pid(c.layout.pid_file("trainer"))
    os.kill(rank1, signal.SIGKILL)
    c.wait(lambda: not pid_alive(rank0), 30, "rank 0 killed with its group")
    finish(c, 300)
    crashes = [json.loads(line) for line in (c.layout.status / "crash_history.jsonl").read_text().splitlines()]
    assert [x["category"] for x in crashes] == ["killed"]
    assert len(c.events("training_started")) == 3  # a, the restarted a, b
    assert_same_run(reference, c)


def test_pause_and_stop_reach_both_ranks_and_a_2_rank_checkpoint_resumes_on_1(reference, tmp_path, micro_model_dir,
                                                                             cadence_runs):
    """FSDP2 on 2 ranks is paused (both ranks wait at the same step), stopped mid-file; the rest of the queue then
    trains on 1 process from that checkpoint: the same file continues at the same step, the result is the same."""
    c = run_queue(tmp_path / "pause", micro_model_dir, "fsdp", 2, fault="slow:0.3", port=3)
    cadence_runs.append(c)
    c.start()
    c.wait(lambda: (c.heartbeat().get("global_step") or 0) >= 3, 120, "training under way")
    request(c.layout, "pause", reason="test")

    def both_paused():
        beats = [c.heartbeat(), rank1_beat(c)]
        return all(b.get("phase") == "paused" for b in beats)
    c.wait(both_paused, 60, "both ranks paused")
    status = json.loads(c.layout.training_status.read_text())
    assert status["state"] == "paused"
    paused_at = status["global_step"]
    request(c.layout, "stop", reason="test")
    daemon = c.procs[0]
    c.wait(lambda: daemon.poll() is not None, 60, "daemon stopped")
    from trainer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(c.layout.current_model)
    assert ckpt.step == paused_at and ckpt.trainer_state().current_file.steps_done == paused_at
    assert not live_pid(c.layout.pid_file("trainer")) and not live_pid(c.layout.pid_file("trainer.rank1"))
    # the same base_dir on one process: resumes the interrupted file at the same step
    cfg = dict(c.config_data)
    cfg["training"] = {k: v for k, v in cfg["training"].items()
                       if k not in ("distributed", "num_processes", "master_port")}
    c.write_config(cfg)
    c.env.pop("CADENCE_FAULT_INJECT")
    request(c.layout, "resume", reason="test")
    c.start()
    finish(c)
    resumed = [m for m in train_records(c) if m["global_step"] == paused_at + 1]
    assert resumed[-1]["processes"] == 1
    assert_same_run(reference, c)


def test_a_1_process_checkpoint_resumes_on_2_ranks(reference, tmp_path, micro_model_dir, cadence_runs):
    """The other direction of a world-size change: a file stopped mid-way on 1 process continues on 2 DDP ranks
    from the same step (the same plan, now shared out), and the result equals the uninterrupted 1-process run."""
    c = run_queue(tmp_path / "grow", micro_model_dir, fault="slow:0.3")
    cadence_runs.append(c)
    c.start()
    c.wait(lambda: (c.heartbeat().get("global_step") or 0) >= 3, 120, "training under way")
    request(c.layout, "stop", reason="test")
    daemon = c.procs[0]
    c.wait(lambda: daemon.poll() is not None, 60, "daemon stopped")
    from trainer.checkpoint import latest_checkpoint

    ckpt = latest_checkpoint(c.layout.current_model)
    stopped_at = ckpt.step
    current = ckpt.trainer_state().current_file
    assert stopped_at >= 3 and current.name == "a.jsonl" and current.steps_done == stopped_at
    assert current.steps_done < current.total_steps  # mid-file
    cfg = dict(c.config_data)
    cfg["training"] = dict(cfg["training"], distributed="ddp", num_processes=2, master_port=_port(4))
    c.write_config(cfg)
    c.env.pop("CADENCE_FAULT_INJECT")
    request(c.layout, "resume", reason="test")
    c.start()
    finish(c)
    records = train_records(c)
    assert [r["processes"] for r in records if r["global_step"] <= stopped_at] == [1] * stopped_at
    assert {r["processes"] for r in records if r["global_step"] > stopped_at} == {2}
    assert_same_run(reference, c)


def _train_standalone(base, model_dir, data, world: int, port: int, **training) -> dict[str, torch.Tensor]:
    """core/train.py on `world` ranks started as the daemon starts them; the final checkpoint's tensors."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from core.launch import RankGroup, rank_env
    from tests.test_daemon_faults import REPO
    from trainer.checkpoint import latest_checkpoint

    cfg = {"paths": {"base_dir": str(base)}, "model": {"base_model": str(model_dir), "max_length": 128},
           "training": {"learning_rate": 1e-3, "warmup_steps": 2, "micro_batch_tokens": 128,
                        "gradient_accumulation_steps": 3, "save_steps": 1000, "eval_steps": 0,
                        "eval_split_fraction": 0.0, **training},
           "safety": {"min_free_disk_gb": 0}}
    if world > 1:
        cfg["training"].update(distributed="ddp", num_processes=world)
    base.mkdir(parents=True)
    (base / "config.json").write_text(json.dumps(cfg))
    cmd = [sys.executable, "-m", "core.cli", "train", str(data), "--config", str(base / "config.json")]
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    log = open(base / "train.log", "wb")
    procs = [subprocess.Popen(cmd, cwd=REPO, env=rank_env(env, r, world, _port(port)) if world > 1 else env,
                              stdout=log, stderr=subprocess.STDOUT) for r in range(world)]
    code = RankGroup(procs).wait(600)
    assert code == 0, (base / "train.log").read_text()[-3000:]
    ckpt = latest_checkpoint(base / "models" / "current_model")
    name = "adapter/adapter_model.safetensors" if training.get("mode") == "lora" else "model.safetensors"
    return load_file(str(ckpt.path / name)), (base / "train.log").read_text()


@pytest.mark.parametrize("variant", ["lora", "compile"])
def test_lora_and_the_compiled_forward_under_ddp_equal_one_process(tmp_path, micro_model_dir, variant):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in demo_rows(60, 5)))
    # LoRA dropout off: its masks come from each rank's RNG, so the noise (not the expected update) would differ
    training = {"mode": "lora", "lora": {"dropout": 0.0}} if variant == "lora" else {"compile": "on"}
    one, _ = _train_standalone(tmp_path / "one", micro_model_dir, data, 1, 0, **training)
    two, log = _train_standalone(tmp_path / "two", micro_model_dir, data, 2, 5 if variant == "lora" else 6, **training)
    assert one.keys() == two.keys() and one
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=ATOL, rtol=RTOL, msg=lambda m: f"{k}: {m}")
    if variant == "compile":
        assert log.count("torch.compile for training steps: available") == 2  # both ranks ran the compiled layers
