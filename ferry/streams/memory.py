"""The in-process stream store (the default): sessions live in this replica's memory.

Invariants:
- At most one session per ``(owner, conv_id)`` is reachable; ``open`` and ``delete`` end the one
  it replaces (done + ``cancelled`` set + followers woken), so no reader waits on it forever.
- A finished session is reachable for ``ttl`` seconds after ``finish``; expiry is swept lazily
  at the start of every store call (a heap ordered by expiry time), so no background task runs.
- Each session holds at most ``max(buffer_bytes, newest event)`` bytes (see ``ReplayRing``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import AsyncGenerator, Callable

from ferry.streams.base import (
    Session,
    SessionInfo,
    beyond_end,
    check_conv_id,
    lost_offset,
    not_found,
    parse_last_event_id,
)
from ferry.streams.ring import ReplayRing

READ_LIMIT = 64 * 1024  # bytes handed to the reader per chunk: whole events, ~one TCP window

_Key = tuple[str | None, str]


class MemorySession(Session):
    def __init__(
        self, conv_id: str, capacity: int, on_finish: Callable[[MemorySession], None]
    ) -> None:
        super().__init__(conv_id)
        self.ring = ReplayRing(capacity)
        self.started_at = time.time()
        self.completed_at: float | None = None
        self.done = False
        self._on_finish = on_finish
        self._wake = asyncio.Event()  # replaced after every change; followers wait on it

    async def _append(self, data: bytes) -> bool:
        if self.done:
            return False
        self.ring.append(data)
        self._notify()
        return True

    async def finish(self) -> None:
        if not self.done:
            self._end()
            self._on_finish(self)

    def cancel(self) -> None:
        self.cancelled.set()
        if not self.done:
            self._end()

    def info(self) -> SessionInfo:
        return SessionInfo(
            self.conv_id, self.done, self.ring.total, self.started_at, self.completed_at
        )

    def _end(self) -> None:
        self.done = True
        self.completed_at = time.time()
        self._notify()

    def _notify(self) -> None:
        self._wake.set()
        self._wake = asyncio.Event()


class MemoryStore:
    def __init__(
        self, *, buffer_bytes: int, ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.buffer_bytes = buffer_bytes
        self.ttl = ttl
        self._clock = clock
        self._sessions: dict[_Key, MemorySession] = {}
        self._expiry: list[tuple[float, int, _Key, MemorySession]] = []  # heap by expiry time
        self._seq = itertools.count()

    async def open(self, conv_id: str, owner: str | None) -> MemorySession:
        key = (owner, check_conv_id(conv_id))
        self._sweep()
        old = self._sessions.pop(key, None)
        if old is not None:
            old.cancel()
        session = MemorySession(conv_id, self.buffer_bytes, lambda s: self._expire_later(key, s))
        self._sessions[key] = session
        return session

    async def lookup(self, conv_ids: list[str], owner: str | None) -> list[SessionInfo]:
        self._sweep()
        found = (
            self._sessions.get((owner, check_conv_id(c, param="conversation_ids")))
            for c in conv_ids
        )
        return [s.info() for s in found if s is not None]

    async def delete(self, conv_id: str, owner: str | None) -> None:
        self._sweep()
        session = self._sessions.pop((owner, conv_id), None)
        if session is not None:
            session.cancel()

    async def replay(
        self,
        conv_id: str,
        owner: str | None,
        *,
        offset: int = 0,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        self._sweep()
        session = self._sessions.get((owner, conv_id))
        if session is None:
            raise not_found(conv_id)
        ring = session.ring
        param = "from" if last_event_id is None else "Last-Event-ID"
        start = offset if last_event_id is None else parse_last_event_id(last_event_id)
        if start < 0 or start > ring.total:
            raise beyond_end(conv_id, start, ring.total, param=param)
        if last_event_id is not None:
            resolved = ring.event_after(start)
            if resolved is None:
                raise lost_offset(conv_id, start, ring.ring_start, param=param)
            start = resolved
        elif start < ring.ring_start:
            raise lost_offset(conv_id, start, ring.ring_start, param=param)
        return _follow(session, start)

    async def close(self) -> None:
        for session in self._sessions.values():
            session.cancel()
        self._sessions.clear()
        self._expiry.clear()

    def _expire_later(self, key: _Key, session: MemorySession) -> None:
        heapq.heappush(self._expiry, (self._clock() + self.ttl, next(self._seq), key, session))

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            _, _, key, session = heapq.heappop(self._expiry)
            if self._sessions.get(key) is session:
                del self._sessions[key]


async def _follow(session: MemorySession, pos: int) -> AsyncGenerator[bytes, None]:
    """Kept bytes from ``pos``, then live bytes until the session ends."""
    ring = session.ring
    while True:
        wake = session._wake  # taken before the checks, so no append can slip between
        if pos < ring.ring_start:
            raise lost_offset(session.conv_id, pos, ring.ring_start, param="from")
        if pos < ring.total:
            chunk = ring.read(pos, READ_LIMIT)
            pos += len(chunk)
            yield chunk
        elif session.done:
            return
        else:
            await wake.wait()
