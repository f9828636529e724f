"""`cadence stuck`: the command line of safety.anti_stuck_monitor (detect a training child that stopped making progress, dump its stacks, and kill it.)

Run as:
    cadence stuck [--kill]
"""
from __future__ import annotations

import argparse
import logging

import psutil

from core.config import add_config_args, config_or_exit
from core.procs import live_pid, terminate
from safety.anti_stuck_monitor import check, dump_stacks


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Check the training child's heartbeat once; optionally kill it when stuck.")
    parser.add_argument("--kill", action="store_true", help="dump stacks and kill a stuck child")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_or_exit(args)
    pid = live_pid(cfg.layout.pid_file("trainer"))
    if pid is None:
        print("no training child running")
        return 0
    verdict = check(cfg, pid, psutil.Process(pid).create_time())
    if verdict is None:
        print(f"trainer {pid}: making progress")
        return 0
    print(f"trainer {pid}: STUCK: {verdict}")
    if args.kill:
        how = dump_stacks(pid, cfg.layout.logs / "trainer.log")
        print(f"stacks dumped via {how}; {terminate(pid, 10)}")
    return 1
