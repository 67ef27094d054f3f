"""Running the app under uvicorn (uvloop + httptools), with half-close support.

Why a protocol subclass: stock uvicorn (like hypercorn and granian) treats a client's FIN as a
disconnect. `HttpToolsProtocol.eof_received` returns None, so the transport closes itself and the
in-flight response is dropped — yet a client that sends its request and then
``shutdown(SHUT_WR)`` is still reading. `HalfCloseProtocol` returns True from ``eof_received``
while a complete request is being answered (the transport stays open for writing), and closes the
connection once that response (and any pipelined ones) is complete. Only a failed write or a
reset (``connection_lost``) means the client is gone. A FIN in the middle of a request body still
closes the connection, as the request can never complete.

Graceful shutdown: on SIGTERM uvicorn stops accepting, lets in-flight requests finish for up to
``--shutdown-timeout`` seconds, then exits 0.
"""

from __future__ import annotations

import logging
import signal
import socket

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ferry.settings import Settings


# Per-connection kernel send buffer and transport high-water mark: a reader that stops reading
# fills these quickly, so its sends block and --send-timeout ends the stream; server memory per
# connection stays bounded. Token streams are low-bandwidth, so this costs fast readers nothing.
SEND_BUFFER_BYTES = 128 * 1024
WRITE_HIGH_WATER = 64 * 1024


class HalfCloseProtocol(HttpToolsProtocol):
    _peer_eof = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
            except OSError:
                pass
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        super().connection_made(transport)

    def eof_received(self) -> bool | None:
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


def uvicorn_config(app, settings: Settings) -> uvicorn.Config:
    return uvicorn.Config(app, host=settings.host, port=settings.port, loop="uvloop",
                          http=HalfCloseProtocol, lifespan="on", access_log=False,
                          timeout_graceful_shutdown=settings.shutdown_timeout,
                          log_level=settings.log_level.lower(), server_header=False)


def serve(settings: Settings) -> int:
    from ferry.app import create_app

    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = uvicorn.Server(uvicorn_config(create_app(settings), settings))
    # uvicorn re-raises the captured SIGTERM after its graceful shutdown, with whatever handler
    # was installed before it; a no-op handler makes a completed graceful shutdown exit 0.
    signal.signal(signal.SIGTERM, lambda *_: None)
    server.run()
    return 0
