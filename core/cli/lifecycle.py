"""`cadence lifecycle`: run the lifecycle worker (score checkpoints, pick the champion, deploy, retention, disk, curriculum).

Holds .pids/lifecycle.lock and writes .pids/lifecycle.pid; SIGTERM/SIGINT stop
it at the next safe point. `python -m management` (what services.py starts)
runs the same function.

Run as:
    cadence lifecycle [--config config.json] [--once]
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from core.config import add_config_args, config_or_exit
from core.procs import AlreadyRunning, InstanceLock, remove_pid, write_pid
from management.lifecycle import LifecycleWorker

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--once", action="store_true", help="one pass, then exit")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    layout = cfg.layout.ensure()
    lock = InstanceLock(layout.pids / "lifecycle.lock")
    try:
        lock.acquire()
    except AlreadyRunning:
        print("error: another lifecycle worker is running", file=sys.stderr)
        return 1
    if cfg.comparison.nice:
        os.nice(cfg.comparison.nice)
    worker = LifecycleWorker(cfg)

    def _stop(signum, frame):  # only a flag: the loop stops at its next safe point
        logger.info("signal %s: stopping after the current step", signum)
        worker.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pid_file = layout.pid_file("lifecycle")
    write_pid(pid_file)
    try:
        worker.run(once=args.once)
    finally:
        remove_pid(pid_file)
        lock.release()
    return 0
