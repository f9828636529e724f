"""`cadence config`: the command line of core.config (one validated configuration for every Cadence process.)

Run as:
    cadence config [--config config.json] [key=value ...]   # print the effective config
    cadence config --schema                                 # field reference
"""
from __future__ import annotations

import argparse
import sys

from core.config import ConfigError, add_config_args, load_config, schema_reference


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Validate config.json and print the effective configuration.")
    add_config_args(parser)
    parser.add_argument("--schema", action="store_true", help="print every field with its default and description")
    parser.add_argument("extra", nargs="*", metavar="KEY=VALUE", help="overrides, same as --set")
    args = parser.parse_args(argv)
    if args.schema:
        print(schema_reference())
        return 0
    try:
        cfg = load_config(args.config, args.overrides + args.extra)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(cfg.to_json(), end="")
    return 0
