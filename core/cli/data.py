"""`cadence data`: the command line of data_manager.manager (data manager: keeps the queue fed with curriculum data and gives the comparison engine its eval sets.)

Run as:
    cadence data status [--json]
    cadence data generate [--force] [--count N] [--skill NAME]
    cadence data tick | prune | evalsets
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

from core.config import add_config_args, config_or_exit
from data_manager.manager import DataManager
from data_manager.quality import QualityError
from data_manager.skill_api_client import SkillAPIError


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Cadence data manager: curriculum data generation, pruning, eval sets.")
    add_config_args(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="queue depth, gate, rotation, levels, last batch")
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    p_gen = sub.add_parser("generate", help="generate one batch into inbox/ (obeys depth and cooldown unless --force)")
    p_gen.add_argument("--force", action="store_true", help="ignore queue depth, cooldown and data_manager.enabled")
    p_gen.add_argument("--count", type=int, default=None, help="samples in the batch (default data_manager.batch_size)")
    p_gen.add_argument("--skill", default=None, help="skill to generate (default: next in rotation)")
    sub.add_parser("tick", help="one daemon step: prune, then generate if the gate opens")
    sub.add_parser("prune", help="defer queued files below the current level (queue/deferred/; the queue's retry brings one back)")
    sub.add_parser("evalsets", help="write the held-out eval set of every skill at its current level")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = config_or_exit(args)
    manager = DataManager(cfg)
    try:
        if args.command == "status":
            status = manager.status()
            if args.json:
                print(json.dumps(status, indent=2, default=str))
            else:
                q = status["queue"]
                print(f"data manager {'enabled' if status['enabled'] else 'disabled'}; queued {q['total']} "
                      f"(high {q['high']}, normal {q['normal']}, low {q['low']}, inbox {q['inbox']}), "
                      f"min depth {status['min_queue_depth']}, deferred {status['deferred_files']}")
                print(f"next: {status['next_skill']} -> {'generate' if status['would_generate'] else 'wait'} ({status['reason']})")
                print("levels: " + ", ".join(f"{k} {v}" for k, v in status["levels"].items()))
                if status.get("last_batch"):
                    b = status["last_batch"]
                    print(f"last batch: {b['file']} ({b['skill']} L{b['level']}, {b['count']} samples, {b['at']})")
                if status.get("last_error"):
                    print(f"last error: {status['last_error']['message']} ({status['last_error']['at']})")
            return 0
        if args.command == "generate":
            if args.count is not None and args.count < 1:
                print("error: --count must be >= 1", file=sys.stderr)
                return 2
            if not args.force:
                ok, reason = manager.should_generate()
                if not ok:
                    print(f"not generating: {reason} (use --force)")
                    return 0
            batch = manager.generate_batch(skill=args.skill, count=args.count)
            print(f"wrote {batch.path} ({batch.skill} level {batch.level}, {batch.count} samples, seed {batch.seed})")
            return 0
        if args.command == "tick":
            result = manager.tick()
            print(f"{result.action}: {result.reason}" + (f" -> {result.batch.path}" if result.batch else ""))
            for d in result.deferred:
                print(f"deferred {d}")
            return 0 if result.action != "failed" else 1
        if args.command == "prune":
            for d in manager.prune_stale():
                print(f"deferred {d}")
            return 0
        if args.command == "evalsets":
            for skill in manager.skills:
                level, samples = manager.eval_set(skill)
                print(f"{manager.eval_set_path(skill, level)}: {len(samples)} samples")
            return 0
    except (SkillAPIError, QualityError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
