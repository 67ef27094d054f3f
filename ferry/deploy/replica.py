"""An engine replica: one Ferry engine (its models and its Redis-backed stream sessions) inside
a Ray Serve replica, called by the front doors through deployment handles.

Invariants:
- Every call answers with plain data. Its first item is a ``Reply``: the replica that took the
  request, or the typed error (status, OpenAI body, headers) the single server would have
  answered; for a plain stream the encoded SSE bytes follow. No exception crosses Ray for a
  client's mistake, so the front door renders exactly the single server's envelopes.
- Cancelling a call (the front door's client went away) cancels its generation within one
  engine step: the generator or coroutine is cancelled and ``Generation`` cancels its sequences.
- A resumable stream is pumped into the Redis store here, next to its generation, and the call
  returns once the session exists; any front door replays, resumes or deletes it from Redis. If
  this process dies, the store's writer heartbeat lapses and every reader gets its error event.
- While alive, the replica refreshes its entry in the ``ReplicaRegistry`` (front doors' /health).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from ferry.api import errors as api_errors
from ferry.api.models import describe
from ferry.app import AppState
from ferry.deploy.registry import ReplicaRegistry
from ferry.deploy.routing import RouteHint
from ferry.errors import FerryError, InvalidRequest
from ferry.protocol.openai import ChatCompletionRequest, CompletionRequest
from ferry.protocol.responses import CreateResponseRequest, InputTokensRequest
from ferry.services import completions as svc
from ferry.services import responses as rsvc
from ferry.services import stored_responses as stored
from ferry.services.generation import Generation
from ferry.services.resumable import encoded
from ferry.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    """The head of every answer: who served it, or the error to send instead."""

    replica: str
    status: int = 200
    body: dict | None = None  # the error envelope, or a background response's snapshot
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def error(replica: str, exc: FerryError) -> Reply:
        return Reply(replica, exc.status, exc.to_body(), dict(exc.headers))


@dataclass(slots=True)
class _Run:
    """A started request: its generation, its stream and non-stream views, or (a background
    response) the snapshot answered at once while it runs on in its session."""

    gen: Generation
    events: AsyncGenerator | None  # None (like result) only for a background response
    result: Callable[[], Awaitable[dict]] | None
    snapshot: dict | None = None


def _validate(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise api_errors.validation_error(RequestValidationError(e.errors())) from None


class EngineReplica:
    """Deployed by ``ferry.deploy.app``; ``settings`` are ``Settings`` fields as a dict."""

    # Serve awaits an async constructor; mypy wants __init__ to return None, not a coroutine
    async def __init__(self, settings: dict, app_name: str = "ferry") -> None:  # type: ignore[misc]
        """Loads the models before Ray marks the replica running (Serve awaits this)."""
        self.settings = Settings(**settings)
        self.state = AppState(self.settings)
        self.id = _replica_id()
        self.registry = ReplicaRegistry(self.settings.stream_store, app_name)
        await self.state.load()
        self._beat = asyncio.create_task(self.registry.beat(self.id, {"pid": os.getpid()}))

    async def check_health(self) -> None:
        """Ray's health check: a failed model load marks the replica unhealthy (Ray replaces it)."""
        if self.state.load_error:
            raise RuntimeError(f"model load failed: {self.state.load_error}")

    async def _start(self, api: str, body: dict, owner: str | None) -> _Run:
        """Validate, prepare and submit: the job's sequences are in the engine when this returns
        (a background response is already running in its stream-store session)."""
        s = self.state
        if api == "responses":
            rreq = _validate(CreateResponseRequest, body)
            async with s.models.acquire(rreq.model, "chat") as cm:
                run = await rsvc.prepare(rreq, cm, s.images, s.responses, owner)
                gen = run.job.start()
            if rreq.store:
                await self.registry.pin(run.id, self.id, self.settings.response_ttl)
            if rreq.background:
                await stored.start_background(run, gen, s.sessions)
                return _Run(gen, None, None, rsvc.snapshot(run))
            return _Run(gen, rsvc.events(run, gen), functools.partial(rsvc.result, run, gen))
        req = _validate(ChatCompletionRequest if api == "chat" else CompletionRequest, body)
        if req.n > self.settings.max_n:
            raise InvalidRequest(f"n must be at most {self.settings.max_n}", param="n")
        job: svc.ChatJob | svc.CompletionJob
        async with s.models.acquire(req.model, "chat") as cm:
            if api == "chat":
                job = await svc.prepare_chat_async(req, cm, s.images)
            else:
                job = svc.prepare_completion(req, cm)
            gen = job.start()
        if isinstance(job, svc.ChatJob):
            return _Run(gen, svc.chat_stream(job, gen), functools.partial(svc.chat_response, job, gen))
        return _Run(gen, svc.completion_stream(job, gen),
                    functools.partial(svc.completion_response, job, gen))

    async def stream(self, api: str, body: dict, *, route: RouteHint | None = None,
                     conv_id: str | None = None, owner: str | None = None
                     ) -> AsyncIterator[Reply | bytes]:
        """``Reply``, then (plain streams only) the SSE bytes. ``route`` is for the router."""
        try:
            run = await self._start(api, body, owner)
            if run.snapshot is None and conv_id is not None:
                assert run.events is not None  # not a background response
                pump = await self.state.sessions.start(conv_id, owner, run.events, run.gen)
        except FerryError as e:
            yield Reply.error(self.id, e)
            return
        yield Reply(self.id, body=run.snapshot)
        if run.snapshot is not None:
            return  # a background response: the front door replays its session
        if conv_id is not None:
            # Held open while the generation runs, so Ray counts the stream as ongoing (least
            # loaded routing, autoscaling); cancelling the call does not stop the generation.
            await asyncio.shield(pump)
            return
        assert run.events is not None  # not a background response
        try:
            async for chunk in coalesced(encoded(run.events)):
                yield chunk
        finally:
            run.gen.cancel()

    async def complete(self, api: str, body: dict, *, route: RouteHint | None = None,
                       owner: str | None = None) -> tuple[Reply, dict | None]:
        try:
            if api == "input_tokens":
                return Reply(self.id), await self._input_tokens(body, owner)
            run = await self._start(api, body, owner)
        except FerryError as e:
            return Reply.error(self.id, e), None
        if run.snapshot is not None:
            return Reply(self.id), run.snapshot
        assert run.events is not None and run.result is not None  # not a background response
        await run.events.aclose()  # the stream view is not used
        try:
            return Reply(self.id), await run.result()
        except FerryError as e:
            return Reply.error(self.id, e), None
        finally:
            run.gen.cancel()

    async def _input_tokens(self, body: dict, owner: str | None) -> dict:
        s = self.state
        req = _validate(InputTokensRequest, body)
        async with s.models.acquire(req.model, "chat") as cm:
            n = await rsvc.input_tokens(req, cm, s.images, s.responses, owner)
        return {"object": "response.input_tokens", "input_tokens": n}

    async def status(self, *, route: RouteHint | None = None) -> dict:
        """This replica's engine status (``/health`` of a single server, per model)."""
        reg = self.state.models
        models = {mid: dataclasses.asdict(cm.engine.status()) for mid, cm in reg.chat.items()}
        return {"id": self.id, "pid": os.getpid(), "ready": reg.ready, "models": models,
                "streams": self.state.sessions.live}

    async def models(self, *, route: RouteHint | None = None) -> list[dict]:
        return [m.model_dump() for m in describe(self.state)]

    async def __del__(self) -> None:
        self._beat.cancel()
        await self.registry.forget(self.id)
        await self.registry.close()
        await self.state.close()


async def coalesced(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``chunks`` with every chunk that is ready joined into one: each item of a Ray streaming
    call costs a serialization and a message whatever its size, so while the consumer takes its
    time the engine's steps pile up here and leave as one item (one per step when it keeps up).

    Invariants: bytes and their order are unchanged; an error of ``chunks`` is raised after the
    bytes read before it; closing this generator cancels the reader and closes ``chunks``."""
    ready: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()

    async def read() -> None:
        try:
            async for chunk in chunks:
                ready.put_nowait(chunk)
        except Exception as e:  # delivered in order, after what was read before it
            ready.put_nowait(e)
        else:
            ready.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while True:
            items = [await ready.get()]
            while not ready.empty():
                items.append(ready.get_nowait())
            tail = items[-1]  # None or an error ends the stream (nothing is put after it)
            parts = [x for x in items if isinstance(x, bytes)]
            if parts:
                yield b"".join(parts)
            if not isinstance(tail, bytes):
                if tail is not None:
                    raise tail
                return
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await chunks.aclose()


def _replica_id() -> str:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:  # outside a Serve replica: the process id names it
        return f"local-{os.getpid()}"
