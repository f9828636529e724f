"""`cadence follow`: print Cadence's progress every few seconds: state, step, loss, validation loss, throughput, queue, curriculum, deployed version.

Run as:
    cadence follow [--interval 2] [--config config.json]     (Ctrl-C stops following, not Cadence)
"""
from __future__ import annotations

import argparse
import time

from core.config import add_config_args, config_or_exit
from core.live_status import live_status
from core.state.curriculum import read_curriculum


def line(cfg) -> str:
    s = live_status(cfg)
    cur = read_curriculum(cfg.layout.curriculum)
    levels = " ".join(f"{k}:L{v.level}" for k, v in cur.skills.items()) if cur else ""
    deployed = s.get("deployed_version") or "-"
    f = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"
    q = s["queue"]
    step = f"{s['file_step']}/{s['file_total_steps']}" if s.get("file") else "-"
    return (f"{time.strftime('%H:%M:%S')} {s['state']:<10} step {s['global_step'] if s['global_step'] is not None else '-':>6} "
            f"file {step:>9} loss {f(s['loss'], '.4f')} val {f(s['val_loss'], '.4f')} {f(s['tokens_per_s'], '.0f')} tok/s "
            f"queue {q['high'] + q['normal'] + q['low']} {levels} deployed {deployed}")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Follow Cadence's training progress in the terminal.")
    parser.add_argument("--interval", type=float, default=2.0)
    parser.add_argument("--no-inference", action="store_true", help=argparse.SUPPRESS)
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    try:
        while True:
            print(line(cfg), flush=True)
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0

