"""Helpers for the monitor tests: a real uvicorn server in a thread, an SSE reader, a demo base_dir."""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app, port: int | None = None):
    """Run `app` on 127.0.0.1:<port> in a thread; yields the base URL; stops it on exit."""
    import uvicorn

    from core.config import MonitorConfig
    from core.http_server import server_config

    port = port or free_port()
    cfg = getattr(app.state, "cfg", None)  # a stand-in app (no Cadence config) gets the default limits
    mcfg = cfg.monitor if cfg is not None else MonitorConfig()
    server = uvicorn.Server(server_config(app, "127.0.0.1", port, mcfg.read_timeout, mcfg.keep_alive_timeout,
                                          log_level="warning", timeout_graceful_shutdown=1))
    server.install_signal_handlers = lambda: None
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 15
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    assert server.started, "monitor did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(timeout=10)


@dataclass
class SSE:
    event: str
    id: str | None
    data: str
    received_at: float


def sse_events(response):
    """Parse a text/event-stream httpx response into SSE records (comments/pings skipped)."""
    event, eid, data = "message", None, []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield SSE(event, eid, "\n".join(data), time.perf_counter())
            event, eid, data = "message", None, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            event = value
        elif field == "id":
            eid = value
        elif field == "data":
            data.append(value)


def next_event(events, kind: str, timeout: float, pred=None):
    """The next SSE record of `kind` (matching pred) within `timeout` seconds, or AssertionError."""
    deadline = time.time() + timeout
    for ev in events:
        if ev.event == kind and (pred is None or pred(ev)):
            return ev
        if time.time() > deadline:
            break
    raise AssertionError(f"no {kind!r} event within {timeout}s")
