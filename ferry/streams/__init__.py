"""Resumable streams: every SSE byte of a session is kept so a client can reconnect and resume.

Invariants (each store documents its own on top of these, see ``base``):
- A session is keyed by ``(owner, conv_id)``; other owners cannot see, replace or delete it.
- One conversation has at most one live session: ``open`` cancels and replaces the previous one.
- Offsets count bytes of the whole session, so ``prefix + replay(offset=len(prefix))`` is the
  whole stream; the id of an event is the offset where it starts (``next_event_id``).
- At most ``buffer_bytes`` (plus the newest event) are kept per session, oldest events dropped
  first; asking for a dropped offset is an ``InvalidRequest``, never silently skipped bytes.
- A finished session stays for ``ttl`` seconds, then is gone (``NotFound``).
"""

from __future__ import annotations

from ferry.streams.base import (
    CONV_ID_RE,
    HEADER_CONV_ID_RE,
    Session,
    SessionInfo,
    StreamStore,
    check_conv_id,
)
from ferry.streams.memory import MemoryStore

__all__ = [
    "CONV_ID_RE",
    "HEADER_CONV_ID_RE",
    "MemoryStore",
    "Session",
    "SessionInfo",
    "StreamStore",
    "check_conv_id",
    "make_store",
]


def make_store(url: str, *, buffer_bytes: int, ttl: float) -> StreamStore:
    """``"memory"`` for the in-process store, ``redis://host:port/db`` (or rediss://, unix://)
    for the shared one. Nothing connects until the first call."""
    if url == "memory":
        return MemoryStore(buffer_bytes=buffer_bytes, ttl=ttl)
    if url.startswith(("redis://", "rediss://", "unix://")):
        from ferry.streams.redis_store import RedisStore  # redis is only needed for this store

        return RedisStore(url, buffer_bytes=buffer_bytes, ttl=ttl)
    raise ValueError(f"stream store must be 'memory' or a redis:// URL, not {url!r}")
