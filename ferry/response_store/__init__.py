"""Stored responses of the Responses API: ``GET/DELETE /v1/responses/{id}``,
``previous_response_id`` and the items of a conversation.

Invariants (each store documents its own on top of these):
- A record is keyed by ``(owner, response_id)``; other owners get ``NotFound``, as for an unknown
  id, so ids leak nothing across API keys.
- ``save`` replaces the whole record and restarts its ``ttl``; after ``ttl`` seconds without a
  save the record is gone (``NotFound``).
- Records are plain JSON-able data (`StoredResponse`), so any replica can read any replica's.
"""

from __future__ import annotations

from ferry.response_store.base import ResponseStore, StoredResponse, not_found
from ferry.response_store.memory import MemoryResponseStore

__all__ = ["MemoryResponseStore", "ResponseStore", "StoredResponse", "make_response_store",
           "not_found"]


def make_response_store(url: str, *, ttl: float) -> ResponseStore:
    """``"memory"`` or ``redis://host:port/db`` (rediss://, unix://); nothing connects yet."""
    if url == "memory":
        return MemoryResponseStore(ttl=ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from ferry.response_store.redis_store import RedisResponseStore

        return RedisResponseStore(url, ttl=ttl)
    raise ValueError(f"response store must be 'memory' or a redis:// URL, not {url!r}")
