"""`cadence compare`: the command line of management.model_comparison_engine (comparison engine: score every new checkpoint once, rank them, and decide the champion.)

Run as:
    cadence compare status [--json]
    cadence compare score [--checkpoint checkpoint-120] [--json]
    cadence compare champion [--json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from core.config import add_config_args, config_or_exit
from management.deployment_orchestrator import active_content_id, tried_content_ids
from management.champion_rule import pick_champion
from management.model_comparison_engine import _print_table, load_ledger, score_new_checkpoints
from trainer.checkpoint import list_checkpoints


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Score checkpoints, rank them and show the champion (status/comparisons.json).")
    add_config_args(parser)
    parser.add_argument("command", choices=["status", "score", "champion"], nargs="?", default="status")
    parser.add_argument("--checkpoint", help="score only this checkpoint (score)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = config_or_exit(args)
    if args.command == "score":
        os.nice(cfg.comparison.nice) if cfg.comparison.nice else None
        entries = score_new_checkpoints(cfg, only=args.checkpoint)
        if args.json:
            print(json.dumps(entries, indent=2, default=str))
        else:
            print(f"scored {len(entries)} checkpoint(s)")
            _print_table(load_ledger(cfg))
        return 0
    ledger = load_ledger(cfg)
    if args.command == "champion":
        base = active_content_id(cfg)
        on_disk = {c.path.name for c in list_checkpoints(cfg.layout.current_model)}  # as the lifecycle picks
        entry, decision = pick_champion(cfg, ledger, base, tried_content_ids(cfg), on_disk)
        out = {"champion": entry and entry["checkpoint"], "decision": decision and decision.to_dict(), "deployed_content_id": base}
        print(json.dumps(out, indent=2) if args.json else
              f"champion: {out['champion'] or 'none'} ({decision.reason if decision else 'no scored checkpoints'})")
        return 0
    if args.json:
        print(json.dumps(ledger, indent=2, default=str))
    else:
        _print_table(ledger)
    return 0
