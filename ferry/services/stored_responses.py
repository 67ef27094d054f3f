"""Stored responses: input items (paginated), cancel, and the replay of a background response's
events after a sequence number.

A background response's events live in the stream store (``ferry.streams``) as a session named
`session_id`, exactly as sent; a replay reads that session and drops the events up to
``starting_after``, so a client that reconnects on any replica sharing the store gets the rest
of the stream, then follows it live.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Literal

from ferry.errors import InvalidRequest, NotFound
from ferry.response_store import ResponseStore, StoredResponse
from ferry.services.generation import Generation
from ferry.services.responses import ResponseRun, events
from ferry.services.resumable import StreamSessions
from ferry.streams import StreamStore


def session_id(response_id: str) -> str:
    """The stream-store session of a background response (``/`` keeps it out of the header
    form of X-Conversation-Id, so no chat stream can replace it)."""
    return f"responses/{response_id}"


def page(record: StoredResponse, *, limit: int, order: Literal["asc", "desc"],
         after: str | None) -> dict:
    """One page of ``GET /v1/responses/{id}/input_items`` (default order: newest first)."""
    data = record.items if order == "asc" else record.items[::-1]
    if after is not None:
        ids = [it["id"] for it in data]
        if after not in ids:
            raise InvalidRequest(f"after: no item {after!r} in this response's input items",
                                 param="after")
        data = data[ids.index(after) + 1:]
    chunk = data[:limit]
    return {"object": "list", "data": chunk, "has_more": len(data) > limit,
            "first_id": chunk[0]["id"] if chunk else "",
            "last_id": chunk[-1]["id"] if chunk else ""}


async def start_background(run: ResponseRun, gen: Generation, sessions: StreamSessions) -> None:
    """Save the queued response, then let it run on in a stream-store session of its own."""
    try:
        await run.store.save(run.owner, run.record)
        await sessions.start(session_id(run.id), run.owner, events(run, gen), gen)
    except BaseException:
        gen.cancel()
        raise


async def replay(store: ResponseStore, streams: StreamStore, owner: str | None,
                 response_id: str, starting_after: int | None) -> AsyncIterator[bytes]:
    """The events of a background response after ``starting_after``, then live ones."""
    record = await store.get(owner, response_id)
    if not record.response.get("background"):
        raise InvalidRequest("Only background responses can be streamed again; this one was "
                             "created without background: true.", param="stream")
    try:
        chunks = await streams.replay(session_id(response_id), owner, offset=0)
    except NotFound:
        raise NotFound(f"The events of response '{response_id}' are no longer kept (see "
                       "--stream-ttl); retrieve it without stream=true.") from None
    return after_sequence(chunks, starting_after)


async def delete(store: ResponseStore, streams: StreamStore, owner: str | None,
                 response_id: str) -> None:
    """Forget a response; a background one still running is stopped."""
    record = await store.get(owner, response_id)
    await store.delete(owner, response_id)
    if record.response.get("background"):
        await streams.delete(session_id(response_id), owner)


async def cancel(store: ResponseStore, streams: StreamStore, owner: str | None,
                 response_id: str) -> dict:
    """Stop a background response wherever it runs; its status becomes ``cancelled``."""
    record = await store.get(owner, response_id)
    if not record.response.get("background"):
        raise InvalidRequest("Only background responses can be cancelled.", param="response_id")
    if not record.done:
        record.response["status"] = "cancelled"
        await store.save(owner, record)
        await streams.delete(session_id(response_id), owner)  # stops the generation's pump
    return record.response


def _sequence_number(frame: bytes) -> int | None:
    for line in frame.split(b"\n"):
        if line.startswith(b"data: {"):
            return json.loads(line[6:]).get("sequence_number")
    return None


async def after_sequence(chunks: AsyncIterator[bytes], starting_after: int | None
                         ) -> AsyncIterator[bytes]:
    """The stored SSE bytes minus the events numbered ``<= starting_after`` (and the pings
    among them); everything after the first later event passes through untouched."""
    try:
        if starting_after is None:
            async for chunk in chunks:
                yield chunk
            return
        buf = b""
        async for chunk in chunks:
            buf += chunk
            *frames, buf = buf.split(b"\n\n")
            for i, frame in enumerate(frames):
                n = _sequence_number(frame)
                if n is not None and n > starting_after:
                    yield b"\n\n".join(frames[i:]) + b"\n\n" + buf
                    async for rest in chunks:
                        yield rest
                    return
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
