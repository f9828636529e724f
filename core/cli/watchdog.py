"""`cadence watchdog`: the command line of safety.watchdog (keep the training daemon alive: restart it when its recorded pid is dead, never look it up by name.)

Run as:
    cadence watchdog [--config config.json] [--set key=value]
    (scripts/start_all.sh starts it; it starts the daemon)
"""
from __future__ import annotations

import argparse
import logging

from core.config import add_config_args, config_or_exit
from safety.watchdog import Watchdog


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Restart the training daemon when it dies (by recorded pid).")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    cfg = config_or_exit(args)
    return Watchdog(cfg, args.config, args.overrides).run()
