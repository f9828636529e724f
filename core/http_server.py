"""uvicorn settings shared by both servers, including a timeout for connections that never finish a request.

uvicorn (h11) times out an idle keep-alive connection only after a first
response, and restarts that timer on every byte received: a client that
connects and sends nothing, or one header byte every few seconds, holds its
connection forever (200 half-open connections stayed open). `HeaderTimeoutH11`
arms the timer as soon as the connection is made and cancels it only when a
whole request head has arrived, so a connection gets `header_timeout` seconds
for each request line + headers, and `keep_alive` seconds of idleness between
requests. A body that stalls is the ASGI guard's business (core/http_guard.py,
`read_timeout`); headers are bounded in size by h11 (`H11_MAX_HEADER_BYTES`).

This subclasses uvicorn's own h11 protocol (the only one installed; httptools
is not a dependency) because no uvicorn setting covers the time before the
first request; tests/test_inference_hardening.py proves it on a live server.

Library only: `server_config(app, host, port, header_timeout, keep_alive, **uvicorn_kwargs)`.
"""
from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

H11_MAX_HEADER_BYTES = 64 * 1024  # uvicorn's default is 16 KB; paths of real clients stay far below either


def header_timeout_protocol(header_timeout: float):
    class HeaderTimeoutH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(header_timeout, self.timeout_keep_alive_handler)

        def data_received(self, data: bytes) -> None:
            # unlike the parent, bytes alone do not reset the timer: handle_events cancels it once a request head
            # is complete, and on_response_complete re-arms it (with the keep-alive timeout) for the next one
            self.conn.receive_data(data)
            self.handle_events()

    return HeaderTimeoutH11


def server_config(app, host: str, port: int, header_timeout: float, keep_alive: float, **kwargs) -> uvicorn.Config:
    """A uvicorn.Config for `app` with Cadence's connection limits."""
    # loop="auto" is uvicorn's default, written out: uvloop when installed (a dependency on Linux; the vLLM front
    # relays each token for a little less CPU on it, docs/dependencies.md), else asyncio's loop.
    kwargs.setdefault("loop", "auto")
    return uvicorn.Config(app, host=host, port=port, http=header_timeout_protocol(header_timeout),
                          timeout_keep_alive=keep_alive, h11_max_incomplete_event_size=H11_MAX_HEADER_BYTES,
                          **kwargs)
