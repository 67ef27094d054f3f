"""Routes of the model registry: list/get/delete/load models, ``/health``, and the lease that
holds a chat model for the chat/completions/tokenizer routes.

``chat_model_lease`` is an app-level dependency (``Depends(..., scope="function")``): for the
routes in ``CHAT_PATHS`` it reads ``model`` from the already-parsed JSON body, loads the model if
needed (LRU eviction) and holds a lease until the endpoint returns; from then on the engine's own
queue keeps the model busy until the sequences finish. Other routes pass straight through.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ferry.errors import FerryError, InvalidRequest, ServiceUnavailable

router = APIRouter()

CHAT_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/tokenize", "/v1/tokenize",
                        "/detokenize", "/v1/detokenize", "/v1/responses",
                        "/v1/responses/input_tokens", "/v1/messages",
                        "/v1/messages/count_tokens"})
Kind = Literal["chat", "embedding", "transcription"]
State = Literal["loaded", "loading", "unloading", "unloaded"]


class ModelObject(BaseModel):
    """OpenAI's model object plus Ferry's ``kind`` and load ``state``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ferry"
    kind: Kind
    loaded: bool
    state: State


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


class ModelDeleted(BaseModel):
    id: str
    object: Literal["model"] = "model"
    deleted: bool = True


class ModelHealth(BaseModel):
    kind: Kind
    state: State
    running: int = 0
    waiting: int = 0
    kv_cells_used: int | None = None
    n_ctx_seq: int | None = None
    slots: int | None = None
    prefix_hits: int | None = None
    speculative: dict[str, int] | None = None  # tokens drafted / accepted
    step_python_us: dict[int, float] | None = None  # mean non-decode time per step, by batch


class Health(BaseModel):
    status: Literal["ok"]
    models: dict[str, ModelHealth]


def _state(request: Request):
    return request.app.state.ferry


def _transcribers(state) -> list[tuple[str, bool]]:
    reg = state.transcribers
    # TranscriberRegistry has no public "is loaded" yet: read its alias and loaded maps
    aliases, loaded = getattr(reg, "_aliases", {}), getattr(reg, "_loaded", {})
    return [(n, aliases.get(n) in loaded) for n in reg.names()]


def describe(state) -> list[ModelObject]:
    reg = state.models
    out = []
    for mid, s in reg.slots.items():
        st = reg.state_of(s)
        out.append(ModelObject(id=mid, created=s.created, kind=s.spec.kind,
                               loaded=st in ("loaded", "unloading"), state=st))
    for name, loaded in _transcribers(state):
        out.append(ModelObject(id=name, created=state.started, kind="transcription",
                               loaded=loaded, state="loaded" if loaded else "unloaded"))
    return out


def _find(state, model_id: str) -> ModelObject:
    for m in describe(state):
        if m.id == model_id:
            return m
    slot = state.models.slot(model_id)  # file names and paths resolve too; else 404
    return _find(state, slot.spec.id)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request):
    return ModelList(data=describe(_state(request)))


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, request: Request):
    return _find(_state(request), model_id)


@router.delete("/v1/models/{model_id:path}", response_model=ModelDeleted)
async def delete_model(model_id: str, request: Request):
    """Unload the model once its in-flight requests have finished (it reloads on next use)."""
    state = _state(request)
    if _find(state, model_id).kind == "transcription":
        raise InvalidRequest("transcription models cannot be unloaded", param="model_id")
    return ModelDeleted(id=await state.models.unload(model_id))


@router.post("/v1/models/{model_id:path}/load", response_model=ModelObject)
async def load_model(model_id: str, request: Request):
    """Load the model now (evicting idle ones if ``--models-max-loaded`` requires)."""
    state = _state(request)
    m = _find(state, model_id)
    if m.kind == "transcription":
        await asyncio.to_thread(state.transcribers, m.id)
    else:
        await state.models.load(m.id)
    return _find(state, m.id)


@router.get("/health", response_model=Health)
async def health(request: Request):
    state = _state(request)
    if not state.models.ready:
        if state.load_error:
            raise ServiceUnavailable(f"model load failed: {state.load_error}")
        raise ServiceUnavailable("loading model", headers={"Retry-After": "2"})
    reg, models = state.models, {}
    for mid, s in reg.slots.items():
        h = ModelHealth(kind=s.spec.kind, state=reg.state_of(s))
        if mid in reg.chat:
            h = ModelHealth(kind="chat", state=h.state, **reg.chat[mid].engine.status())
        models[mid] = h
    for name, loaded in _transcribers(state):
        models[name] = ModelHealth(kind="transcription", state="loaded" if loaded else "unloaded")
    return Health(status="ok", models=models)


async def chat_model_lease(request: Request) -> AsyncIterator[None]:
    """App-level dependency: hold the request's chat model (loading it first) on CHAT_PATHS."""
    path = getattr(request.scope.get("route"), "path", None)
    if request.method != "POST" or path not in CHAT_PATHS:
        yield
        return
    try:
        body = await request.json()  # cached: FastAPI parsed it already
    except ValueError:
        body = None
    name = body.get("model") if isinstance(body, dict) else None
    if name is not None and not isinstance(name, str):
        yield  # the route's validation answers 400
        return
    state = _state(request)
    try:
        if not state.models.ready:
            raise ServiceUnavailable("loading")
        model_id = state.models.slot(name, "chat").spec.id
    except FerryError:
        yield  # the route answers (503, 404 or 400) after validating the body
        return
    async with state.models.acquire(model_id, "chat"):
        request.scope.setdefault("state", {})["model"] = model_id
        yield
