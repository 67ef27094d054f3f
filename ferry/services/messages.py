"""Anthropic Messages over the one chat path: a ``MessagesRequest`` becomes a chat request
(`messages_to_chat`), runs as a chat (``prepare_chat_async`` → ``Generation``), and the chat's
answer and stream chunks become Anthropic's message and events. Nothing here talks to the engine.

Invariants:
- A request's prompt is exactly the prompt of the chat it translates to, so ``count_tokens``
  equals ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens`` of its answer.
- ``max_tokens`` is capped at the context left after the prompt; a generation that stops there
  (and not at the client's own cap) ends with ``model_context_window_exceeded``.
- A stream is ``message_start``, ``ping``, then each content block as ``content_block_start``,
  deltas and ``content_block_stop`` (indices in order), then ``message_delta`` and
  ``message_stop``. Its events assemble into the message the same request gets unstreamed.
  An error after the start is an ``error`` event that ends the stream; nothing follows it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from ferry.errors import FerryError
from ferry.protocol import anthropic as proto
from ferry.protocol.anthropic import CountTokensRequest, MessagesRequest
from ferry.services.completions import ChatJob, chat_response, chat_stream, prepare_chat_async
from ferry.services.generation import Generation
from ferry.services.messages_input import messages_to_chat
from ferry.services.models import ChatModel
from ferry.sse import DONE, Event
from ferry.vision.images import ImagePolicy


@dataclass
class MessageJob:
    req: MessagesRequest
    chat: ChatJob
    capped: bool  # max_tokens was cut to the context left after the prompt

    def start(self, cache_ns: str = "") -> Generation:
        return self.chat.start(cache_ns)


async def prepare_message(req: MessagesRequest, cm: ChatModel, policy: ImagePolicy) -> MessageJob:
    chat = await prepare_chat_async(messages_to_chat(req), cm, policy)
    capped = chat.max_tokens < req.max_tokens
    chat.max_tokens = min(chat.max_tokens, req.max_tokens)
    chat.params.max_tokens = chat.max_tokens
    return MessageJob(req, chat, capped)


async def count_tokens(req: CountTokensRequest, cm: ChatModel, policy: ImagePolicy) -> int:
    return len((await prepare_chat_async(messages_to_chat(req), cm, policy)).prompt)


def _stop_reason(job: MessageJob, finish: str | None, stop: str | None) -> proto.StopReason:
    if finish == "tool_calls":
        return "tool_use"
    if finish == "length":
        return "model_context_window_exceeded" if job.capped else "max_tokens"
    return "stop_sequence" if stop is not None else "end_turn"


def _usage(chat_usage: dict) -> dict:
    cached = chat_usage["prompt_tokens_details"]["cached_tokens"]
    return {"input_tokens": chat_usage["prompt_tokens"] - cached,
            "output_tokens": chat_usage["completion_tokens"],
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def _tool_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _tool_input(arguments: str) -> dict:
    try:
        value = json.loads(arguments)
    except json.JSONDecodeError:  # cut short by max_tokens
        return {}
    return value if isinstance(value, dict) else {}


def _message(job: MessageJob, mid: str, content: list[dict], stop_reason: str | None,
             stop: str | None, usage: dict) -> dict:
    return {"id": mid, "type": "message", "role": "assistant", "model": job.chat.model.id,
            "content": content, "stop_reason": stop_reason, "stop_sequence": stop,
            "usage": usage}


def _new_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


async def message_response(job: MessageJob, gen: Generation) -> dict:
    chat = await chat_response(job.chat, gen)
    choice = chat["choices"][0]
    msg = choice["message"]
    content: list[dict] = [{"type": "text", "text": msg["content"]}] if msg["content"] else []
    for tc in msg.get("tool_calls") or []:
        fn = tc["function"]
        content.append({"type": "tool_use", "id": _tool_id(tc["id"]), "name": fn["name"],
                        "input": _tool_input(fn["arguments"])})
    stop = gen.stop_sequences.get(0)
    return _message(job, _new_id(), content, _stop_reason(job, choice["finish_reason"], stop),
                    stop, _usage(chat["usage"]))


def _event(data: dict) -> Event:
    return Event(data, event=data["type"])


class _Blocks:
    """Turns chat deltas into content block events: a text run is one block, each tool call one."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # type of the open block

    def _start(self, block: dict) -> Iterator[Event]:
        yield from self.close()
        self.index += 1
        self.open = block["type"]
        yield _event({"type": "content_block_start", "index": self.index, "content_block": block})

    def _delta(self, delta: dict) -> Event:
        return _event({"type": "content_block_delta", "index": self.index, "delta": delta})

    def text(self, text: str) -> Iterator[Event]:
        if self.open != "text":
            yield from self._start({"type": "text", "text": ""})
        yield self._delta({"type": "text_delta", "text": text})

    def tool(self, call: dict) -> Iterator[Event]:
        fn = call.get("function") or {}
        if "id" in call:
            yield from self._start({"type": "tool_use", "id": _tool_id(call["id"]),
                                    "name": fn.get("name", ""), "input": {}})
        if fn.get("arguments"):
            yield self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})

    def close(self) -> Iterator[Event]:
        if self.open is not None:
            self.open = None
            yield _event({"type": "content_block_stop", "index": self.index})


async def message_stream(job: MessageJob, gen: Generation) -> AsyncIterator[Event]:
    mid = _new_id()
    start_usage = {"input_tokens": len(job.chat.prompt), "output_tokens": 0,
                   "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
    yield _event({"type": "message_start",
                  "message": _message(job, mid, [], None, None, start_usage)})
    yield _event({"type": "ping"})
    blocks, finish, usage = _Blocks(), None, start_usage
    try:
        async for item in chat_stream(job.chat, gen):
            if item is DONE:
                break
            chunk = item.data  # type: ignore[union-attr]
            for choice in chunk["choices"]:
                delta = choice["delta"]
                if delta.get("content"):
                    for ev in blocks.text(delta["content"]):
                        yield ev
                for call in delta.get("tool_calls") or ():
                    for ev in blocks.tool(call):
                        yield ev
                finish = choice["finish_reason"] or finish
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
    except FerryError as e:
        yield _event(proto.error_body(e)[1])
        return
    for ev in blocks.close():
        yield ev
    stop = gen.stop_sequences.get(0)
    yield _event({"type": "message_delta",
                  "delta": {"stop_reason": _stop_reason(job, finish, stop), "stop_sequence": stop},
                  "usage": usage})
    yield _event({"type": "message_stop"})
