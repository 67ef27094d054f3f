"""Running the app under uvicorn (uvloop + httptools), with half-close support.

Why a protocol subclass: stock uvicorn (like hypercorn and granian) treats a client's FIN as a
disconnect. `HttpToolsProtocol.eof_received` returns None, so the transport closes itself and the
in-flight response is dropped — yet a client that sends its request and then
``shutdown(SHUT_WR)`` is still reading. `HalfCloseProtocol` returns True from ``eof_received``
while a complete request is being answered (the transport stays open for writing), and closes the
connection once that response (and any pipelined ones) is complete. Only a failed write or a
reset (``connection_lost``) means the client is gone. A FIN in the middle of a request body still
closes the connection, as the request can never complete.

Connection limit: with ``--max-connections N`` the first N open connections are admitted (counted
from accept to close, per server); a connection accepted beyond them is not refused at the socket
(a client would hang in the backlog or see a reset) but answered at once: its first request gets a
503 in the OpenAI error envelope with ``Connection: close``, without reaching the app.

Graceful shutdown: on SIGTERM uvicorn stops accepting, lets in-flight requests finish for up to
``--shutdown-timeout`` seconds, then exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
import sys

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ferry import logs
from ferry.errors import ServiceUnavailable
from ferry.settings import Settings

log = logging.getLogger(__name__)

# Per-connection kernel send buffer and transport high-water mark: a reader that stops reading
# fills these quickly, so its sends block and --send-timeout ends the stream; server memory per
# connection stays bounded. Token streams are low-bandwidth, so this costs fast readers nothing.
SEND_BUFFER_BYTES = 128 * 1024
WRITE_HIGH_WATER = 64 * 1024


class HalfCloseProtocol(HttpToolsProtocol):
    """Also: a request head (request line and headers) must arrive within ``header_timeout``
    seconds of the connection opening or of the request's first byte, so slowloris connections
    trickling header bytes are closed instead of being held forever."""

    _peer_eof = False
    header_timeout: float = 30.0
    _header_timer: asyncio.TimerHandle | None = None
    max_connections: int = 0  # 0 = no limit
    admitted: set[HalfCloseProtocol]  # per server: set by uvicorn_config's subclass
    _over_limit = False

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        super().connection_made(transport)
        if self.max_connections:
            self._over_limit = len(self.admitted) >= self.max_connections
            if not self._over_limit:
                self.admitted.add(self)
        self._arm_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        if not self._over_limit:
            return super().on_headers_complete()
        peer = self.client[0] if self.client else "?"
        log.warning("503 to %s: %d connections open (--max-connections)", peer,
                    len(self.admitted), extra={"status": 503, "client": peer})
        app, self.app = self.app, _too_many_connections  # this request only
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self.max_connections:
            self.admitted.discard(self)
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        if self.header_timeout > 0:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_late)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_late(self) -> None:
        self._header_timer = None
        in_flight = self.cycle is not None and not self.cycle.response_complete
        if not in_flight and not self.transport.is_closing():
            self.transport.close()

    # asyncio.Protocol.eof_received returns bool | None (True keeps the transport half-open);
    # uvicorn's annotation narrows it to None
    def eof_received(self) -> bool | None:  # type: ignore[override]
        cycle = self.cycle
        if cycle is None or cycle.response_complete or cycle.more_body:
            return None  # idle keep-alive connection or a truncated request: close
        self._peer_eof = True
        return True

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._peer_eof and not self.pipeline and not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self.transport.close()


async def _too_many_connections(scope, receive, send) -> None:
    """ASGI answer to a request on a connection beyond --max-connections."""
    err = ServiceUnavailable("the server has reached its connection limit (--max-connections); "
                             "retry shortly", code="too_many_connections")
    body = json.dumps(err.to_body()).encode()
    await send({"type": "http.response.start", "status": err.status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        (b"retry-after", b"1"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    protocol = type("FerryHttpProtocol", (HalfCloseProtocol,),
                    {"header_timeout": settings.header_timeout,
                     "max_connections": settings.max_connections, "admitted": set()})
    # JSON lines: uvicorn's loggers propagate to the root's JSON handler instead of their own
    log_config = None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG
    grace = settings.shutdown_timeout  # uvicorn annotates int; it goes to asyncio.wait_for
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop",
                          http=protocol, lifespan="on", access_log=False,
                          timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
                          log_level=settings.log_level.lower(), server_header=False,
                          ssl_certfile=settings.ssl_certfile, ssl_keyfile=settings.ssl_keyfile,
                          log_config=log_config)


def serve(settings: Settings) -> int:
    from ferry.app import create_app

    logs.configure(settings.log_level, settings.log_format)
    if settings.ray or settings.print_ray_config or settings.front_door_only:
        from ferry.deploy.launch import serve_ray  # Ray is imported only on this path

        return serve_ray(settings)
    try:
        app = create_app(settings)  # resolves (downloads) hub models named with --model
    except ValueError as e:  # a bad model name, alias or models config: one line, no traceback
        print(f"ferry serve: error: {e}", file=sys.stderr)  # noqa: T201 -- the CLI's own line
        return 2
    return run(app, settings)


def run(app, settings: Settings) -> int:
    """Serve ``app`` with Ferry's protocol until SIGTERM/SIGINT (graceful, exit 0)."""
    server = uvicorn.Server(uvicorn_config(app, settings))
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, with whatever handler
    # was installed before it; a no-op handler makes a completed graceful shutdown exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return 0
