"""``POST /v1/embeddings`` (OpenAI's API) over the registry's embedding models.

Invariants:
- ``input`` is a string, a list of strings, a token list or a list of token lists; an empty
  string, an empty list or an empty token list is a 400 naming ``input``.
- The forward runs in a worker thread (``asyncio.to_thread``), at most ``parallel`` at once per
  model (the runtime's semaphore); the model holds a lease meanwhile, so it is never evicted.
- ``usage.prompt_tokens == usage.total_tokens`` = the tokens the model ran over ([CLS]/[SEP]
  included). ``base64`` is little-endian float32, what the official client decodes.
- ``dimensions`` is honoured only by models that support truncation (equal to the model's own
  width is accepted as a no-op); otherwise 400.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ferry.api.deps import app_state
from ferry.errors import InvalidRequest, Unsupported
from ferry.protocol.openai import EmbeddingRequest, EmbeddingResponse

router = APIRouter()
MAX_INPUTS = 2048


def inputs_of(value: str | list) -> list[str] | list[list[int]]:
    """The request's inputs as a list of strings or a list of token lists (400 if empty)."""
    if isinstance(value, str):
        items: list = [value]
    elif value and all(isinstance(x, int) for x in value):
        items = [value]
    else:
        items = list(value)
    if not items:
        raise InvalidRequest("input must not be empty", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequest(f"input may hold at most {MAX_INPUTS} items, got {len(items)}",
                             param="input")
    for i, x in enumerate(items):
        if not x:
            raise InvalidRequest(f"input[{i}] is empty; every input needs text or tokens",
                                 param="input")
    return items


@router.post("/v1/embeddings", response_model=EmbeddingResponse)
async def create_embeddings(body: EmbeddingRequest, request: Request) -> JSONResponse:
    from ferry.embeddings import encode_base64, truncate_dimensions

    state = app_state(request)
    inputs = inputs_of(body.input)
    t0 = time.monotonic()
    async with state.models.acquire(body.model, "embedding") as rt:
        request.scope.setdefault("state", {})["model"] = rt.id
        em = rt.model
        if body.dimensions is not None and body.dimensions != em.dim and not em.supports_dimensions:
            raise Unsupported(f"model {rt.id!r} does not support `dimensions` (its vectors have "
                              f"{em.dim} dimensions)", param="dimensions")
        async with rt.forwards:
            vectors, n_tokens = await asyncio.to_thread(em.embed, inputs)
    if body.dimensions is not None and body.dimensions != em.dim:
        vectors = truncate_dimensions(vectors, body.dimensions)
    state.metrics.embedded(rt.id, len(inputs), n_tokens, time.monotonic() - t0)
    encode = encode_base64 if body.encoding_format == "base64" else (lambda v: v.tolist())
    # a plain dict: re-validating up to 2048 x dim floats through response_model costs more
    # than the forward; EmbeddingResponse documents the shape
    return JSONResponse({
        "object": "list", "model": rt.id,
        "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                 for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens}})
