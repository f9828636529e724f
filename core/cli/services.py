"""`cadence start|stop|status`: the command line of core.services (start, stop and inspect Cadence's processes by recorded pid (the engine behind start_all/stop_all/status.sh).)

Run as:
    cadence start [--no-inference] [--only NAME ...]
    cadence stop [--timeout 60]
    cadence status [--json]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.config import add_config_args, config_or_exit
from core.services import service_table, start, status, stop


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Start/stop/inspect Cadence's processes.")
    parser.add_argument("command", choices=["start", "stop", "status"])
    parser.add_argument("--no-inference", action="store_true", help="start: box A only (inference runs on box B)")
    parser.add_argument("--only", nargs="*", default=None, help="start: only these services")
    parser.add_argument("--timeout", type=float, default=30.0, help="stop: seconds before SIGKILL (daemon: daemon.shutdown_timeout)")
    parser.add_argument("--json", action="store_true")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    config_args = (["--config", str(Path(args.config).resolve())] if args.config else []) + \
        [x for item in args.overrides for x in ("--set", item)]
    if args.command == "start":
        services = service_table(cfg, config_args, inference=not args.no_inference)
        if args.only:
            services = [s for s in services if s["name"] in args.only]
        report = start(cfg, services)
    elif args.command == "stop":
        report = stop(cfg, args.timeout)
    else:
        report = status(cfg)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in report:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
        if not report:
            print("nothing to do")
    return 0 if all("exited" not in str(r.get("action", "")) for r in report) else 1
