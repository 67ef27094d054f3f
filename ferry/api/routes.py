"""Thin routes: parse, call a service, choose a response."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Protocol, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ferry.api.deps import Lease, app_state
from ferry.errors import InvalidRequest
from ferry.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from ferry.services import completions as svc

if TYPE_CHECKING:
    from ferry.app import AppState

T = TypeVar("T")
router = APIRouter()


class Cancellable(Protocol):
    """What a client's disconnect cancels: a ``Generation`` (or a stand-in that cancels nothing
    when the work task's cancellation suffices)."""

    def cancel(self) -> None: ...


async def until_disconnect(request: Request, work: Awaitable[T], gen: Cancellable) -> T:
    """Run ``work``; if the client disconnects first, cancel the generation (non-streaming)."""
    task = asyncio.ensure_future(work)

    async def _wait_gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(_wait_gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            gen.cancel()
            task.cancel()
            raise asyncio.CancelledError
        return task.result()
    finally:
        watcher.cancel()


def _check_n(state: AppState, n: int) -> None:
    if n > state.settings.max_n:
        raise InvalidRequest(f"n must be at most {state.settings.max_n}", param="n")


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request, leases: Lease
                           ) -> Response:
    state = app_state(request)
    _check_n(state, body.n)
    job = await svc.prepare_chat_async(body, await leases.chat(body.model), state.images)
    gen = job.start(state.cache_ns(request, body.cache_salt))
    if body.stream:
        return await state.stream_response(request, svc.chat_stream(job, gen), gen)
    return JSONResponse(await until_disconnect(request, svc.chat_response(job, gen), gen))


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request, leases: Lease) -> Response:
    state = app_state(request)
    _check_n(state, body.n)
    job = svc.prepare_completion(body, await leases.chat(body.model))
    gen = job.start(state.cache_ns(request, body.cache_salt))
    if body.stream:
        return await state.stream_response(request, svc.completion_stream(job, gen), gen)
    return JSONResponse(await until_disconnect(request, svc.completion_response(job, gen), gen))


@router.post("/tokenize")
@router.post("/v1/tokenize")
async def tokenize(body: TokenizeRequest, leases: Lease) -> JSONResponse:
    m = await leases.chat(body.model)
    tokens = m.model.tokenize(body.content, add_special=body.add_special, parse_special=True)
    return JSONResponse({"tokens": tokens, "count": len(tokens),
                         "max_model_len": m.engine.n_ctx_seq})


@router.post("/detokenize")
@router.post("/v1/detokenize")
async def detokenize(body: DetokenizeRequest, leases: Lease) -> JSONResponse:
    m = await leases.chat(body.model)
    return JSONResponse({"content": m.model.detokenize(body.tokens)})
