"""`cadence curriculum`: the command line of data_manager.curriculum_manager (the curriculum: the training level of each skill, and when it goes up.)

Run as:
    cadence curriculum status [--json]
    cadence curriculum set SKILL LEVEL     # operator override, logged in the state
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from data_manager.curriculum_manager import Curriculum


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Show or override the curriculum levels (status/curriculum.json).")
    add_config_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="levels, counted evals and recent accuracy per skill")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_set = sub.add_parser("set", help="operator override of a skill's level")
    p_set.add_argument("skill")
    p_set.add_argument("level", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    cfg = config_or_exit(args)
    curriculum = Curriculum.from_config(cfg)
    skills = [s.name for s in cfg.data_manager.skills]
    if args.command == "set":
        if args.level < 1:
            print("error: level must be >= 1", file=sys.stderr)
            return 2
        curriculum.set_level(args.skill, args.level)
        return 0
    status = curriculum.status(skills)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"curriculum ({curriculum.path}): advance when the mean of the last {status['window']} evals "
          f"at the level >= {status['threshold']}")
    for name, s in status["skills"].items():
        mean = "-" if s["recent_mean"] is None else f"{s['recent_mean']:.3f}"
        last = s["last_eval"]
        last_txt = "none" if not last else f"L{last['level']} acc={last['accuracy']:.3f} step={last['step']}"
        print(f"  {name:<10} level {s['level']:<3} evals at level {s['evals_at_level']:<3} recent mean {mean:<6} "
              f"last eval {last_txt}  promotions {len(s['promotions'])}")
    return 0
