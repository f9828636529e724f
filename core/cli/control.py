"""`cadence control`: pause, resume, stop, skip or inspect the training daemon (core.live_status), up or not.

Requests are written to control/state.json and applied at the next step
boundary (a request made while the daemon is down applies when it starts):

  pause              checkpoint at the next step, then wait (model kept or released per daemon.release_model_on_pause)
  resume             continue the same file where it stopped (also restarts a daemon stopped by `stop`)
  stop               checkpoint at the next step and exit; the file goes back to the FRONT of its queue with its progress
  stop --after-file  finish the current file, then stop
  skip               set the current file aside (queue/failed/, with the reason; `cadence queue retry` brings it back)
  clear              forget every pending request
  status             what is really running (stale status files and dead pids are shown as such)

Run as:
    cadence control pause|resume|stop|skip|clear|status [--json] [--reason TEXT]     (cadence pause|resume also work)
    python3 core/training_controller.py ...        (the seed path, the same command)
"""
from __future__ import annotations

import argparse
import json

from core.config import add_config_args, config_or_exit
from core.control import request
from core.live_status import format_status, live_status
from core.procs import live_pid


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Control the Cadence training daemon (works whether or not it is running).",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("action", choices=["pause", "resume", "stop", "skip", "clear", "status"])
    parser.add_argument("--after-file", action="store_true", help="stop: finish the current file first")
    parser.add_argument("--reason", default=None, help="recorded with the request (and with a skipped file)")
    parser.add_argument("--json", action="store_true", help="status: machine-readable output")
    add_config_args(parser)
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    cfg.layout.control.mkdir(parents=True, exist_ok=True)
    if args.action == "status":
        s = live_status(cfg)
        print(json.dumps(s, indent=2) if args.json else format_status(s))
        return 0
    action = "stop_after_file" if args.action == "stop" and args.after_file else args.action
    state = request(cfg.layout, action, args.reason)
    running = live_pid(cfg.layout.pid_file("daemon")) is not None
    when = "at the next step boundary" if running else "when the daemon starts (it is not running)"
    if args.json:
        print(json.dumps({"requested": action, "applies": when, "control": state.to_json()}, indent=2))
    else:
        print(f"{action} requested; applies {when}")
    return 0
