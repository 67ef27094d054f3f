"""The one SSE encoder, and the ASGI response that streams it.

Only this module writes ``data:``, ``id:``, ``event:``, ``: ping`` and ``[DONE]``. Handlers yield
typed events (`Event`, `DONE`); resumable streams store the exact bytes `encode` returns, so a
replay is byte-identical to what the first client was sent.

Transport rules (`stream_events`):
- Headers go out at once, before the first event, even while the request is queued.
- While no event arrives for ``ping_interval`` seconds a ``: ping`` comment is sent.
- A client is gone when a send fails, a send does not complete within ``send_timeout`` (a reader
  that stopped reading), or uvicorn delivers ``http.disconnect``; a waiting task races the stream
  for the latter, so there is no per-token polling. The producer is then closed (cancelling the
  generation) and no more bytes are written.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

log = logging.getLogger(__name__)

SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    (b"connection", b"keep-alive"),
]
PING = b": ping\n\n"


@dataclass(frozen=True, slots=True)
class Event:
    data: Any  # dict (JSON-encoded) or str
    id: str | None = None
    event: str | None = None


class _Done:
    pass


DONE = _Done()


def encode(ev: Event | _Done, *, id: str | None = None) -> bytes:
    """Frame one event. ``id`` overrides the event's own id (resumable streams number events)."""
    if isinstance(ev, _Done):
        lines = [] if id is None else [f"id: {id}"]
        lines.append("data: [DONE]")
        return ("\n".join(lines) + "\n\n").encode()
    data = ev.data if isinstance(ev.data, str) else json.dumps(ev.data, separators=(",", ":"),
                                                               ensure_ascii=False)
    out = []
    eid = id if id is not None else ev.id
    if eid is not None:
        out.append(f"id: {eid}")
    if ev.event is not None:
        out.append(f"event: {ev.event}")
    out.extend(f"data: {line}" for line in data.split("\n"))
    return ("\n".join(out) + "\n\n").encode()


async def stream_events(send, receive, body: AsyncIterator[bytes], *, ping_interval: float,
                        send_timeout: float, status: int = 200,
                        headers: list[tuple[bytes, bytes]] | None = None) -> bool:
    """Send an SSE response from already-encoded chunks. Returns True if it ran to the end."""

    async def _send(message: dict) -> None:
        await asyncio.wait_for(send(message), send_timeout if send_timeout > 0 else None)

    await _send({"type": "http.response.start", "status": status,
                 "headers": SSE_HEADERS + (headers or [])})
    # An empty body pushes the headers through middleware that holds them until the first body
    # (Starlette's GZipMiddleware before it exempted text/event-stream), so a queued request's
    # client sees its 200 at once; uvicorn writes nothing for it.
    await _send({"type": "http.response.body", "body": b"", "more_body": True})
    disconnected = asyncio.Event()

    async def _watch() -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                disconnected.set()
                return

    watcher = asyncio.create_task(_watch())
    it = body.__aiter__()
    nxt: asyncio.Task | None = None
    completed = False
    try:
        while not disconnected.is_set():
            if nxt is None:
                nxt = asyncio.ensure_future(it.__anext__())
            gone = asyncio.ensure_future(disconnected.wait())
            timeout = ping_interval if ping_interval > 0 else None
            done, _ = await asyncio.wait({nxt, gone}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            gone.cancel()
            if nxt in done:
                t, nxt = nxt, None
                try:
                    chunk = t.result()
                except StopAsyncIteration:
                    completed = True
                    break
                await _send({"type": "http.response.body", "body": chunk, "more_body": True})
            elif not done:
                await _send({"type": "http.response.body", "body": PING, "more_body": True})
        if completed:
            await _send({"type": "http.response.body", "body": b"", "more_body": False})
    except (TimeoutError, OSError, RuntimeError) as e:  # the client is gone
        log.info("stream ended early: %s", type(e).__name__)
    finally:
        watcher.cancel()
        if nxt is not None:
            nxt.cancel()
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            try:
                await aclose()
            except (RuntimeError, asyncio.CancelledError):
                pass
    return completed


class EventStreamResponse(Response):
    """ASGI response wrapping `stream_events`; ``on_close`` runs however the stream ends."""

    media_type = "text/event-stream"

    def __init__(self, body: AsyncIterator[bytes], *, ping_interval: float, send_timeout: float,
                 headers: dict[str, str] | None = None, on_close=None) -> None:
        self.status_code = 200
        self.background = None
        self.stream = body
        self.ping_interval = ping_interval
        self.send_timeout = send_timeout
        self.extra_headers = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await stream_events(send, receive, self.stream, ping_interval=self.ping_interval,
                                send_timeout=self.send_timeout, headers=self.extra_headers)
        finally:
            if self.on_close is not None:
                self.on_close()
