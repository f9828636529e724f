"""The training child: one process per claimed file, started and supervised by the daemon.

It loads the engine, trains the file (resuming mid-file when the checkpoint says
so), writes a heartbeat at every step and during long phases, polls the
operator's requests at step boundaries, and exits with a code the crash detector
understands (core/state/child_result.py: ExitCode); details go to
`status/child_result.json`. It asks the kernel for SIGTERM if the daemon dies,
so it can never train on as an orphan.

Run as (by the daemon):
    python -m trainer.child --file queue/processing/x.jsonl --file-id SHA --schema chat_sft_v1 [--config C] [--set k=v]
"""
from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import psutil

from core.config import ConfigError, add_config_args, config_from_args
from core.state.control import read_control
from core.procs import remove_pid, set_parent_death_signal, write_pid
from core.ingest import standard_gate
from core.queue_store import QueueError, TrainingQueue
from core.state.child_result import ChildResult, ExitCode, TrainedFile, write_child_result
from core.state.faults import claim_fault_marker
from core.state.heartbeat import Heartbeat, write_heartbeat
from core.validation.validator import DataValidator
from trainer.checkpoint import DiskFullError

logger = logging.getLogger("trainer.child")


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _suffix(rank: int | None) -> str:
    # rank 0 keeps the single-process names, which every reader (daemon, monitor, tests) already knows
    rank = _rank() if rank is None else rank
    return "" if rank == 0 else f".rank{rank}"


def pid_name(rank: int | None = None) -> str:
    """The pid file name (Layout.pid_file) of a rank: trainer, trainer.rank1, ..."""
    return f"trainer{_suffix(rank)}"


class Faults:
    """Opt-in fault injection for the safety tests: CADENCE_FAULT_INJECT="kind:value[,kind:value]".

    sleep:N    hang at global step N (anti-stuck)      oom:N     raise CUDA OOM at global step N
    exit:N     os._exit(99) at global step N           enospc:N  disk full when checkpointing at step N
    slow:S     sleep S seconds every step (gives tests time to act mid-file)
    startup:S  sleep S seconds after the first load heartbeat of every child (a window to kill it during start-up)
    Each fault except `slow` and `startup` fires once per base_dir (a marker file in status/ records it).
    """

    def __init__(self, spec: str | None, status_dir: Path):
        self.faults: dict[str, float] = {}
        self.status_dir = status_dir
        self._startup_done = False
        for item in filter(None, (spec or "").split(",")):
            kind, _, value = item.partition(":")
            self.faults[kind.strip()] = float(value or 0)

    def _fire(self, kind: str, step: int) -> bool:
        if kind not in self.faults or int(self.faults[kind]) != step:
            return False
        if not claim_fault_marker(self.status_dir, kind, step):
            return False
        logger.warning("fault injection: %s at global step %d", kind, step)
        return True

    def at_step(self, step: int) -> None:
        if self.faults.get("slow"):
            time.sleep(self.faults["slow"])
        if self._fire("sleep", step):
            time.sleep(10_000)
        if self._fire("oom", step):
            import torch

            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fault injection)")
        if self._fire("exit", step):
            os._exit(99)

    def at_load(self) -> None:
        if self.faults.get("startup") and not self._startup_done:
            self._startup_done = True
            time.sleep(self.faults["startup"])

    def at_checkpoint(self, step: int) -> None:
        if self._fire("enospc", step):
            raise DiskFullError(28, "No space left on device (fault injection)")


class DaemonHooks:
    def __init__(self, cfg, file_name: str, faults: Faults):
        self.cfg = cfg
        self.layout = cfg.layout
        self.file_name = file_name
        self.faults = faults
        self.sigterm = False
        self._last_beat = 0.0
        self.stop_reason: str | None = None
        # The global step this process's first training step began at (None: still starting up). Every heartbeat
        # carries it, so the daemon can tell a crash in start-up (the system's) from one in training (maybe the data's).
        self.first_step: int | None = None

    def heartbeat(self, phase: str, global_step: int, step_begins: bool = True) -> None:
        now = time.time()
        if phase == "train":
            self.faults.at_step(global_step)
            if step_begins and self.first_step is None:
                self.first_step = global_step
        elif phase == "checkpoint":
            self.faults.at_checkpoint(global_step)
        elif now - self._last_beat < 0.2 and phase != "checkpoint":
            return
        self._last_beat = now
        write_heartbeat(self.layout, Heartbeat(pid=os.getpid(), phase=phase, global_step=global_step, file=self.file_name,
                                               ts=now, first_step=self.first_step,
                                               ram_pct=psutil.virtual_memory().percent), _rank())
        if phase == "load":
            self.faults.at_load()

    def control(self) -> str | None:
        if self.sigterm:
            self.stop_reason = "SIGTERM"
            return "stop"
        state = read_control(self.layout)
        if state.skip:
            self.stop_reason = "skip"
            return "stop"
        if state.desired == "stopped":
            self.stop_reason = "stop"
            return "stop"
        if state.desired == "paused":
            if self.cfg.daemon.release_model_on_pause:
                self.stop_reason = "pause"
                return "stop"
            return "pause"
        return None

    def wait_while_paused(self) -> str:
        while True:
            action = self.control()
            if action is None:
                return "resume"
            if action == "stop":
                return "stop"
            self.heartbeat("paused", -1)
            time.sleep(0.25)

    def on_checkpoint(self, info) -> None:
        self.heartbeat("train", info.step, step_begins=False)  # a pause checkpoint can come before any step

    def local_stop(self) -> bool:
        if self.sigterm:
            self.stop_reason = "SIGTERM"
        return self.sigterm


def cpu_train_threads(cfg, default: int) -> int:
    """Intra-op threads for a one-process CPU trainer: training.cpu_threads, else `default` (torch's, one per core)
    less the scorer's threads when the comparison engine scores on CPU next to it (at least 1)."""
    if cfg.training.cpu_threads is not None:
        return cfg.training.cpu_threads
    cc = cfg.comparison
    scorer_on_cpu = cc.device in ("cpu", "auto")  # "auto" picks a GPU only where there is one; a CPU trainer has none
    return max(1, default - (cc.torch_threads or 0)) if scorer_on_cpu else default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one claimed file (started by the training daemon).")
    parser.add_argument("--file", required=True)
    parser.add_argument("--file-id", required=True)
    parser.add_argument("--schema", default="chat_sft_v1")
    parser.add_argument("--epochs", type=int, default=None)
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    set_parent_death_signal(signal.SIGTERM)
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the anti-stuck monitor asks for stacks this way
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        return _finish(None, ExitCode.CONFIG_ERROR, str(exc))
    layout = cfg.layout
    write_pid(layout.pid_file(pid_name()))
    hooks = DaemonHooks(cfg, Path(args.file).name, Faults(os.environ.get("CADENCE_FAULT_INJECT"), layout.status))
    signal.signal(signal.SIGTERM, lambda *_: setattr(hooks, "sigterm", True))
    signal.signal(signal.SIGINT, lambda *_: setattr(hooks, "sigterm", True))
    try:
        return _run(cfg, args, hooks)
    finally:
        remove_pid(layout.pid_file(pid_name()))


def _run(cfg, args, hooks: DaemonHooks) -> int:
    # lazy: the daemon imports this module (pid_name) and must never load torch
    import torch

    from trainer import ConfigMismatchError, DataError, NonFiniteLossError, TrainerEngine
    from trainer.distributed import world_size

    try:
        hooks.heartbeat("load", 0)
        if _rank() == 0 and not _standard_gate(cfg, Path(args.file)):  # the gate may move the file: rank 0 only
            return _finish(cfg, ExitCode.REJECTED, f"{Path(args.file).name}: rejected by STANDARD validation (see its .reason.json)")
        hooks.heartbeat("load", 0)
        if not torch.cuda.is_available() and world_size() == 1:
            threads = cpu_train_threads(cfg, torch.get_num_threads())
            if threads != torch.get_num_threads():
                logger.info("training on CPU with %d intra-op thread(s) of %d (training.cpu_threads; the scorer "
                            "keeps comparison.torch_threads=%s)", threads, torch.get_num_threads(),
                            cfg.comparison.torch_threads)
                torch.set_num_threads(threads)
        engine = TrainerEngine(cfg, hooks).setup()
        result = engine.train_file(args.file, file_id=args.file_id, schema_id=args.schema, epochs=args.epochs)
        engine.leave_group()  # all ranks together, before the result is final
    except DataError as exc:
        return _finish(cfg, ExitCode.DATA_ERROR, str(exc))
    except NonFiniteLossError as exc:
        return _finish(cfg, ExitCode.NAN_LOSS, str(exc))
    except DiskFullError as exc:
        return _finish(cfg, ExitCode.DISK_FULL, str(exc))
    except ConfigMismatchError as exc:
        return _finish(cfg, ExitCode.CONFIG_ERROR, str(exc))
    except torch.OutOfMemoryError as exc:
        return _finish(cfg, ExitCode.OOM, f"out of memory: {exc}")
    except OSError as exc:
        if exc.errno == 28:
            return _finish(cfg, ExitCode.DISK_FULL, str(exc))
        logger.exception("training failed")
        return _finish(cfg, ExitCode.UNKNOWN, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    except Exception as exc:  # the loop boundary: classify, never hide
        logger.exception("training failed")
        return _finish(cfg, ExitCode.UNKNOWN, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    trained = TrainedFile(**dataclasses.asdict(result))
    if result.status == "interrupted":
        return _finish(cfg, ExitCode.INTERRUPTED, hooks.stop_reason or "interrupted", result=trained)
    return _finish(cfg, ExitCode.COMPLETED, result.status, result=trained)


def _standard_gate(cfg, path: Path) -> bool:
    """STANDARD validation (the model's own tokenizer and template) of a queued file, here because it needs the
    tokenizer and the daemon never imports torch. A file outside queue/processing/ (a manual run) is not gated."""
    if path.parent.resolve() != cfg.layout.queue_dir("processing").resolve():
        return True
    queue = TrainingQueue(cfg)
    try:
        entry = queue.find(path.name, ("processing",))
    except QueueError:
        return True
    if entry.meta.validation.level == "standard":
        return True  # already passed on an earlier attempt
    return standard_gate(cfg, queue, entry, DataValidator(cfg))


def _finish(cfg, code: ExitCode, message: str, tb: str | None = None, result: TrainedFile | None = None) -> int:
    if cfg is not None:
        write_child_result(cfg.layout, ChildResult(pid=os.getpid(), exit_code=code, category=code.category,
                                                   message=message, traceback=tb, result=result,
                                                   finished_at=time.time()), _rank())
    if code not in (ExitCode.COMPLETED, ExitCode.INTERRUPTED):
        logger.error("%s: %s", code.category, message)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
