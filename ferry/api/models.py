"""Routes of the model registry: list/get/delete/load models and ``/health``. (The lease that
holds a model while a request uses it is ``ferry.api.deps.Leases``.)"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from ferry.api.deps import app_state
from ferry.engine import hardware
from ferry.errors import InvalidRequest, ServiceUnavailable
from ferry.services.models import ChatModel

if TYPE_CHECKING:
    from ferry.app import AppState

router = APIRouter()

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
    # chat models, once loaded: the most tokens (prompt + completion) one request may use (vLLM's
    # name), and the KV pool all requests share
    max_model_len: int | None = None
    kv_pool_cells: int | None = None


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
    n_ctx_seq: int | None = None  # longest prompt + completion of one request
    kv_pool_cells: int | None = None  # the KV pool all sequences share
    prompt_cache: dict[str, Any] | None = None  # entries/bytes per tier, hits, evictions
    slots: int | None = None
    prefix_hits: int | None = None
    speculative: dict[str, int] | None = None  # tokens drafted / accepted
    step_python_us: dict[int, float] | None = None  # mean non-decode time per step, by batch


class DeviceInfo(BaseModel):
    name: str  # llama.cpp's device name: CPU, CUDA0, Metal, Vulkan0
    description: str
    type: str  # cpu | gpu | igpu | accel
    memory_total: int  # bytes
    memory_free: int


class HardwareInfo(BaseModel):
    backend: str  # the accelerator backend llama.cpp offloads to, or CPU
    gpu_offload: bool  # llama_supports_gpu_offload
    devices: list[DeviceInfo]


class Health(BaseModel):
    status: Literal["ok"]
    hardware: HardwareInfo
    models: dict[str, ModelHealth]


def describe(state: AppState) -> list[ModelObject]:
    reg = state.models
    out = []
    for name, s in reg.names():
        st = reg.state_of(s)
        eng = reg.chat[s.spec.id].engine if s.spec.id in reg.chat else None
        out.append(ModelObject(id=name, created=s.created, kind=s.spec.kind,
                               loaded=st in ("loaded", "unloading"), state=st,
                               max_model_len=eng.n_ctx_seq if eng else None,
                               kv_pool_cells=eng.runner.n_ctx if eng else None))
    return out


def _find(state: AppState, model_id: str) -> ModelObject:
    for m in describe(state):
        if m.id == model_id:
            return m
    entry = state.models.entry(model_id)  # file names and paths resolve too; else 404
    return _find(state, entry.spec.id)


@router.get("/v1/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return ModelList(data=describe(app_state(request)))


@router.get("/v1/models/{model_id:path}", response_model=ModelObject)
async def get_model(model_id: str, request: Request) -> ModelObject:
    return _find(app_state(request), model_id)


@router.delete("/v1/models/{model_id:path}", response_model=ModelDeleted)
async def delete_model(model_id: str, request: Request) -> ModelDeleted:
    """Unload the model once its in-flight requests have finished (it reloads on next use)."""
    state = app_state(request)
    if _find(state, model_id).kind == "transcription":
        raise InvalidRequest("transcription models cannot be unloaded", param="model_id")
    return ModelDeleted(id=await state.models.unload(model_id))


@router.post("/v1/models/{model_id:path}/load", response_model=ModelObject)
async def load_model(model_id: str, request: Request) -> ModelObject:
    """Load the model now (evicting idle ones if ``--models-max-loaded`` requires)."""
    state = app_state(request)
    m = _find(state, model_id)
    await state.models.load(m.id)
    return _find(state, m.id)


@router.get("/health", response_model=Health)
async def health(request: Request) -> Health:
    state = app_state(request)
    if not state.models.ready:
        if state.load_error:
            raise ServiceUnavailable(f"model load failed: {state.load_error}")
        raise ServiceUnavailable("loading model", headers={"Retry-After": "2"})
    reg, models = state.models, {}
    for name, s in reg.names():
        h = ModelHealth(kind=s.spec.kind, state=reg.state_of(s))
        if isinstance(s.loaded, ChatModel):
            h = ModelHealth(kind="chat", state=h.state,
                            **dataclasses.asdict(s.loaded.engine.status()))
        models[name] = h
    return Health(status="ok", hardware=HardwareInfo(**hardware.summary()), models=models)
