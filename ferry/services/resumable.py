"""Resumable streams: the generation writes every SSE byte into a stream-store session; clients
(the one that started it, and any that reconnect) read the session, not the generation.

Invariants:
- Bytes are appended to the store before any client can see them, in order, each event with an
  ``id:`` equal to the byte offset where it starts; ``: ping`` comments are stored too (without an
  id), so a client's byte count always equals the store's offsets. Readers add no bytes of their own.
- A client disconnecting never cancels the generation; replacing the session (same conversation id)
  or deleting it (on any replica, through the store) does, within one engine step.
- The pump always finishes its session (``async with``), so a finished session gets its TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator

from ferry.errors import FerryError
from ferry.services.generation import Generation
from ferry.sse import PING, Event, encode
from ferry.streams import Session, StreamStore

log = logging.getLogger(__name__)


async def guarded(events: AsyncIterator) -> AsyncGenerator:
    """Pass events through; a FerryError raised after the stream started becomes a
    ``data: {"error": ...}`` event and the stream ends cleanly."""
    try:
        async for ev in events:
            yield ev
    except FerryError as e:
        yield Event(e.to_body())


async def encoded(events: AsyncIterator) -> AsyncGenerator[bytes, None]:
    """A plain (not resumable) stream's bytes."""
    async for ev in guarded(events):
        yield encode(ev)


class StreamSessions:
    """Starts and owns the background pumps of resumable generations."""

    def __init__(self, store: StreamStore, ping_interval: float) -> None:
        self.store = store
        self.ping_interval = ping_interval
        self._pumps: set[asyncio.Task] = set()

    @property
    def live(self) -> int:
        return len(self._pumps)

    async def start(self, conv_id: str, owner: str | None, events: AsyncIterator,
                    gen: Generation) -> asyncio.Task:
        """Open the session and start pumping into it; returns the pump (done when stored)."""
        try:
            session = await self.store.open(conv_id, owner)
        except BaseException:
            gen.cancel()
            raise
        task = asyncio.create_task(self._pump(session, events, gen), name=f"stream:{conv_id}")
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return task

    async def _pump(self, session: Session, events: AsyncIterator, gen: Generation) -> None:
        watch = asyncio.create_task(session.cancelled.wait())
        watch.add_done_callback(lambda _: gen.cancel())
        chunks = guarded(events)  # an async generator is its own iterator
        try:
            async with session:
                nxt = asyncio.ensure_future(chunks.__anext__())
                while True:
                    timeout = self.ping_interval if self.ping_interval > 0 else None
                    done, _ = await asyncio.wait({nxt}, timeout=timeout)
                    if not done:
                        await session.append(PING)
                        continue
                    try:
                        ev = nxt.result()
                    except StopAsyncIteration:
                        break
                    eid = session.next_event_id()  # numbered at append time: pings shift offsets
                    await session.append(encode(ev, id=eid), eid)
                    nxt = asyncio.ensure_future(chunks.__anext__())
        except FerryError as e:  # the store failed (e.g. Redis went away): stop generating
            log.warning("resumable stream %s stopped: %s", session.conv_id, e.message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("resumable stream %s failed", session.conv_id)
        finally:
            watch.cancel()
            gen.cancel()
            await chunks.aclose()

    async def close(self) -> None:
        for t in list(self._pumps):
            t.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        await self.store.close()
