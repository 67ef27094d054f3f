"""The in-process response store (the default).

Invariants: records are copied in and out (JSON round trip), so a caller mutating a record never
changes what is stored; expiry is swept lazily at every call (a heap ordered by expiry time), so
no background task runs.
"""

from __future__ import annotations

import heapq
import itertools
import json
import time
from collections.abc import Callable

from ferry.response_store.base import StoredResponse, not_found

_Key = tuple[str | None, str]


class MemoryResponseStore:
    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._records: dict[_Key, tuple[float, str]] = {}  # key -> (expires at, JSON)
        self._expiry: list[tuple[float, int, _Key]] = []
        self._seq = itertools.count()

    async def save(self, owner: str | None, record: StoredResponse, *,
                   update: bool = False) -> None:
        self._sweep()
        key = (owner, record.id)
        if update and key not in self._records:
            return
        expires = self._clock() + self.ttl
        self._records[key] = (expires, json.dumps(record.to_json()))
        heapq.heappush(self._expiry, (expires, next(self._seq), key))

    async def get(self, owner: str | None, response_id: str) -> StoredResponse:
        self._sweep()
        found = self._records.get((owner, response_id))
        if found is None:
            raise not_found(response_id)
        return StoredResponse.from_json(json.loads(found[1]))

    async def delete(self, owner: str | None, response_id: str) -> None:
        self._sweep()
        if self._records.pop((owner, response_id), None) is None:
            raise not_found(response_id)

    async def close(self) -> None:
        self._records.clear()
        self._expiry.clear()

    def _sweep(self) -> None:
        now = self._clock()
        while self._expiry and self._expiry[0][0] <= now:
            expires, _, key = heapq.heappop(self._expiry)
            found = self._records.get(key)
            if found is not None and found[0] == expires:  # not re-saved since
                del self._records[key]
