"""Configured models by id (chat, embedding, transcription), loaded on first use, LRU-evicted.

Invariants:
- Every configured model has one ``ModelEntry``; ``ModelEntry.loaded`` is the live runtime or
  None. Only chat and embedding models count against ``max_loaded`` and can be unloaded;
  transcription models stay loaded once used. An alias names the same entry as its target.
- A model is *busy* while it holds a lease (``acquire``) or its engine has queued or running
  sequences. A busy model is never evicted; ``unload`` waits until it is idle, so in-flight
  requests finish first. Requests for a draining model wait for the unload, then load it again.
- All load/evict decisions run on the event loop under one lock; the check "idle" and the
  removal of a victim happen without an ``await`` in between, so no lease can slip in.
- Whoever waits for a model to become free (a load that needs room, an unload, a request for a
  draining model) sleeps until ``_notify``: a lease ends, a sequence finishes (the engine's
  ``on_finish``), a model loads or unloads. No polling.
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

from ferry.audio.transcriber import Transcriber
from ferry.engine.chat_template import ChatTemplate
from ferry.engine.engine import Engine, EngineConfig
from ferry.engine.model import Model
from ferry.errors import InvalidRequest, ModelNotFound, ServiceUnavailable
from ferry.structured.vocab import TokenVocab

log = logging.getLogger(__name__)

KINDS = ("chat", "embedding", "transcription")
ENDPOINTS = {"chat": "/v1/chat/completions", "embedding": "/v1/embeddings",
             "transcription": "/v1/audio/transcriptions"}


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
    forwards: asyncio.Semaphore  # at most ``parallel`` forwards at once


Runtime = ChatModel | EmbeddingRuntime | Transcriber


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
        raise ValueError(f"{path}: expected a list of models (or a 'models:' key)")
    specs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"{path}: model {i} needs a 'path'")
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


class ModelEntry:
    """One configured model and its lifecycle (``loaded`` is its runtime, or None)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.loaded: Runtime | None = None
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

    @property
    def evictable(self) -> bool:
        """Chat and embedding models count against ``max_loaded``; transcription models stay."""
        return self.spec.kind != "transcription"


class ModelRegistry:
    def __init__(self, specs: list[ModelSpec], *,
                 engine_config: Callable[[ModelSpec], EngineConfig],
                 aliases: dict[str, str] | None = None,
                 chat_template: str | None = None, max_loaded: int = 0,
                 embedding_concurrency: int = 2, embedding_threads: int = 1,
                 transcription_concurrency: int = 1,
                 on_chat_loaded: Callable[[ChatModel], None] | None = None,
                 on_chat_unloaded: Callable[[ChatModel], None] | None = None,
                 load_timeout: float = 600.0, any_model: bool = False) -> None:
        """``aliases``: more names for configured models (``--alias``, ``whisper-1`` ->
        ``whisper-tiny.en``; a target may be "default"). ``any_model``: an unknown name is the
        default model of the kind asked for, not a 404."""
        self.entries: dict[str, ModelEntry] = {}
        for s in specs:
            if s.kind not in KINDS:
                raise ValueError(f"model {s.id!r} has kind {s.kind!r}; expected one of {KINDS}")
            if s.id in self.entries:
                raise ValueError(f"model id {s.id!r} is configured twice")
            self.entries[s.id] = ModelEntry(s)
        self.default: str | None = next((s.id for s in specs if s.kind == "chat"), None)
        self.aliases = dict(aliases or {})  # extra name -> a model id (or "default")
        self.any_model = any_model
        self.ready = False
        self._engine_config = engine_config
        self._chat_template = chat_template
        self.max_loaded = max_loaded
        self._emb_concurrency = embedding_concurrency
        self._emb_threads = embedding_threads
        self._asr_concurrency = transcription_concurrency
        self._on_chat_loaded = on_chat_loaded
        self._on_chat_unloaded = on_chat_unloaded
        self._load_timeout = load_timeout
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()  # set (and replaced) whenever a model may have freed up
        self._loop: asyncio.AbstractEventLoop | None = None

    # ---- lookups -----------------------------------------------------------------------------
    @property
    def chat(self) -> dict[str, ChatModel]:
        """Loaded chat models by id."""
        return {i: s.loaded for i, s in self.entries.items() if isinstance(s.loaded, ChatModel)}

    def names(self) -> list[tuple[str, ModelEntry]]:
        """Every name a client may use, with its entry: ids, then aliases."""
        aliased = ((a, self._find(a)) for a in self.aliases)
        return [*self.entries.items(), *((a, s) for a, s in aliased if s is not None)]

    def ids(self, kind: str | None = None) -> list[str]:
        """Ids and aliases of the configured models (of ``kind`` if given)."""
        return [n for n, s in self.names() if kind is None or s.spec.kind == kind]

    def entry(self, name: str | None, kind: str | None = None) -> ModelEntry:
        """The configured model ``name`` (None/"default" = the default chat model, or the first
        model of ``kind`` for embeddings and transcriptions; an alias = its target). An unknown
        name is a 404 listing the ids, or with ``any_model`` the default model of ``kind``; a
        model of another kind than ``kind`` is a 400."""
        if not name and kind in ("embedding", "transcription"):
            name = next((i for i, x in self.entries.items() if x.spec.kind == kind), None)
            if name is None:
                raise ModelNotFound(f"no {kind} model is configured", param="model")
        if not name or name == "default":
            if self.default is None:
                raise ModelNotFound("no chat model is configured", param="model")
            name = self.default
        s = self._find(name)
        if s is None and self.any_model and kind is not None:
            return self.entry(None, kind)
        if s is None:
            raise ModelNotFound(f"The model `{name}` does not exist; available models: "
                                f"{', '.join(self.ids(kind))}", param="model")
        if kind is not None and s.spec.kind != kind:
            raise InvalidRequest(f"model {s.spec.id!r} is a {s.spec.kind} model and cannot serve "
                                 f"this endpoint; use it with {ENDPOINTS[s.spec.kind]}",
                                 param="model", code="model_not_supported")
        return s

    def _find(self, name: str) -> ModelEntry | None:
        target = self.aliases.get(name, name)
        if target == "default" and self.default is not None:
            target = self.default
        s = self.entries.get(target)
        if s is None:
            s = next((x for x in self.entries.values()
                      if name in (Path(x.spec.path).name, x.spec.path)), None)
        return s

    # ---- leases, loading, eviction -----------------------------------------------------------
    @asynccontextmanager
    async def acquire(self, name: str | None, kind: str) -> AsyncIterator[Any]:
        """Load ``name`` if needed and hold it (never evicted) for the ``async with`` block."""
        if not self.ready and kind == "chat":
            raise ServiceUnavailable("the model is still loading; retry shortly",
                                     headers={"Retry-After": "2"})
        s = self.entry(name, kind)
        await self._ensure_loaded(s)
        s.leases += 1  # no await since _ensure_loaded saw it loaded
        try:
            yield s.loaded
        finally:
            s.leases -= 1
            s.last_used = time.monotonic()
            self._notify()

    async def transcriber(self, name: str) -> Transcriber:
        """The transcription model ``name``, loaded on first use (never evicted)."""
        s = self.entry(name, "transcription")
        await self._ensure_loaded(s)
        assert isinstance(s.loaded, Transcriber)
        return s.loaded

    async def load(self, name: str) -> ModelEntry:
        """Load ``name`` now; a hub model not yet in the cache is downloaded first."""
        s = self.entry(name)
        if s.spec.hub and not s.spec.path:
            from ferry import hub

            try:
                ref = hub.parse(s.spec.hub)
                assert ref is not None  # spec.hub is only ever set to a parsed HubRef's name
                path = await asyncio.to_thread(hub.resolve, ref)
            except hub.HubError as e:
                raise ServiceUnavailable(str(e), code="model_download_failed") from None
            s.spec = dataclasses.replace(s.spec, path=path or "")
        await self._ensure_loaded(s)
        return s

    async def _ensure_loaded(self, s: ModelEntry) -> None:
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
                    if isinstance(s.loaded, ChatModel):
                        s.loaded.engine.on_finish = self._notify
                        if self._on_chat_loaded:
                            self._on_chat_loaded(s.loaded)
                    self._notify()
                    return
            await self._wait(deadline, "every loaded model is busy; retry shortly")

    def _notify(self) -> None:
        """Wake every waiter: a lease ended, a sequence finished, a model (un)loaded."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait(self, deadline: float | None, message: str = "") -> None:
        """Until the next ``_notify``; past ``deadline`` a 503 with ``message``. Callers check
        their condition and call this with no ``await`` in between, so no wake-up is missed."""
        changed = self._changed
        timeout = None if deadline is None else deadline - time.monotonic()
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            raise ServiceUnavailable(message, headers={"Retry-After": "2"}) from None

    def _evict_for(self, s: ModelEntry) -> list[Runtime | None] | None:
        """Make room for ``s``: detach idle models, least recently used first, and return their
        runtimes for the caller to close; None (nothing detached) if too many are busy. No await
        between the idle check and the detaching."""
        if self.max_loaded <= 0 or not s.evictable:
            return []
        loaded = [x for x in self.entries.values()
                  if x.loaded is not None and x is not s and x.evictable]
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

    def _detach(self, s: ModelEntry) -> Runtime | None:
        runtime, s.loaded = s.loaded, None
        if isinstance(runtime, ChatModel) and self._on_chat_unloaded:
            self._on_chat_unloaded(runtime)
        return runtime

    async def unload(self, name: str) -> str:
        """Unload ``name`` once its in-flight requests finish; returns its id."""
        s = self.entry(name)
        if not s.evictable:
            raise InvalidRequest(f"{s.spec.kind} models cannot be unloaded", param="model")
        if s.loaded is None or s.draining:
            return s.spec.id
        s.draining = True
        try:
            while s.busy:
                await self._wait(None)
            async with self._lock:
                await asyncio.to_thread(_close, self._detach(s))
            log.info("unloaded %s", s.spec.id)
        finally:
            s.draining = False
            self._notify()
        return s.spec.id

    def _load_sync(self, spec: ModelSpec) -> Runtime:
        if spec.kind == "transcription":
            n = spec.parallel or self._asr_concurrency
            return Transcriber.from_dir(spec.path, max_concurrency=n)
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
        return ChatModel(spec.id, spec.path, engine, template,
                         projector=_projector(spec, model, cfg))

    async def start(self) -> None:
        """Load the default chat model; then ``ready``."""
        self._loop = asyncio.get_running_loop()
        if self.default is not None:
            await self._ensure_loaded(self.entries[self.default])
        self.ready = True

    def close(self) -> None:
        for s in self.entries.values():
            _close(self._detach(s))

    # ---- listing -----------------------------------------------------------------------------
    def state_of(self, s: ModelEntry) -> str:
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


def _close(runtime: Runtime | None) -> None:
    if isinstance(runtime, ChatModel):
        runtime.engine.stop()
        if runtime.projector is not None:
            runtime.projector.close()
        runtime.model.close()
    elif isinstance(runtime, EmbeddingRuntime):
        runtime.model.close()
