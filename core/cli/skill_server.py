"""`cadence skills serve`: serve a built-in skill (binary, syllo) over the Skill API.

`python -m data_manager.skills` (what services.py starts) runs the same function.

Run as:
    cadence skills serve binary|syllo [--port 8090] [--notation plain|circled] [--pid-file .pids/skill-binary.pid]
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from data_manager.skills import BUILTIN_SKILLS, DEFAULT_PORTS, create_app, get_skill

logger = logging.getLogger(__name__)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Serve a built-in Cadence skill (GET /health /info /levels, POST /generate /score).")
    parser.add_argument("skill", choices=sorted(BUILTIN_SKILLS), help="skill to serve")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default: 127.0.0.1, loopback only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: binary 8090, syllo 8091)")
    parser.add_argument("--notation", choices=["plain", "circled"], default="plain",
                        help="binary only: digits 0/1 or the original system's circled ⓪① (default: plain)")
    parser.add_argument("--pid-file", default=None, help="write the pid here while running (e.g. .pids/skill-binary.pid)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import uvicorn  # lazy: not loaded for `cadence skills serve --help`

    options = {"notation": args.notation} if args.skill == "binary" else {}
    skill = get_skill(args.skill, **options)
    port = args.port or DEFAULT_PORTS[args.skill]
    pid_file = Path(args.pid_file) if args.pid_file else None
    if pid_file:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(f"{os.getpid()}\n")
    logger.info("serving skill %s on http://%s:%d", skill.name, args.host, port)
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it with the previous handler: make that
    # handler an exit that unwinds through `finally`, so the pid file goes away on a clean stop.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(create_app(skill), host=args.host, port=port, log_level=args.log_level)
    finally:
        if pid_file and pid_file.read_text().strip() == str(os.getpid()):
            pid_file.unlink(missing_ok=True)
    return 0
