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
import dataclasses
import logging
import os
from collections.abc import AsyncIterator
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
from ferry.services import completions as svc
from ferry.services.generation import Generation
from ferry.services.resumable import encoded
from ferry.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Reply:
    """The head of every answer: who served it, or the error to send instead."""

    replica: str
    status: int = 200
    body: dict | None = None  # the OpenAI error envelope when status != 200
    headers: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def error(replica: str, exc: FerryError) -> Reply:
        return Reply(replica, exc.status, exc.to_body(), dict(exc.headers))


def _validate(model, body: dict):
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise api_errors.validation_error(RequestValidationError(e.errors())) from None


class EngineReplica:
    """Deployed by ``ferry.deploy.app``; ``settings`` are ``Settings`` fields as a dict."""

    async def __init__(self, settings: dict, app_name: str = "ferry") -> None:
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

    async def _start(self, api: str, body: dict) -> tuple[object, Generation, AsyncIterator]:
        """Validate, prepare and submit: the job's sequences are in the engine when this returns."""
        s = self.state
        req = _validate(ChatCompletionRequest if api == "chat" else CompletionRequest, body)
        if req.n > self.settings.max_n:
            raise InvalidRequest(f"n must be at most {self.settings.max_n}", param="n")
        async with s.models.acquire(req.model, "chat") as cm:
            if api == "chat":
                job = await svc.prepare_chat_async(req, cm, s.images)
            else:
                job = svc.prepare_completion(req, cm)
            gen = job.start()
        stream = svc.chat_stream if api == "chat" else svc.completion_stream
        return job, gen, stream(job, gen)  # type: ignore[arg-type]

    async def stream(self, api: str, body: dict, *, route: RouteHint | None = None,
                     conv_id: str | None = None, owner: str | None = None
                     ) -> AsyncIterator[Reply | bytes]:
        """``Reply``, then (plain streams only) the SSE bytes. ``route`` is for the router."""
        try:
            _, gen, events = await self._start(api, body)
            if conv_id is not None:
                pump = await self.state.sessions.start(conv_id, owner, events, gen)
        except FerryError as e:
            yield Reply.error(self.id, e)
            return
        yield Reply(self.id)
        if conv_id is not None:
            # Held open while the generation runs, so Ray counts the stream as ongoing (least
            # loaded routing, autoscaling); cancelling the call does not stop the generation.
            await asyncio.shield(pump)
            return
        try:
            async for chunk in encoded(events):
                yield chunk
        finally:
            gen.cancel()

    async def complete(self, api: str, body: dict, *, route: RouteHint | None = None
                       ) -> tuple[Reply, dict | None]:
        try:
            job, gen, events = await self._start(api, body)
        except FerryError as e:
            return Reply.error(self.id, e), None
        await events.aclose()  # the stream view is not used
        try:
            respond = svc.chat_response if api == "chat" else svc.completion_response
            return Reply(self.id), await respond(job, gen)  # type: ignore[arg-type]
        except FerryError as e:
            return Reply.error(self.id, e), None
        finally:
            gen.cancel()

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


def _replica_id() -> str:
    from ray import serve
    from ray.serve.exceptions import RayServeException

    try:
        return serve.get_replica_context().replica_id.unique_id
    except RayServeException:  # outside a Serve replica: the process id names it
        return f"local-{os.getpid()}"
