"""Routes of resumable streams: replay/follow, lookup, delete (path and llama.cpp query forms)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from ferry.api.deps import app_state
from ferry.api.middleware import request_owner
from ferry.sse import EventStreamResponse
from ferry.streams import check_conv_id

router = APIRouter()
LookupFormat = Literal["ferry", "llama-server"]


class LookupRequest(BaseModel):
    conversation_ids: list[str] = Field(max_length=1000)


async def _replay(request: Request, conv_id: str, offset: int | None,
                  last_event_id: str | None) -> EventStreamResponse:
    state = app_state(request)
    body = await state.sessions.store.replay(
        conv_id, request_owner(request), offset=offset or 0,
        last_event_id=last_event_id if offset is None else None)
    s = state.settings
    return EventStreamResponse(body, ping_interval=0, send_timeout=s.send_timeout,
                               headers={"X-Conversation-Id": conv_id})


# Each route answers in the path form and in llama.cpp's query form (`?conv_id=`, where ids
# may contain `/`): `conv_id` is a path parameter in the first, a query parameter in the second.
@router.get("/v1/stream/{conv_id}")
@router.get("/v1/stream")
async def replay_stream(request: Request, conv_id: str,
                        from_: int | None = Query(None, alias="from", ge=0),
                        last_event_id: str | None = Header(None)) -> EventStreamResponse:
    check_conv_id(conv_id, param="conv_id")
    return await _replay(request, conv_id, from_, last_event_id)


@router.delete("/v1/stream/{conv_id}", status_code=204)
@router.delete("/v1/stream", status_code=204)
async def delete_stream(request: Request, conv_id: str) -> Response:
    check_conv_id(conv_id, param="conv_id")
    await app_state(request).sessions.store.delete(conv_id, request_owner(request))
    return Response(status_code=204)


@router.post("/v1/streams/lookup")
async def lookup_streams(body: LookupRequest, request: Request,
                         format: Annotated[LookupFormat | None, Query()] = None) -> JSONResponse:
    """Ferry's shape ``{"object": "list", "data": [...]}`` (times in float seconds,
    ``completed_at`` null while running), or llama-server's (a bare array, integer seconds,
    ``completed_at`` 0 while running) with ``?format=llama-server`` or
    ``--streams-lookup-format llama-server``."""
    ids = [check_conv_id(c, param="conversation_ids") for c in body.conversation_ids]
    state = app_state(request)
    infos = await state.sessions.store.lookup(ids, request_owner(request))
    if (format or state.settings.streams_lookup_format) == "llama-server":
        return JSONResponse([{"conversation_id": i.conversation_id, "is_done": i.is_done,
                              "total_bytes": i.total_bytes, "started_at": int(i.started_at),
                              "completed_at": int(i.completed_at or 0)} for i in infos])
    return JSONResponse({"object": "list", "data": [
        {"conversation_id": i.conversation_id, "is_done": i.is_done,
         "total_bytes": i.total_bytes, "started_at": i.started_at,
         "completed_at": i.completed_at} for i in infos]})
