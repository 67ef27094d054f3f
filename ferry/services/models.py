"""Configured models by id (chat, embedding, transcription), loaded on first use, LRU-evicted.

Invariants:
- Every configured model has one ``Slot``; ``Slot.loaded`` is the live runtime or None. Only
  heavyweight models (chat, embedding) count against ``max_loaded``; transcription models live in
  ``ferry.audio.registry.TranscriberRegistry`` and are only listed here.
- A model is *busy* while it holds a lease (``acquire``) or its engine has queued or running
  sequences. A busy model is never evicted; ``unload`` waits until it is idle, so in-flight
  requests finish first. Requests for a draining model wait for the unload, then load it again.
- All load/evict decisions run on the event loop under one lock; the check "idle" and the
  removal of a victim happen without an ``await`` in between, so no lease can slip in.
- The default chat model (the first chat spec) loads at start-up; ``ready`` turns True then and
  stays True, even if the default model is evicted later.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ferry.engine.chat_template import ChatTemplate
from ferry.engine.engine import Engine, EngineConfig
from ferry.engine.model import Model
from ferry.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from ferry.structured.vocab import TokenVocab

log = logging.getLogger(__name__)

KINDS = ("chat", "embedding", "transcription")
BUSY_POLL_S = 0.05


@dataclass(frozen=True)
class ModelSpec:
    """One configured model: ``--model ALIAS=PATH`` or an entry of ``--models-config``."""

    id: str
    path: str
    kind: str = "chat"
    ctx_size: int | None = None  # total KV cells (chat); None = the server's --ctx-size
    parallel: int | None = None  # slots (chat) or concurrent forwards (embedding)
    chat_template: str | None = None
    mmproj: str | None = None  # multimodal projector (chat): image_url parts are accepted
    hub: str | None = None  # a Hugging Face name (ferry.hub); path is "" until it is downloaded


@dataclass
class ChatModel:
    id: str
    path: str
    engine: Engine
    template: ChatTemplate | None
    created: int = field(default_factory=lambda: int(time.time()))
    projector: Any = None  # ferry.vision.Projector when served with an mmproj; None = text only

    @property
    def model(self) -> Model:
        return self.engine.model

    @functools.cached_property
    def token_vocab(self) -> TokenVocab:
        """The vocabulary as structured outputs read it (built on first use)."""
        return TokenVocab.from_gguf_vocab(self.model.vocab)

    def require_template(self) -> ChatTemplate:
        if self.template is None:
            raise InvalidRequest(f"model {self.id!r} has no chat template; start Ferry with "
                                 "--chat-template or use /v1/completions", param="model")
        return self.template


@dataclass
class EmbeddingRuntime:
    """A loaded embedding model and the limit on its concurrent forwards."""

    id: str
    model: Any  # ferry.embeddings.EmbeddingModel (imported lazily: tokenizers/numpy)
    slots: asyncio.Semaphore


def model_id_for(path: str) -> str:
    return Path(path).name.removesuffix(".gguf")


def load_models_config(path: str) -> list[ModelSpec]:
    """Parse models.yaml: a list (or ``{models: [...]}``) of ``{alias, path, kind, ctx_size,
    parallel, chat_template}``. Raises ValueError naming the bad entry."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"cannot read models config {path}: {e}") from None
    entries = doc.get("models") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of models (or a 'models:' key)")  # noqa: TRY004
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"{path}: model {i} needs a 'path'")  # noqa: TRY004
        kind = entry.get("kind", "chat")
        if kind not in KINDS:
            raise ValueError(f"{path}: model {i} has kind {kind!r}; expected one of {KINDS}")
        ctx, par = entry.get("ctx_size", entry.get("n_ctx")), entry.get("parallel")
        for name, v in (("ctx_size", ctx), ("parallel", par)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{path}: model {i}: {name} must be a positive integer")
        alias = str(entry.get("alias") or model_id_for(entry["path"]))
        mmproj = entry.get("mmproj")
        if mmproj is not None and (kind != "chat" or not isinstance(mmproj, str)):
            raise ValueError(f"{path}: model {i}: mmproj must be a path, on a chat model")
        specs.append(ModelSpec(alias, entry["path"], kind, ctx, par, entry.get("chat_template"),
                               mmproj))
    return specs


class Slot:
    """One configured heavyweight model and its lifecycle."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loaded: ChatModel | EmbeddingRuntime | None = None
        self.leases = 0
        self.draining = False
        self.loading = False
        self.last_used = 0.0
        self.created = int(time.time())

    @property
    def busy(self) -> bool:
        if self.leases:
            return True
        return isinstance(self.loaded, ChatModel) and (
            self.loaded.engine.num_running + self.loaded.engine.num_waiting > 0)


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec], *, engine_config: Callable[[ModelSpec], EngineConfig],
                 chat_template: str | None = None, max_loaded: int = 0,
                 embedding_concurrency: int = 2, embedding_threads: int = 1,
                 on_chat_loaded: Callable[[ChatModel], None] | None = None,
                 on_chat_unloaded: Callable[[ChatModel], None] | None = None,
                 load_timeout: float = 600.0, aliases: dict[str, str] | None = None,
                 any_model: bool = False) -> None:
        self.slots: dict[str, Slot] = {}
        for s in specs:
            if s.kind not in ("chat", "embedding"):
                raise ValueError(f"model {s.id!r}: the registry holds chat and embedding models")
            if s.id in self.slots:
                raise ValueError(f"model id {s.id!r} is configured twice")
            self.slots[s.id] = Slot(s)
        self.default: str | None = next((s.id for s in specs if s.kind == "chat"), None)
        self.aliases = dict(aliases or {})  # extra name -> a model id (or "default")
        self.any_model = any_model
        self.ready = False
        self._engine_config = engine_config
        self._chat_template = chat_template
        self.max_loaded = max_loaded
        self._emb_concurrency = embedding_concurrency
        self._emb_threads = embedding_threads
        self._on_chat_loaded = on_chat_loaded
        self._on_chat_unloaded = on_chat_unloaded
        self._load_timeout = load_timeout
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lookups -----------------------------------------------------------------------------
    @property
    def chat(self) -> dict[str, ChatModel]:
        """Loaded chat models by id."""
        return {i: s.loaded for i, s in self.slots.items() if isinstance(s.loaded, ChatModel)}

    def slot(self, name: str | None, kind: str | None = None) -> Slot:
        """The configured model ``name`` (None/"default" = the default chat model, or the first
        embedding model when ``kind`` is "embedding"; an ``--alias`` = its target). An unknown
        name is a 404 listing the ids, or with ``any_model`` the default model of ``kind``; a
        model of another kind than ``kind`` is a 400."""
        if not name and kind == "embedding":
            name = next((i for i, x in self.slots.items() if x.spec.kind == "embedding"), None)
            if name is None:
                raise ModelNotFound("no embedding model is configured", param="model")
        if not name or name == "default":
            if self.default is None:
                raise ModelNotFound("no chat model is configured", param="model")
            name = self.default
        s = self._find(name)
        if s is None and self.any_model and kind in ("chat", "embedding"):
            return self.slot(None, kind)
        if s is None:
            raise ModelNotFound(f"The model `{name}` does not exist; available models: "
                                f"{', '.join(self.ids(kind))}", param="model")
        if kind is not None and s.spec.kind != kind:
            use = "/v1/embeddings" if s.spec.kind == "embedding" else "/v1/chat/completions"
            raise InvalidRequest(f"model {s.spec.id!r} is a {s.spec.kind} model and cannot serve "
                                 f"this endpoint; use it with {use}", param="model",
                                 code="model_not_supported")
        return s

    def _find(self, name: str) -> Slot | None:
        target = self.aliases.get(name, name)
        if target == "default" and self.default is not None:
            target = self.default
        s = self.slots.get(target)
        if s is None:
            s = next((x for x in self.slots.values()
                      if name in (Path(x.spec.path).name, x.spec.path)), None)
        return s

    def ids(self, kind: str | None = None) -> list[str]:
        """Ids and aliases of the configured models (of ``kind`` if given)."""
        ids = [i for i, s in self.slots.items() if kind is None or s.spec.kind == kind]
        for alias in self.aliases:
            s = self._find(alias)
            if s is not None and (kind is None or s.spec.kind == kind):
                ids.append(alias)
        return ids

    def get_chat(self, name: str | None) -> ChatModel:
        """The loaded chat model ``name`` (callers hold a lease from ``acquire``)."""
        if not self.ready:
            raise ServiceUnavailable("the model is still loading; retry shortly",
                                     headers={"Retry-After": "2"})
        s = self.slot(name, "chat")
        if not isinstance(s.loaded, ChatModel) or s.draining:
            raise ServiceUnavailable(f"model {s.spec.id!r} is not loaded; retry shortly",
                                     headers={"Retry-After": "1"})
        s.last_used = time.monotonic()
        return s.loaded

    # ---- leases, loading, eviction -----------------------------------------------------------
    @asynccontextmanager
    async def acquire(self, name: str | None, kind: str) -> AsyncIterator[Any]:
        """Load ``name`` if needed and hold it (never evicted) for the ``async with`` block."""
        if not self.ready and kind == "chat":
            raise ServiceUnavailable("the model is still loading; retry shortly",
                                     headers={"Retry-After": "2"})
        s = self.slot(name, kind)
        await self._ensure_loaded(s)
        s.leases += 1  # no await since _ensure_loaded saw it loaded
        try:
            yield s.loaded
        finally:
            s.leases -= 1
            s.last_used = time.monotonic()

    async def load(self, name: str) -> Slot:
        """Load ``name`` now; a hub model not yet in the cache is downloaded first."""
        s = self.slot(name)
        if s.spec.kind == "transcription":
            raise InvalidRequest("transcription models load on first use", param="model")
        if s.spec.hub and not s.spec.path:
            from ferry import hub

            try:
                path = await asyncio.to_thread(hub.resolve, hub.parse(s.spec.hub))
            except hub.HubError as e:
                raise ServiceUnavailable(str(e), code="model_download_failed") from None
            s.spec = dataclasses.replace(s.spec, path=path or "")
        await self._ensure_loaded(s)
        return s

    async def _ensure_loaded(self, s: Slot) -> None:
        if not s.spec.path:  # never download for a request: only start-up and load() do
            raise ServiceUnavailable(f"model {s.spec.id!r} is not downloaded yet; POST "
                                     f"/v1/models/{s.spec.id}/load fetches it",
                                     code="model_not_downloaded")
        deadline = time.monotonic() + self._load_timeout
        while True:
            while s.draining:
                await self._wait(deadline, f"model {s.spec.id!r} is being unloaded")
            if s.loaded is not None:
                s.last_used = time.monotonic()
                return
            async with self._lock:
                if s.draining or s.loaded is not None:
                    continue
                victims = self._evict_for(s)
                if victims is not None:
                    s.loading = True
                    try:
                        for runtime in victims:
                            await asyncio.to_thread(_close, runtime)
                        s.loaded = await asyncio.to_thread(self._load_sync, s.spec)
                    finally:
                        s.loading = False
                    s.last_used = time.monotonic()
                    if isinstance(s.loaded, ChatModel) and self._on_chat_loaded:
                        self._on_chat_loaded(s.loaded)
                    return
            await self._wait(deadline, "every loaded model is busy; retry shortly")

    async def _wait(self, deadline: float, message: str) -> None:
        if time.monotonic() > deadline:
            raise ServiceUnavailable(message, headers={"Retry-After": "2"})
        await asyncio.sleep(BUSY_POLL_S)

    def _evict_for(self, s: Slot) -> list[ChatModel | EmbeddingRuntime | None] | None:
        """Make room for ``s``: detach idle models, least recently used first, and return their
        runtimes for the caller to close; None (nothing detached) if too many are busy. No await
        between the idle check and the detaching."""
        if self.max_loaded <= 0:
            return []
        loaded = [x for x in self.slots.values() if x.loaded is not None and x is not s]
        excess = len(loaded) + 1 - self.max_loaded
        idle = sorted((x for x in loaded if not x.busy and not x.draining),
                      key=lambda x: x.last_used)
        if excess > len(idle):
            return None
        victims = []
        for victim in idle[:max(excess, 0)]:
            log.info("evicting %s (least recently used) to load %s", victim.spec.id, s.spec.id)
            victims.append(self._detach(victim))
        return victims

    def _detach(self, s: Slot) -> ChatModel | EmbeddingRuntime | None:
        runtime, s.loaded = s.loaded, None
        if isinstance(runtime, ChatModel) and self._on_chat_unloaded:
            self._on_chat_unloaded(runtime)
        return runtime

    async def unload(self, name: str) -> str:
        """Unload ``name`` once its in-flight requests finish; returns its id."""
        s = self.slot(name)
        if s.spec.kind == "transcription":
            raise InvalidRequest("transcription models cannot be unloaded", param="model")
        if s.loaded is None or s.draining:
            return s.spec.id
        s.draining = True
        try:
            while s.busy:
                await asyncio.sleep(BUSY_POLL_S)
            async with self._lock:
                await asyncio.to_thread(_close, self._detach(s))
            log.info("unloaded %s", s.spec.id)
        finally:
            s.draining = False
        return s.spec.id

    def _load_sync(self, spec: ModelSpec) -> ChatModel | EmbeddingRuntime:
        if spec.kind == "embedding":
            from ferry.embeddings import EmbeddingModel

            n = spec.parallel or self._emb_concurrency
            em = EmbeddingModel.from_dir(spec.path, name=spec.id, n_threads=self._emb_threads,
                                         max_contexts=n,
                                         placement=self._engine_config(spec).placement)
            log.info("loaded embedding model %s from %s (dim=%d)", spec.id, spec.path, em.dim)
            return EmbeddingRuntime(spec.id, em, asyncio.Semaphore(n))
        assert self._loop is not None, "start() sets the loop"
        cfg = self._engine_config(spec)
        model = Model(spec.path, cfg.placement)
        engine = Engine(model, cfg)
        engine.start(self._loop)
        source = spec.chat_template or self._chat_template or model.chat_template
        template = ChatTemplate(source, model.bos_text, model.eos_text) if source else None
        log.info("loaded %s from %s (n_ctx_seq=%d, slots=%d)", spec.id, spec.path,
                 engine.n_ctx_seq, cfg.n_slots)
        return ChatModel(spec.id, spec.path, engine, template, projector=_projector(spec, model, cfg))

    async def start(self) -> None:
        """Load the default chat model; then ``ready``."""
        self._loop = asyncio.get_running_loop()
        if self.default is not None:
            await self._ensure_loaded(self.slots[self.default])
        self.ready = True

    def close(self) -> None:
        for s in self.slots.values():
            _close(self._detach(s))

    # ---- listing -----------------------------------------------------------------------------
    def state_of(self, s: Slot) -> str:
        if s.draining:
            return "unloading"
        if s.loading:
            return "loading"
        return "loaded" if s.loaded is not None else "unloaded"


def _projector(spec: ModelSpec, model: Model, cfg: EngineConfig) -> Any:
    if spec.mmproj is None:
        return None
    from ferry.vision.projector import Projector

    projector = Projector(spec.mmproj, model, n_threads=cfg.n_threads)
    log.info("loaded projector %s for %s", spec.mmproj, spec.id)
    return projector


def _close(runtime: ChatModel | EmbeddingRuntime | None) -> None:
    if isinstance(runtime, ChatModel):
        runtime.engine.stop()
        if runtime.projector is not None:
            runtime.projector.close()
        runtime.model.close()
    elif isinstance(runtime, EmbeddingRuntime):
        runtime.model.close()
