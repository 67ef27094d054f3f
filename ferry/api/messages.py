"""Anthropic's Messages API: thin routes over ferry.services.messages. Errors on these paths
leave in Anthropic's envelope (ferry.api.errors); keys come as ``x-api-key`` or Bearer."""

from __future__ import annotations

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from ferry.api.deps import Lease, app_state
from ferry.api.routes import until_disconnect
from ferry.protocol.anthropic import ANTHROPIC_VERSION, CountTokensRequest, MessagesRequest
from ferry.services import messages as svc

router = APIRouter(tags=["anthropic"])
VERSION_DOC = f"accepted and not checked; answers follow {ANTHROPIC_VERSION}"


@router.post("/v1/messages", response_model=None)
async def create_message(body: MessagesRequest, request: Request, leases: Lease,
                         anthropic_version: str | None = Header(None, description=VERSION_DOC)
                         ) -> Response:
    state = app_state(request)
    job = await svc.prepare_message(body, await leases.chat(body.model), state.images)
    gen = job.start(state.cache_ns(request, None))  # per-key prompt cache
    if body.stream:
        return await state.stream_response(request, svc.message_stream(job, gen), gen)
    return JSONResponse(await until_disconnect(request, svc.message_response(job, gen), gen))


@router.post("/v1/messages/count_tokens", response_model=None)
async def count_tokens(body: CountTokensRequest, request: Request, leases: Lease,
                       anthropic_version: str | None = Header(None, description=VERSION_DOC)
                       ) -> JSONResponse:
    n = await svc.count_tokens(body, await leases.chat(body.model), app_state(request).images)
    return JSONResponse({"input_tokens": n})
