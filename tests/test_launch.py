"""The rank group the daemon supervises (core/launch.py), the sharing-out of a step, and the distributed config keys."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from core.config import ConfigError, from_dict
from core.launch import RankGroup, accelerate_command, rank_env
from trainer.distributed import local_micro_batches


def proc(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_clean_exits_wait_for_every_rank_and_report_rank0():
    group = RankGroup([proc("import sys, time; time.sleep(0.5); sys.exit(3)"), proc("import sys; sys.exit(0)")])
    assert group.wait(30) == 3 and group.failed_rank is None


def test_a_killed_rank_takes_the_group_down_with_its_own_code():
    group = RankGroup([proc("import time; time.sleep(60)"), proc("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")],
                      grace=0.5)
    started = time.monotonic()
    assert group.wait(30) == -9 and group.failed_rank == 1
    assert time.monotonic() - started < 20  # rank 0 was killed after the grace, not left to time out
    assert group.procs[0].returncode == -9


def test_a_failing_rank0_kills_the_others_at_once_and_its_code_is_the_groups():
    group = RankGroup([proc("import sys; sys.exit(10)"), proc("import time; time.sleep(60)")], grace=60)
    assert group.wait(20) == 10 and group.failed_rank == 0


def test_rank0_failing_in_the_grace_after_another_rank_keeps_the_first_failure():
    group = RankGroup([proc("import sys, time; time.sleep(1); sys.exit(1)"), proc("import sys; sys.exit(14)")], grace=30)
    assert group.wait(30) == 14 and group.failed_rank == 1


def test_signals_reach_every_rank():
    group = RankGroup([proc("import time; time.sleep(60)"), proc("import time; time.sleep(60)")])
    group.send_signal(15)
    assert group.wait(20) == -15


def test_rank_environment_is_torchruns():
    env = rank_env({"OMP_NUM_THREADS": "3"}, 1, 2, 18699)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "OMP_NUM_THREADS")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "18699",
        "OMP_NUM_THREADS": "3"}


def test_step_is_shared_out_round_robin_with_zero_weighted_padding():
    micro = ["m0", "m1", "m2"]
    assert local_micro_batches(micro, 0, 1) == [("m0", 1.0), ("m1", 1.0), ("m2", 1.0)]
    assert local_micro_batches(micro, 0, 2) == [("m0", 1.0), ("m2", 1.0)]
    assert local_micro_batches(micro, 1, 2) == [("m1", 1.0), ("m0", 0.0)]
    assert local_micro_batches(["m0"], 1, 2) == [("m0", 0.0)]


def _cfg(tmp_path, **training):
    return from_dict({"paths": {"base_dir": str(tmp_path)}, "training": training}, tmp_path)


@pytest.mark.parametrize("training, message", [
    ({"num_processes": 2}, "training.num_processes = 2 needs training.distributed = ddp or fsdp"),
    ({"accelerate_config": "acc.yaml"}, "training.accelerate_config needs training.distributed = ddp or fsdp"),
    ({"distributed": "fsdp", "num_processes": 2, "mode": "lora"}, "training.distributed = fsdp with training.mode = lora"),
    ({"distributed": "mpi"}, "distributed"),
])
def test_distributed_config_mistakes_are_refused_with_the_key(tmp_path, training, message):
    with pytest.raises((ConfigError, ValueError)) as err:
        _cfg(tmp_path, **training)
    assert message in str(err.value)


def test_several_machines_launch_through_accelerate(tmp_path):
    cfg = _cfg(tmp_path, distributed="ddp", num_processes=4, accelerate_config="multi.yaml")
    cmd = accelerate_command(cfg, [sys.executable, "-m", "trainer.child", "--file", "x.jsonl"])
    assert cmd == [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(tmp_path / "multi.yaml"),
                   "-m", "trainer.child", "--file", "x.jsonl"]
