"""Live engine replicas, as seen in Redis: each replica refreshes its entry every ``BEAT_S``; an
entry not refreshed for ``TTL_MS`` (the process died) disappears by itself. Front doors list the
entries for ``/health`` (and Ray knows the same from its own health checks; this view is shared by
every front door, on any node, without asking Ray's controller). Also the replica that created
each stored response (``pin``), so a ``previous_response_id`` finds it from any front door."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ferry.errors import ServiceUnavailable

log = logging.getLogger(__name__)

BEAT_S = 1.0
TTL_MS = 3_000


class ReplicaRegistry:
    def __init__(self, url: str, app: str, prefix: str = "ferry:replicas") -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=5.0)
        self._prefix = f"{prefix}:{app}:"
        self._pins = f"ferry:pins:{app}:"

    async def beat(self, replica: str, info: dict) -> None:
        """Refresh ``replica``'s entry forever (run as a task; cancelled at shutdown)."""
        info = {**info, "id": replica, "since": time.time()}
        while True:
            try:
                await self._redis.set(self._prefix + replica, json.dumps(info), px=TTL_MS)
            except (RedisError, OSError) as exc:
                log.warning("replica registry heartbeat failed: %s", exc)
            await asyncio.sleep(BEAT_S)

    async def live(self) -> list[dict]:
        """Entries of the replicas alive now, oldest first."""
        try:
            keys = [k async for k in self._redis.scan_iter(match=self._prefix + "*", count=100)]
            values = await self._redis.mget(keys) if keys else []
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"replica registry (Redis) is unreachable: {exc}") from exc
        entries = [json.loads(v) for v in values if v is not None]
        return sorted(entries, key=lambda e: e["since"])

    async def pin(self, key: str, replica: str, ttl: float) -> None:
        """Remember that ``replica`` holds ``key``'s conversation (a stored response's id)."""
        try:
            await self._redis.set(self._pins + key, replica, px=int(ttl * 1000))
        except (RedisError, OSError) as exc:
            log.warning("replica pin not stored: %s", exc)

    async def pinned(self, key: str) -> str | None:
        """The replica that served ``key``, if known (a routing preference, never required)."""
        try:
            value = await self._redis.get(self._pins + key)
        except (RedisError, OSError):
            return None
        return value.decode() if isinstance(value, bytes) else value  # bytes: no decode_responses

    async def forget(self, replica: str) -> None:
        try:
            await self._redis.delete(self._prefix + replica)
        except (RedisError, OSError):
            pass

    async def close(self) -> None:
        await self._redis.aclose()
