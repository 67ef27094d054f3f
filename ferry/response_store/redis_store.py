"""The Redis response store: any replica reads, continues or deletes any replica's responses.

Invariants: one key per record, ``<prefix>:<owner-hash>:<response id>`` holding the record's
JSON with a PEXPIRE of the ttl set by every save, so expiry is Redis's own and a crashed replica
leaves nothing behind. Connection failures become ``ServiceUnavailable``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ferry.errors import ServiceUnavailable
from ferry.response_store.base import StoredResponse, not_found


@contextlib.contextmanager
def _reachable() -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        raise ServiceUnavailable(f"response store (Redis) is unreachable: {exc}") from exc


class RedisResponseStore:
    def __init__(self, url: str, *, ttl: float, prefix: str = "ferry:responses") -> None:
        self.ttl = ttl
        self.prefix = prefix
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=10)

    def _key(self, owner: str | None, response_id: str) -> str:
        ns = "-" if owner is None else hashlib.sha256(owner.encode()).hexdigest()[:32]
        return f"{self.prefix}:{ns}:{response_id}"

    async def save(self, owner: str | None, record: StoredResponse, *,
                   update: bool = False) -> None:
        data = json.dumps(record.to_json(), separators=(",", ":"))
        with _reachable():
            await self._redis.set(self._key(owner, record.id), data, px=int(self.ttl * 1000),
                                  xx=update)

    async def get(self, owner: str | None, response_id: str) -> StoredResponse:
        with _reachable():
            data = await self._redis.get(self._key(owner, response_id))
        if data is None:
            raise not_found(response_id)
        return StoredResponse.from_json(json.loads(data))

    async def delete(self, owner: str | None, response_id: str) -> None:
        with _reachable():
            n = await self._redis.delete(self._key(owner, response_id))
        if not n:
            raise not_found(response_id)

    async def close(self) -> None:
        await self._redis.aclose()
