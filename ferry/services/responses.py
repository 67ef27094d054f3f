"""The Responses API as a translation of the chat path: request -> chat request -> the one
chat job/Generation -> chat chunks -> Responses events (`response_events`).

Invariants:
- Nothing here reaches the engine except through `completions.prepare_chat_async` and
  `ChatJob.start`; sampling, tools, structured output and images behave exactly as in chat.
- A conversation is a list of *items* in the stored (``input_items``) form, each with an ``id``:
  a turn's context is the previous response's items, then its output, then this request's input.
  ``instructions`` are not items: they apply to their own turn only.
- A stored response is saved before its terminal event is sent, so a client that saw
  ``response.completed`` can retrieve it; a background one is saved before the POST answers.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from pydantic import ValidationError

from ferry.errors import ContextTooLong, FerryError, InvalidRequest
from ferry.protocol.openai import ChatCompletionRequest
from ferry.protocol.responses import CreateResponseRequest, FormatJsonSchema, InputTokensRequest
from ferry.response_store import ResponseStore, StoredResponse
from ferry.services import response_items as items
from ferry.services.completions import ChatJob, chat_stream, prepare_chat_async
from ferry.services.generation import Generation
from ferry.services.models import ChatModel
from ferry.services.response_events import ResponseEvents
from ferry.sse import DONE, Event
from ferry.vision.images import ImagePolicy

# chat parameter -> the Responses parameter a client sent (errors name what the client knows)
_PARAMS = {"response_format": "text.format", "max_tokens": "max_output_tokens",
           "max_completion_tokens": "max_output_tokens", "messages": "input"}


@dataclass
class ResponseRun:
    """A validated create request: the chat job that runs it and the record it becomes."""

    req: CreateResponseRequest
    job: ChatJob
    record: StoredResponse
    owner: str | None
    store: ResponseStore

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def stored(self) -> bool:
        return self.req.store is not False

    async def save(self) -> None:
        """Create the record, or (background: created at the start) update it unless deleted."""
        if self.stored:
            await self.store.save(self.owner, self.record, update=bool(self.req.background))


async def context(req: CreateResponseRequest | InputTokensRequest, store: ResponseStore,
                  owner: str | None) -> list[dict]:
    """The conversation's items: the previous response's, then the new input's."""
    before: list[dict] = []
    if req.previous_response_id is not None:
        try:
            prev = await store.get(owner, req.previous_response_id)
        except FerryError as e:
            e.param = "previous_response_id"
            raise
        if not prev.done:
            raise InvalidRequest(f"Previous response '{prev.id}' is still {prev.status}.",
                                 param="previous_response_id")
        before = prev.items + prev.response["output"]
    return before + items.canonical(req.input, before)


def _chat_request(req: CreateResponseRequest, messages: list[dict]) -> ChatCompletionRequest:
    fmt = (req.text.format if req.text else None)
    body: dict = {
        "model": req.model, "messages": messages, "stream": True,
        "stream_options": {"include_usage": True},
        "max_completion_tokens": req.max_output_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "user": req.user, "seed": req.seed, "ignore_eos": req.ignore_eos,
        "logprobs": req.logprobs, "top_logprobs": req.top_logprobs if req.logprobs else None,
        "parallel_tool_calls": req.parallel_tool_calls is not False,
    }
    if req.tools is not None:
        body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"})}
                         for t in req.tools]
    if req.tool_choice is not None:
        tc = req.tool_choice
        body["tool_choice"] = tc if isinstance(tc, str) else {"type": "function",
                                                             "function": {"name": tc.name}}
    if isinstance(fmt, FormatJsonSchema):
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict}}
    elif fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise InvalidRequest(f"invalid input: {e.errors()[0]['msg']}", param="input") from None


async def _prepare_chat(req: CreateResponseRequest, conv: list[dict], cm: ChatModel,
                        policy: ImagePolicy) -> ChatJob:
    """The chat job; with ``truncation: auto`` the oldest items are dropped until it fits."""
    messages = items.chat_messages(conv, req.instructions)
    while True:
        try:
            return await prepare_chat_async(_chat_request(req, messages), cm, policy)
        except ContextTooLong as e:
            first = 1 if messages and messages[0]["role"] == "system" else 0
            if req.truncation != "auto" or len(messages) - first < 2:
                raise _renamed(e) from None
            del messages[first]
        except FerryError as e:
            raise _renamed(e) from None


def _renamed(e: FerryError) -> FerryError:
    root = (e.param or "").split(".")[0]
    if root in _PARAMS:
        e.param = _PARAMS[root]
    return e


async def prepare(req: CreateResponseRequest, cm: ChatModel, policy: ImagePolicy,
                  store: ResponseStore, owner: str | None) -> ResponseRun:
    if req.background and req.store is False:
        raise InvalidRequest("background responses must be stored: store cannot be false",
                             param="background")
    conv = await context(req, store, owner)
    job = await _prepare_chat(req, conv, cm, policy)
    record = StoredResponse(skeleton(req, cm.id), conv)
    return ResponseRun(req, job, record, owner, store)


async def input_tokens(req: InputTokensRequest, cm: ChatModel, policy: ImagePolicy,
                       store: ResponseStore, owner: str | None) -> int:
    """Prompt tokens the same fields would give ``POST /v1/responses``."""
    full = CreateResponseRequest.model_validate(req.model_dump(by_alias=True, exclude_none=True))
    conv = await context(full, store, owner)
    return len((await _prepare_chat(full, conv, cm, policy)).prompt)


def skeleton(req: CreateResponseRequest, model_id: str) -> dict:
    """The Response object before anything is generated."""
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text else None
    tc = req.tool_choice
    resp = {
        "id": f"resp_{uuid.uuid4().hex}", "object": "response", "created_at": int(time.time()),
        "status": "queued" if req.background else "in_progress", "background": bool(req.background),
        "completed_at": None, "error": None, "incomplete_details": None,
        "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
        "model": model_id, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False,
        "previous_response_id": req.previous_response_id, "reasoning": {"effort": None,
                                                                         "summary": None},
        "service_tier": "default", "store": req.store is not False,
        "temperature": 1.0 if req.temperature is None else req.temperature,
        "text": {"format": fmt or {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto" if tc is None else tc if isinstance(tc, str) else tc.model_dump(),
        "tools": [dict(t.model_dump(), strict=t.strict is not False) for t in req.tools or ()],
        "top_logprobs": req.top_logprobs or 0,
        "top_p": 1.0 if req.top_p is None else req.top_p,
        "truncation": req.truncation or "disabled", "metadata": req.metadata or {},
    }
    if req.user is not None:
        resp["user"] = req.user
    return resp


def _sse(ev: dict) -> Event:
    return Event(ev, event=ev["type"])


async def events(run: ResponseRun, gen: Generation, *, raise_errors: bool = False
                 ) -> AsyncGenerator[Event, None]:
    """The response's stream events; the record is saved before the terminal one."""
    b = ResponseEvents(run.record.response, logprobs=run.req.logprobs)
    for ev in b.created():
        yield _sse(ev)
    try:
        async for chunk in chat_stream(run.job, gen):
            if chunk is DONE:
                continue
            was_started = b.started
            out = b.feed(chunk.data)  # type: ignore[union-attr]
            if b.started and not was_started and run.req.background:
                await run.save()  # queued -> in_progress
            for ev in out:
                yield _sse(ev)
        out = b.end()
    except FerryError as e:
        out = b.fail(e)
        if raise_errors:
            raise
    finally:
        if not b.finished and b.response["status"] not in ("completed", "incomplete"):
            b.response["status"] = "cancelled"  # the client left or the response was cancelled
        await run.save()
    for ev in out:
        yield _sse(ev)


async def result(run: ResponseRun, gen: Generation) -> dict:
    """The final Response object (non-streamed request)."""
    async for _ in events(run, gen, raise_errors=True):
        pass
    return run.record.response


def snapshot(run: ResponseRun) -> dict:
    """A copy of the Response object as it is now (for answers sent while it runs on)."""
    return copy.deepcopy(run.record.response)
