"""`cadence daemon`: the command line of core.daemon (the 24/7 training daemon: a supervisor that never imports torch.)

Run as:
    cadence daemon [--config config.json] [--set key=value]
    (normally started by scripts/start_all.sh under safety/daemon_watchdog.py)
"""
from __future__ import annotations

import argparse
import logging
import sys

from core.config import ConfigError, add_config_args
from core.daemon import TrainingDaemon


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Cadence's 24/7 training daemon (supervisor; training runs in a child).")
    add_config_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")
    try:
        daemon = TrainingDaemon(args.config, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return daemon.run()
