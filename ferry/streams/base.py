"""The stream-store contract shared by the memory and Redis stores.

A *session* is the byte stream of one resumable SSE response, keyed by ``(owner, conv_id)``.
Offsets count bytes from the first byte of the session, so the bytes a client read before a
disconnect followed by ``replay(offset=<how many it read>)`` are exactly the whole stream.

Event ids: the id of an event is the decimal byte offset at which that event *starts*
(``Session.next_event_id()`` just before ``append``). ``Last-Event-ID: X`` resumes at the first
event that starts after ``X``.

Errors a client can cause are ``ferry.errors`` types: ``NotFound`` for an unknown, expired,
deleted or other owner's session; ``InvalidRequest`` for an offset outside what is kept;
``ServiceUnavailable`` when the backing store cannot be reached.
"""

from __future__ import annotations

import asyncio
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol, Self

from ferry.errors import InvalidRequest, NotFound

# The header form (X-Conversation-Id) forbids "/", the query form (?conv_id=) allows it; the
# store accepts both, the route enforces the narrower header rule.
CONV_ID_RE = re.compile(r"[A-Za-z0-9._:/-]{1,128}")
HEADER_CONV_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_EVENT_ID_RE = re.compile(r"[0-9]{1,19}")


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """Status of one session, as returned by ``lookup``; times are Unix epoch seconds."""

    conversation_id: str
    is_done: bool
    total_bytes: int
    started_at: float
    completed_at: float | None


def check_conv_id(conv_id: str, *, param: str = "conversation_id", header: bool = False) -> str:
    """Return ``conv_id`` if it is a valid conversation id, else raise ``InvalidRequest``."""
    pattern = HEADER_CONV_ID_RE if header else CONV_ID_RE
    if not isinstance(conv_id, str) or pattern.fullmatch(conv_id) is None:
        allowed = "A-Z a-z 0-9 . _ : -" + ("" if header else " /")
        raise InvalidRequest(
            f"conversation id must be 1-128 characters of [{allowed}]", param=param
        )
    return conv_id


def parse_last_event_id(value: str) -> int:
    """The byte offset named by a ``Last-Event-ID`` header (ids are decimal start offsets)."""
    if _EVENT_ID_RE.fullmatch(value.strip()) is None:
        raise InvalidRequest(
            f"Last-Event-ID {value!r} is not an event id of this server (a decimal byte offset)",
            param="Last-Event-ID",
        )
    return int(value)


def lost_offset(conv_id: str, offset: int, ring_start: int, *, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"cannot resume conversation {conv_id!r} at byte {offset}: the replay buffer only "
        f"keeps bytes from offset {ring_start} on (older bytes were dropped, see "
        f"stream_buffer_bytes); resume from {ring_start} or later",
        param=param,
    )


def beyond_end(conv_id: str, offset: int, total: int, *, param: str) -> InvalidRequest:
    return InvalidRequest(
        f"cannot resume conversation {conv_id!r} at byte {offset}: only {total} bytes "
        "have been sent so far",
        param=param,
    )


def not_found(conv_id: str) -> NotFound:
    return NotFound(
        f"no stream for conversation {conv_id!r} (unknown, expired or deleted)",
        param="conversation_id",
    )


class Session(ABC):
    """The writer side of one session, used by exactly one generation task.

    ``cancelled`` is set when the session is replaced by a newer ``open`` of the same
    conversation or deleted, from any replica; the generation should then stop. Appends to a
    cancelled or finished session are dropped. Use ``async with session:`` to always finish.
    """

    def __init__(self, conv_id: str) -> None:
        self.conv_id = conv_id
        self.cancelled = asyncio.Event()
        self._total = 0  # bytes appended so far; only this writer moves it

    @property
    def total_bytes(self) -> int:
        return self._total

    def next_event_id(self) -> str:
        """The id to put on the event that the next ``append`` will carry."""
        return str(self._total)

    async def append(self, data: bytes, event_id: str | None = None) -> None:
        """Append one complete SSE event (or comment); ``event_id`` is checked if given."""
        if not data:
            raise ValueError("append() needs at least one byte")
        if event_id is not None and event_id != str(self._total):
            raise ValueError(f"event id {event_id!r} is not next_event_id() {self._total}")
        if self.cancelled.is_set():
            return
        if await self._append(bytes(data)):
            self._total += len(data)

    @abstractmethod
    async def _append(self, data: bytes) -> bool:
        """Store ``data`` at offset ``self._total``; False (and set ``cancelled``) if dropped."""

    @abstractmethod
    async def finish(self) -> None:
        """Mark the session done; it stays replayable for the store's ttl. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.finish()


class StreamStore(Protocol):
    """Where sessions live; ``owner`` is ``None`` when the server has no API keys."""

    async def open(self, conv_id: str, owner: str | None) -> Session:
        """Start a new session; any live session of the same conversation is cancelled."""
        ...

    async def lookup(self, conv_ids: list[str], owner: str | None) -> list[SessionInfo]:
        """Status of the asked sessions that exist, in the asked order (unknown ids omitted)."""
        ...

    async def delete(self, conv_id: str, owner: str | None) -> None:
        """Cancel the generation (wherever it runs) and evict the session. Idempotent."""
        ...

    async def replay(
        self,
        conv_id: str,
        owner: str | None,
        *,
        offset: int = 0,
        last_event_id: str | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """Check the request, then return an iterator of the kept bytes from the resume point,
        followed live until the session is done, deleted or replaced.

        Raises ``NotFound``/``InvalidRequest`` here, before any byte is produced. The iterator
        raises ``InvalidRequest`` only if the reader fell more than a whole buffer behind.
        """
        ...

    async def close(self) -> None: ...
