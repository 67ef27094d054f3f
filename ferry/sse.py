"""The one SSE encoder, and the ASGI response that streams it.

Only this module writes ``data:``, ``id:``, ``event:``, ``: ping`` and ``[DONE]``. Handlers yield
typed events (`Event`, `DONE`); resumable streams store the exact bytes `encode` returns, so a
replay is byte-identical to what the first client was sent.

Transport rules (`stream_events`):
- Headers go out at once, before the first event, even while the request is queued.
- While no event arrives for ``ping_interval`` seconds a ``: ping`` comment is sent.
- A client is gone when a send fails, a send does not complete within ``send_timeout`` (a reader
  that stopped reading), or uvicorn delivers ``http.disconnect`` (a watcher task waits for it, so
  there is no per-token polling). The producer is then closed (cancelling the generation) and no
  more bytes are written.
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
    """Send an SSE response from already-encoded chunks. Returns True if it ran to the end.

    The calling task reads the body and sends each chunk itself, and no task, waiter or timer is
    created per event: at c=1 the event loop's CPU per token competes with llama.cpp's threads
    for the same cores. Two helpers live for the whole stream and wake rarely: a watcher for
    ``http.disconnect`` and a watchdog that sends the pings and ends a send older than
    ``send_timeout`` (it reads the time a send started; a send records it, nothing more). Either
    ends the stream by cancelling the calling task; a lock keeps a ping and a chunk apart.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    lock = asyncio.Lock()
    ended = False  # set by a helper that cancelled the task, or once the stream is over
    sending = False
    send_at = loop.time()  # when the last (or current) send began

    async def _send(message: dict) -> None:
        nonlocal sending, send_at
        send_at = loop.time()
        sending = True
        try:
            await send(message)
        finally:
            sending = False

    def _end(why: str) -> None:  # the client is gone: stop the reader and the producer with it
        nonlocal ended
        if not ended:  # the task is then suspended in the loop below, where this is caught
            ended = True
            log.info("stream ended early: %s", why)
            task.cancel()

    async def _watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        _end("client disconnected")

    async def _watchdog() -> None:
        while True:
            now = loop.time()
            if sending and send_timeout > 0 and now - send_at >= send_timeout:
                return _end("send timed out")
            if not sending and ping_interval > 0 and now - send_at >= ping_interval:
                try:
                    async with lock, asyncio.timeout(send_timeout or None):
                        await _send({"type": "http.response.body", "body": PING,
                                     "more_body": True})
                except (TimeoutError, OSError, RuntimeError) as e:
                    return _end(type(e).__name__)
                continue
            due = [(send_at if sending else now) + send_timeout] if send_timeout > 0 else []
            if ping_interval > 0:
                due.append((now if sending else send_at) + ping_interval)
            await asyncio.sleep(min(due) - now)

    helpers = [asyncio.create_task(_watch())]
    if ping_interval > 0 or send_timeout > 0:
        helpers.append(asyncio.create_task(_watchdog()))
    it = body.__aiter__()
    completed = False
    try:
        await _send({"type": "http.response.start", "status": status,
                     "headers": SSE_HEADERS + (headers or [])})
        # An empty body pushes the headers through middleware that holds them until the first
        # body (Starlette's GZipMiddleware before it exempted text/event-stream), so a queued
        # request's client sees its 200 at once; uvicorn writes nothing for it.
        await _send({"type": "http.response.body", "body": b"", "more_body": True})
        async for chunk in it:
            async with lock:
                await _send({"type": "http.response.body", "body": chunk, "more_body": True})
        async with lock:
            await _send({"type": "http.response.body", "body": b"", "more_body": False})
        completed = True
    except (TimeoutError, OSError, RuntimeError) as e:  # the client is gone
        log.info("stream ended early: %s", type(e).__name__)
    except asyncio.CancelledError:
        if not ended:
            raise
        task.uncancel()
    finally:
        ended = True  # a disconnect from here on must not cancel the task
        for h in helpers:
            h.cancel()
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
