"""Starting the training child as one process or as a group of ranks, and supervising the group as one child.

The daemon hands `start()` the single-process command (`python -m trainer.child ...`)
and gets back something it treats like a `subprocess.Popen`: `pid`, `poll()`,
`wait()`, `send_signal()`, `kill()`, `returncode`.

- `training.distributed = none`: the command as it is, one `Popen`.
- ddp / fsdp on this machine (`training.num_processes` ranks): a `RankGroup`. The
  daemon itself is the launcher, in torchrun's environment contract (RANK,
  LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), which
  accelerate reads. Not torchrun itself, because torchrun reports any failure as
  exit code 1 and keeps the ranks' own codes and pids to itself, and the crash
  detector classifies by the code (data error, NaN, OOM, disk full ...), the
  anti-stuck monitor needs every rank's pid, and a stuck rank must be killed by pid.
  One rank that dies, or fails, takes the group down: the others are killed (a
  failing rank 0 at once; another rank after `GRACE_S`, time for rank 0 to fail
  the same way and report it itself), and the group's exit code is the first
  failure's (the root cause; a peer's "connection closed" that follows is not).
- `training.accelerate_config` (several machines): `accelerate launch
  --config_file F -m trainer.child ...`, one `Popen` (accelerate starts the local
  ranks; every machine runs its own). Exit codes then collapse to accelerate's.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time

from core.procs import live_pid
from core.state.base import StateError
from core.state.child_result import CLEAN_EXITS, ChildResult, clear_child_result, read_child_result
from safety import anti_stuck_monitor
from trainer.child import pid_name

logger = logging.getLogger(__name__)

GRACE_S = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes(cfg) -> int:
    t = cfg.training
    return t.num_processes if t.distributed != "none" else 1


def accelerate_command(cfg, cmd: list[str]) -> list[str]:
    """`python -m trainer.child ARGS` as `accelerate launch --config_file F -m trainer.child ARGS`."""
    module_at = cmd.index("-m")
    return [cmd[0], "-m", "accelerate.commands.launch", "--config_file",
            str(cfg.resolve(cfg.training.accelerate_config)), "-m", *cmd[module_at + 1:]]


def rank_env(env: dict, rank: int, world: int, port: int) -> dict:
    env = dict(env, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
               GROUP_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    # as torchrun does: the ranks share the cores instead of each starting one thread per core
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    return env


def start(cfg, cmd: list[str], log, env: dict, cwd: str):
    """Start the training child for `cfg` (see the module doc); `log` is an open binary file for its output."""
    common = dict(cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if cfg.training.distributed != "none" and cfg.training.accelerate_config:
        return subprocess.Popen(accelerate_command(cfg, cmd), env=env, **common)
    world = processes(cfg)
    if world == 1:
        return subprocess.Popen(cmd, env=env, **common)
    port = cfg.training.master_port or free_port()
    procs = [subprocess.Popen(cmd, env=rank_env(env, r, world, port), **common) for r in range(world)]
    return RankGroup(procs)


class RankGroup:
    """The ranks of one distributed training child, supervised as one process (pid = rank 0's)."""

    def __init__(self, procs: list[subprocess.Popen], grace: float = GRACE_S):
        self.procs = procs
        self.grace = grace
        self.returncode: int | None = None
        self.failed_rank: int | None = None   # the rank whose exit is the group's
        self._failure_at: float | None = None
        self._killed: set[int] = set()

    @property
    def pid(self) -> int:
        return self.procs[0].pid

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        codes = [p.poll() for p in self.procs]
        if self.failed_rank is None:
            failing = [r for r, c in enumerate(codes) if c is not None and c not in CLEAN_EXITS]
            if failing:
                self.failed_rank, self._failure_at = failing[0], time.monotonic()
        if self.failed_rank is not None and any(c is None for c in codes):
            if self.failed_rank == 0 or codes[0] is not None or time.monotonic() - self._failure_at > self.grace:
                self._kill_alive()
            return None
        if any(c is None for c in codes):
            return None
        self.returncode = codes[self.failed_rank if self.failed_rank is not None else 0]
        return self.returncode

    def _kill_alive(self) -> None:
        for r, p in enumerate(self.procs):
            if p.poll() is None and r not in self._killed:
                self._killed.add(r)
                try:
                    p.kill()
                except ProcessLookupError:
                    pass

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.procs[0].args, timeout)
            time.sleep(0.05)
        return code

    def send_signal(self, sig: int) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    p.send_signal(sig)
                except ProcessLookupError:
                    pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self._kill_alive()


def rank_pids(proc) -> list[int]:
    return list(proc.pids) if isinstance(proc, RankGroup) else [proc.pid]


def child_result(layout, proc) -> ChildResult | None:
    """status/child_result[.rank<r>].json of the rank whose exit is the child's, if that process wrote it (a file
    that is not a valid result counts as none: the crash detector then classifies by the code and the log)."""
    rank = proc.failed_rank if isinstance(proc, RankGroup) and proc.failed_rank is not None else 0
    try:
        result = read_child_result(layout, rank)
    except StateError as exc:
        logger.warning("%s", exc)
        return None
    pid = rank_pids(proc)[rank]
    return result if result is not None and result.pid == pid else None


def clear_results(layout, proc_count: int) -> None:
    for r in range(proc_count):
        clear_child_result(layout, r)


def check_stuck(cfg, proc, started_at: float):
    """The anti-stuck verdict of the first silent rank (each rank writes its own heartbeat), else None."""
    for rank, pid in enumerate(rank_pids(proc)):
        verdict = anti_stuck_monitor.check(cfg, pid, started_at, rank=rank)
        if verdict is not None:
            return verdict
    return None


def orphan_pids(layout) -> list[int]:
    """Live pids named by the rank pid files a previous daemon's group left (rank 0's is trainer.pid)."""
    stem = pid_name(1)[:-1]  # "trainer.rank"
    return [pid for path in sorted(layout.pids.glob(f"{stem}*.pid")) if (pid := live_pid(path))]

