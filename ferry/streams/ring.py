"""A byte ring that remembers event boundaries: the replay buffer of one in-memory session.

Invariants:
- Kept events are contiguous: they cover exactly ``[ring_start, total)``.
- Whole events are dropped, oldest first, while more than ``capacity`` bytes are kept; the newest
  event is always kept, so at most ``max(capacity, size of the newest event)`` bytes are held.
- ``last_dropped_start`` is the start of the newest dropped event (-1 if none), so the event
  after it (which starts at ``ring_start``) can still be found for a ``Last-Event-ID``.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right

_COMPACT_AFTER = 1024  # dropped slots tolerated before the lists are shifted (amortised O(1))


class ReplayRing:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least one byte")
        self.capacity = capacity
        self.total = 0
        self.ring_start = 0
        self.last_dropped_start = -1
        self._retained = 0
        self._starts: list[int] = []
        self._chunks: list[bytes] = []
        self._head = 0  # index of the oldest kept event in _starts/_chunks

    def append(self, event: bytes) -> None:
        self._starts.append(self.total)
        self._chunks.append(event)
        self.total += len(event)
        self._retained += len(event)
        while self._retained > self.capacity and len(self._chunks) - self._head > 1:
            self._drop_oldest()

    def event_after(self, event_start: int) -> int | None:
        """Start offset of the first event starting after ``event_start`` (``total`` if none
        yet), or ``None`` if that event was dropped. Caller ensures ``event_start <= total``."""
        if event_start >= self.ring_start:
            i = bisect_right(self._starts, event_start, lo=self._head)
            return self._starts[i] if i < len(self._starts) else self.total
        return self.ring_start if event_start == self.last_dropped_start else None

    def read(self, offset: int, limit: int) -> bytes:
        """Kept bytes from ``offset`` on: the rest of its event plus whole events up to ~limit.
        Caller ensures ``ring_start <= offset <= total``."""
        first = bisect_right(self._starts, offset, lo=self._head) - 1
        if first < self._head:
            return b""  # nothing appended yet
        parts = [self._chunks[first][offset - self._starts[first] :]]
        size = len(parts[0])
        for chunk in itertools.islice(self._chunks, first + 1, None):
            if size >= limit:
                break
            parts.append(chunk)
            size += len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _drop_oldest(self) -> None:
        dropped = self._chunks[self._head]
        self.last_dropped_start = self._starts[self._head]
        self._chunks[self._head] = b""  # free the bytes now, the slot later
        self._retained -= len(dropped)
        self.ring_start += len(dropped)
        self._head += 1
        if self._head >= _COMPACT_AFTER and self._head * 2 >= len(self._chunks):
            del self._chunks[: self._head], self._starts[: self._head]
            self._head = 0
