"""`cadence ingest`: the command line of core.ingest (ingest: take ready files from inbox/, validate them (spec + QUICK), queue or reject them.)

Run as:
    cadence ingest [--once] [--config config.json]     # watch inbox/ (Ctrl-C stops)
"""
from __future__ import annotations

import argparse
import logging
import threading

from core.config import add_config_args, config_from_args
from core.ingest import Ingestor


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Watch inbox/ and queue or reject every file dropped there.")
    add_config_args(parser)
    parser.add_argument("--once", action="store_true", help="take what is complete now and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    ingestor = Ingestor(cfg)
    if args.once:
        for r in ingestor.scan_once():
            print(f"{r.outcome:9} {r.original_name} -> {r.state or '-'}/{r.name or '-'}  {r.message}")
        return 0
    stop = threading.Event()
    try:
        ingestor.run_forever(stop)
    except KeyboardInterrupt:
        stop.set()
    return 0
