"""`cadence validate`: the command line of core.validation.validator (dataValidator: QUICK on arrival, STANDARD before training, DEEP on request.)

Run as:
    cadence validate FILE [--schema chat_sft_v1] [--level quick|standard|deep] [--json]
"""
from __future__ import annotations

import argparse
import json
import logging

from core.config import add_config_args, config_from_args
from core.validation.validator import DataValidator


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Validate a JSONL training file and print its report.")
    add_config_args(parser)
    parser.add_argument("file")
    parser.add_argument("--schema", default=None, help="dataset spec id (default: daemon.default_schema)")
    parser.add_argument("--level", choices=["quick", "standard", "deep"], default="quick")
    parser.add_argument("--json", action="store_true", help="print the machine-readable report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    cfg = config_from_args(args)
    validator = DataValidator(cfg)
    schema = args.schema or cfg.daemon.default_schema
    rep = validator.quick(args.file, schema)
    if rep.ok and args.level != "quick":
        rep.merge(getattr(validator, args.level)(args.file, schema))
        rep.level = args.level
    print(json.dumps(rep.to_dict(), indent=2) if args.json else rep.summary())
    return 0 if rep.ok else 1
