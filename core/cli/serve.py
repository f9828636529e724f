"""`cadence serve`: run the inference server (OpenAI-compatible, batched, zero-drop model swap).

Binds inference.host:inference.port (127.0.0.1:8765 by default), writes
.pids/inference.pid while it runs, and on SIGTERM/SIGINT stops accepting
connections, lets in-flight requests finish within inference.drain_timeout,
then exits 0. `python -m inference` (what services.py and systemd start) runs
the same function.

Run as:
    cadence serve [--config config.json] [--set inference.port=8765] [--set inference.model_path=models/deployed/v001]
"""
from __future__ import annotations

import argparse
import logging

from core.config import add_config_args, config_or_exit
from core.procs import remove_pid, write_pid

logger = logging.getLogger(__name__)


def _server_class():
    import uvicorn  # lazy: `cadence serve --help` must not load the server stack

    class DrainingServer(uvicorn.Server):
        """uvicorn, but a SIGTERM/SIGINT is a graceful drain that exits 0 (uvicorn re-raises the signal)."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()
            state = getattr(self.config.app.state, "cadence", None) if hasattr(self.config.app, "state") else None
            if state is not None:
                state.shutting_down = True  # /ready -> 503 and new requests -> 503 while in-flight ones finish
            logger.info("signal %s: draining in-flight requests (up to %.0fs)", sig, self.config.timeout_graceful_shutdown)

    return DrainingServer


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    add_config_args(parser)
    parser.add_argument("--host", default=None, help="bind address (default: inference.host)")
    parser.add_argument("--port", type=int, default=None, help="port (default: inference.port)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    cfg = config_or_exit(args)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # lazy: the app imports torch and transformers, which `cadence serve --help` must not load
    from core.http_server import server_config
    from inference.app import create_app

    host = args.host or cfg.inference.host
    port = args.port or cfg.inference.port
    pid_file = cfg.layout.pid_file("inference")
    write_pid(pid_file)
    try:
        config = server_config(create_app(cfg), host, port, cfg.inference.read_timeout, cfg.inference.keep_alive_timeout,
                               log_level=args.log_level, access_log=False,
                               timeout_graceful_shutdown=max(1, int(cfg.inference.drain_timeout)))
        _server_class()(config).run()
    finally:
        remove_pid(pid_file)
    return 0
