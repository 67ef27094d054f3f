"""Routes of the OpenAI Responses API: thin, each parses, calls a service, picks a response."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response

from ferry.api.deps import Lease, app_state
from ferry.api.middleware import request_owner
from ferry.api.routes import until_disconnect
from ferry.errors import InvalidRequest
from ferry.protocol.responses import INCLUDABLE, CreateResponseRequest, InputTokensRequest
from ferry.services import responses as svc
from ferry.services import stored_responses as stored
from ferry.sse import EventStreamResponse

router = APIRouter()


@router.post("/v1/responses")
async def create_response(body: CreateResponseRequest, request: Request, leases: Lease
                          ) -> Response:
    state = app_state(request)
    run = await svc.prepare(body, await leases.chat(body.model), state.images,
                            state.responses, request_owner(request))
    gen = run.job.start(state.cache_ns(request, None))  # per-key prompt cache
    if body.background:
        await stored.start_background(run, gen, state.sessions)
        if not body.stream:
            return JSONResponse(svc.snapshot(run))
        return await _replay(request, run.id, None)
    if body.stream:
        return await state.stream_response(request, svc.events(run, gen), gen)
    return JSONResponse(await until_disconnect(request, svc.result(run, gen), gen))


async def _replay(request: Request, response_id: str, starting_after: int | None
                  ) -> EventStreamResponse:
    state = app_state(request)
    body = await stored.replay(state.responses, state.sessions.store, request_owner(request),
                               response_id, starting_after)
    return EventStreamResponse(body, ping_interval=0, send_timeout=state.settings.send_timeout)


@router.post("/v1/responses/input_tokens")
async def count_input_tokens(body: InputTokensRequest, request: Request, leases: Lease
                             ) -> JSONResponse:
    state = app_state(request)
    n = await svc.input_tokens(body, await leases.chat(body.model), state.images,
                               state.responses, request_owner(request))
    return JSONResponse({"object": "response.input_tokens", "input_tokens": n})


@router.get("/v1/responses/{response_id}")
async def retrieve_response(request: Request, response_id: str, stream: bool = False,
                            starting_after: Annotated[int | None, Query(ge=0)] = None,
                            include: Annotated[list[INCLUDABLE] | None, Query()] = None
                            ) -> Response:
    if stream:
        return await _replay(request, response_id, starting_after)
    if starting_after is not None:
        raise InvalidRequest("starting_after needs stream=true", param="starting_after")
    record = await app_state(request).responses.get(request_owner(request), response_id)
    return JSONResponse(jsonable_encoder(record.response))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> JSONResponse:
    state = app_state(request)
    await stored.delete(state.responses, state.sessions.store, request_owner(request), response_id)
    return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
async def cancel_response(request: Request, response_id: str) -> JSONResponse:
    state = app_state(request)
    return JSONResponse(jsonable_encoder(
        await stored.cancel(state.responses, state.sessions.store, request_owner(request), response_id)))


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(request: Request, response_id: str,
                           limit: Annotated[int, Query(ge=1, le=100)] = 20,
                           order: Literal["asc", "desc"] = "desc", after: str | None = None,
                           include: Annotated[list[INCLUDABLE] | None, Query()] = None
                           ) -> JSONResponse:
    record = await app_state(request).responses.get(request_owner(request), response_id)
    return JSONResponse(jsonable_encoder(stored.page(record, limit=limit, order=order,
                                                     after=after)))
