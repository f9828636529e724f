"""`cadence monitor`: run the Cadence monitor: JSON API, live feed (SSE) and web page on one port.

Binds monitor.host:monitor.port (127.0.0.1:8080 by default), writes
.pids/monitor.pid while it runs (removed on exit). Open http://127.0.0.1:8080/
and paste the admin token (auth.admin_token_file, control/admin.token by
default) into the page once to enable the control buttons. `python -m
monitoring` (what services.py and systemd start) runs the same function.

Run as:
    cadence monitor [--config config.json] [--set monitor.port=8080] [--host 127.0.0.1] [--port 8080]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from core.auth import admin_token_path
from core.config import add_config_args, config_or_exit
from core.procs import live_pid, remove_pid, write_pid

logger = logging.getLogger("monitoring")


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--host", default=None, help="bind address (default: monitor.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: monitor.port)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    # lazy: the web stack (fastapi, uvicorn) is not loaded for `cadence monitor --help`
    import uvicorn

    from core.http_server import server_config
    from monitoring.app import create_app

    host = args.host or cfg.monitor.host
    port = args.port or cfg.monitor.port
    if host not in ("127.0.0.1", "localhost", "::1"):
        logger.warning("binding %s: the read API and page are open to the network; controls still need the token",
                       host)
    pid_file = cfg.layout.pid_file("monitor")
    other = live_pid(pid_file)
    if other is not None and other != os.getpid():
        print(f"error: a monitor is already running for {cfg.layout.base_dir} (pid {other}, {pid_file})",
              file=sys.stderr)
        return 1
    app = create_app(cfg)
    write_pid(pid_file)
    logger.info("monitor on http://%s:%d/ (admin token in %s)", host, port, admin_token_path(cfg))
    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # SIGTERM/SIGINT are a clean stop (exit 0), not re-raised
            feed = getattr(app.state, "feed", None)
            if feed is not None:
                feed.close_streams()  # open SSE streams end now; browsers reconnect to the next monitor

    server = Server(server_config(app, host, port, cfg.monitor.read_timeout, cfg.monitor.keep_alive_timeout,
                                  log_level=args.log_level, access_log=False, timeout_graceful_shutdown=3))
    try:
        server.run()
    finally:
        remove_pid(pid_file)
    return 0 if server.started else 1
