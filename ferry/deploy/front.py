"""The front door of a Ray deployment: Ferry's own HTTP layer (half-close protocol, middleware,
error envelopes, SSE encoder with pings and send timeouts) in front of engine replicas reached
through a Ray Serve deployment handle.

Invariants:
- Requests are validated here with the same models as the single server, so a client's mistake
  is answered before any replica is asked; a replica's typed error (``Reply``) is re-raised
  here as a ``FerryError`` with the same status, body and headers.
- A plain stream's bytes are the replica's, framed once (on the replica) by ``ferry.sse``; pings
  and send timeouts are this process's. When the client goes, the handle call is cancelled, which
  cancels the replica's generation. A replica that dies mid-stream ends the stream with one
  ``service_unavailable`` error event.
- A resumable stream is replayed from the Redis store, like any resume on any front door.
- Routing hints (``RouteHint``) ride along as the ``route`` keyword: the conversation key and
  the prompt text; ``ferry.deploy.router`` picks the replica.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ferry import __version__
from ferry.api import errors as api_errors
from ferry.api.middleware import FerryMiddleware, request_owner
from ferry.api.responses import router as responses_router
from ferry.api.routes import until_disconnect
from ferry.api.streams import router as streams_router
from ferry.deploy.registry import ReplicaRegistry
from ferry.deploy.replica import Reply
from ferry.deploy.routing import RouteHint
from ferry.errors import FerryError, ServiceUnavailable
from ferry.protocol.openai import ChatCompletionRequest, CompletionRequest
from ferry.protocol.responses import CreateResponseRequest, InputTokensRequest
from ferry.response_store import make_response_store
from ferry.services import stored_responses as stored
from ferry.services.resumable import StreamSessions
from ferry.settings import Settings
from ferry.sse import Event, EventStreamResponse, encode
from ferry.streams import check_conv_id, make_store

log = logging.getLogger(__name__)

REPLICA_HEADER = "X-Ferry-Replica"
STATUS_TIMEOUT_S = 10.0  # a replica busy past this is reported with an error


def remote_error(reply: Reply) -> FerryError:
    """The replica's typed error, as a FerryError the one handler renders identically."""
    body = (reply.body or {}).get("error", {})
    err = FerryError(body.get("message", "engine error"), param=body.get("param"),
                     code=body.get("code"), headers=reply.headers)
    err.status = reply.status
    err.type = body.get("type", "server_error")
    return err


def _replica_gone(exc: BaseException) -> ServiceUnavailable:
    log.warning("engine replica call failed: %s", exc)
    return ServiceUnavailable("the engine replica serving this request stopped; retry",
                              headers={"Retry-After": "1"})


class Engines:
    """The engine replicas, through a deployment handle."""

    def __init__(self, handle) -> None:
        from grpc.aio import AioRpcError
        from ray.exceptions import RayError

        # AioRpcError: what a gRPC handle call (launch.RAY_ENV) raises for a lost replica when
        # Serve does not map its status code to a RayError (it maps UNAVAILABLE and CANCELLED)
        self._errors = (RayError, AioRpcError)
        self.handle = handle
        self._stream_handle = None

    @property
    def _streaming(self):
        """The streaming handle, made on first use: with Serve's router on the caller's loop
        (``launch.RAY_ENV``) a handle can only be set up inside the loop that serves requests."""
        if self._stream_handle is None:
            self._stream_handle = self.handle.options(stream=True)
        return self._stream_handle

    async def stream(self, api: str, body: dict, route: RouteHint, conv_id: str | None,
                     owner: str | None) -> tuple[Reply, AsyncGenerator[bytes, None]]:
        call = self._streaming.stream.remote(api, body, route=route, conv_id=conv_id, owner=owner)
        try:
            reply = await call.__anext__()
        except self._errors as e:
            raise _replica_gone(e) from None
        except BaseException:
            call.cancel()
            raise
        return reply, self._rest(call)

    async def _rest(self, call) -> AsyncGenerator[bytes, None]:
        done = False
        try:
            async for chunk in call:
                yield chunk
            done = True
        except self._errors as e:
            yield encode(Event(_replica_gone(e).to_body()))
            done = True
        finally:
            if not done:
                call.cancel()  # the client went away: the replica cancels the generation

    async def complete(self, api: str, body: dict, route: RouteHint, owner: str | None
                       ) -> tuple[Reply, dict | None]:
        call = self.handle.complete.remote(api, body, route=route, owner=owner)
        try:
            return await until_cancelled(call)
        except self._errors as e:
            raise _replica_gone(e) from None

    async def status(self, replica: str) -> dict:
        call = self.handle.status.remote(route=RouteHint(replica=replica))
        try:
            return await asyncio.wait_for(until_cancelled(call), STATUS_TIMEOUT_S)
        except (TimeoutError, *self._errors) as e:
            return {"id": replica, "error": type(e).__name__}

    async def models(self) -> list[dict]:
        try:
            return await self.handle.models.remote()
        except self._errors as e:
            raise _replica_gone(e) from None


async def until_cancelled(call) -> Any:
    """Await a handle call; if this task is cancelled, cancel the call on the replica too."""
    try:
        return await call
    except asyncio.CancelledError:
        call.cancel()
        raise


class FrontState:
    """What the front door's routes need (the streams routes read ``settings`` and ``sessions``)."""

    def __init__(self, settings: Settings, engines: Engines, app_name: str) -> None:
        self.settings = settings
        self.engines = engines
        self.sessions = StreamSessions(
            make_store(settings.stream_store, buffer_bytes=settings.stream_buffer_bytes,
                       ttl=settings.stream_ttl), settings.sse_ping_interval)
        self.registry = ReplicaRegistry(settings.stream_store, app_name)
        self.responses = make_response_store(settings.response_store or settings.stream_store,
                                             ttl=settings.response_ttl)
        self._held: set[asyncio.Task] = set()

    def hold(self, call: AsyncIterator[bytes]) -> None:
        """Keep a resumable stream's call open until its generation ends, whatever the client
        does: Ray then counts it as the replica's ongoing request (routing, autoscaling)."""

        async def drain() -> None:
            async for _ in call:
                pass

        task = asyncio.create_task(drain())
        self._held.add(task)
        task.add_done_callback(self._held.discard)

    async def close(self) -> None:
        for task in list(self._held):
            task.cancel()  # the generations go on (the replica shields them)
        await self.sessions.close()
        await self.registry.close()
        await self.responses.close()


def _prompt_text(api: str, body: dict) -> str:
    """The prompt as text for prefix routing (the replica renders and tokenises it)."""
    if api == "chat":
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content")
            text = c if isinstance(c, str) else "".join(
                p.get("text", "") for p in c or [] if isinstance(p, dict))
            parts.append(f"{m.get('role')}\n{text}\n")
        return "".join(parts)
    if api in ("responses", "input_tokens"):
        inp = body.get("input")
        text = inp if isinstance(inp, str) else json.dumps(inp, separators=(",", ":"))
        return f"{body.get('instructions') or ''}\n{text}"
    p = body.get("prompt")
    if isinstance(p, str):
        return p
    if isinstance(p, list) and p and isinstance(p[0], int):
        return " ".join(map(str, p))
    return ""


async def forward(request: Request, api: str, stream: bool, background: bool = False) -> Any:
    """Send a validated chat/completion request to a replica and answer like the single server."""
    fs: FrontState = request.app.state.ferry
    s = fs.settings
    body = await request.json()  # cached: FastAPI parsed and validated it already
    conv_key = request.headers.get("x-conversation-id")
    if conv_key is not None:
        check_conv_id(conv_key, param="X-Conversation-Id", header=True)
    conv_id = conv_key if stream else None  # a resumable stream; any request routes on it
    previous = body.get("previous_response_id")
    prefer = await fs.registry.pinned(previous) if isinstance(previous, str) else None
    route = RouteHint(key=conv_key or previous, text=_prompt_text(api, body),
                      policy=s.ray_routing, prefer=prefer)
    owner = request_owner(request)
    if not stream or background:
        cancel = _Cancel()
        reply, result = await until_disconnect(
            request, fs.engines.complete(api, body, route, owner), cancel)
        if reply.status != 200:
            raise remote_error(reply)
        if not stream:
            return JSONResponse(result, headers={REPLICA_HEADER: reply.replica})
        assert result is not None  # a background response's snapshot (status 200)
        events = await stored.replay(fs.responses, fs.sessions.store, owner, result["id"], None)
        return EventStreamResponse(events, ping_interval=0, send_timeout=s.send_timeout,
                                   headers={REPLICA_HEADER: reply.replica})
    reply, chunks = await fs.engines.stream(api, body, route, conv_id, owner)
    if reply.status != 200:
        await chunks.aclose()
        raise remote_error(reply)
    headers = {REPLICA_HEADER: reply.replica}
    if conv_id is None:
        return EventStreamResponse(chunks, ping_interval=s.sse_ping_interval,
                                   send_timeout=s.send_timeout, headers=headers)
    fs.hold(chunks)
    replay = await fs.sessions.store.replay(conv_id, owner, offset=0)
    return EventStreamResponse(replay, ping_interval=0, send_timeout=s.send_timeout,
                               headers={**headers, "X-Conversation-Id": conv_id})


class _Cancel:
    """``until_disconnect`` cancels the work task itself; the handle call follows it."""

    def cancel(self) -> None:
        pass


def _routes(app: FastAPI) -> None:
    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        return await forward(request, "chat", body.stream)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        return await forward(request, "completion", body.stream)

    @app.post("/v1/responses")
    async def create_response(body: CreateResponseRequest, request: Request):
        return await forward(request, "responses", bool(body.stream), bool(body.background))

    @app.post("/v1/responses/input_tokens")
    async def count_input_tokens(body: InputTokensRequest, request: Request):
        return await forward(request, "input_tokens", False)

    @app.get("/v1/models")
    async def list_models(request: Request):
        return {"object": "list", "data": await request.app.state.ferry.engines.models()}

    @app.get("/health")
    async def health(request: Request):
        """The engine replicas alive now (Redis registry), each with its engine status."""
        fs: FrontState = request.app.state.ferry
        live = await fs.registry.live()
        statuses = await asyncio.gather(*(fs.engines.status(r["id"]) for r in live))
        replicas = [{**r, **st} for r, st in zip(live, statuses)]
        if not any("error" not in r for r in replicas):
            raise ServiceUnavailable("no engine replica is ready yet", headers={"Retry-After": "2"})
        return {"status": "ok", "replicas": replicas}


def create_front_app(settings: Settings, engines: Engines, app_name: str = "ferry") -> FastAPI:
    state = FrontState(settings, engines, app_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            await state.close()

    app = FastAPI(title="Ferry", version=__version__, lifespan=lifespan,
                  description="OpenAI-compatible LLM inference server (Ray front door)")
    app.state.ferry = state
    api_errors.install(app)
    _routes(app)  # before the Responses router: its create and count routes are replaced
    app.include_router(streams_router)
    app.include_router(responses_router)  # retrieve, delete, cancel, input items: from Redis
    app.add_middleware(FerryMiddleware, api_keys=settings.api_key,
                       max_body_size=settings.max_body_size)
    return app
