"""Conversation items of the Responses API: request input -> stored items -> chat messages.

The stored form is what ``GET /v1/responses/{id}/input_items`` lists (the spec's item
resources): every item has an ``id`` and ``status``; messages carry ``input_text``/``input_image``
parts (``output_text``/``refusal`` for the assistant); ``function_call`` and
``function_call_output`` keep the client's ``call_id``.

Invariants:
- `canonical` accepts the input shapes the spec allows (a string, easy messages with string
  content, typed items, ``item_reference`` to an earlier item of the conversation) and yields
  one stored form, so `chat_messages` has a single shape to translate.
- Consecutive ``function_call`` items (and an assistant message right before them) become one
  assistant chat message with ``tool_calls``, as chat clients send parallel calls.
"""

from __future__ import annotations

import uuid
from typing import Any

from ferry.errors import InvalidRequest, Unsupported
from ferry.protocol.responses import (
    FunctionCallItem,
    FunctionCallOutputItem,
    InputImage,
    InputText,
    ItemReference,
    MessageItem,
    OutputText,
    Refusal,
)


def _id(prefix: str, given: str | None) -> str:
    return given or f"{prefix}_{uuid.uuid4().hex}"


def _part(p: Any, assistant: bool, where: str) -> dict:
    if isinstance(p, InputImage):
        if assistant:
            raise InvalidRequest("an assistant message cannot hold an image", param=where)
        if p.image_url is None:
            if p.file_id is not None:
                raise Unsupported("file_id images need the Files API, which this server does "
                                  "not have: send image_url (a data: URI)", param=where)
            raise InvalidRequest("an input_image needs image_url", param=where)
        return {"type": "input_image", "image_url": p.image_url, "file_id": None,
                "detail": p.detail}
    if isinstance(p, Refusal):
        if assistant:
            return {"type": "refusal", "refusal": p.refusal}
        text = p.refusal
    else:
        text = p.text
    if assistant:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "input_text", "text": text}


def _message(m: MessageItem, where: str) -> dict:
    assistant = m.role == "assistant"
    parts = [_part(p, assistant, f"{where}.content.{j}") for j, p in enumerate(m.content)]
    return {"id": _id("msg", m.id), "type": "message", "role": m.role, "status": "completed",
            "content": parts}


def _output(o: FunctionCallOutputItem, where: str) -> str | list[dict]:
    if isinstance(o.output, str):
        return o.output
    out = []
    for j, p in enumerate(o.output):
        if not isinstance(p, (InputText, OutputText)):
            raise Unsupported("function_call_output holds text parts only here",
                              param=f"{where}.output.{j}")
        out.append({"type": "input_text", "text": p.text})
    return out


def canonical(given: Any, earlier: list[dict]) -> list[dict]:
    """The stored form of a request's ``input``; ``earlier``: items ``item_reference`` may name."""
    if given is None:
        return []
    known = {it["id"]: it for it in earlier}
    out: list[dict] = []
    for i, it in enumerate(given):
        where = f"input.{i}"
        if isinstance(it, MessageItem):
            out.append(_message(it, where))
        elif isinstance(it, FunctionCallItem):
            out.append({"id": _id("fc", it.id), "type": "function_call", "status": "completed",
                        "call_id": it.call_id, "name": it.name, "arguments": it.arguments})
        elif isinstance(it, FunctionCallOutputItem):
            out.append({"id": _id("fco", it.id), "type": "function_call_output",
                        "status": "completed", "call_id": it.call_id,
                        "output": _output(it, where)})
        elif isinstance(it, ItemReference):
            if it.id not in known:
                raise InvalidRequest(f"item_reference {it.id!r} names no item of this "
                                     "conversation", param=f"{where}.id")
            out.append(known[it.id])
        known[out[-1]["id"]] = out[-1]
    return out


def _chat_content(parts: list[dict]) -> str | list[dict]:
    if all(p["type"] != "input_image" for p in parts):
        return "".join(p.get("text") or p.get("refusal") or "" for p in parts)
    return [{"type": "image_url", "image_url": {"url": p["image_url"], "detail": p["detail"]}}
            if p["type"] == "input_image" else {"type": "text", "text": p.get("text", "")}
            for p in parts]


def chat_messages(conv: list[dict], instructions: str | None) -> list[dict]:
    """Chat ``messages`` for a conversation (``instructions`` first, as a system message)."""
    out: list[dict] = [{"role": "system", "content": instructions}] if instructions else []
    for it in conv:
        kind = it["type"]
        if kind == "message":
            out.append({"role": it["role"], "content": _chat_content(it["content"])})
        elif kind == "function_call":
            call = {"id": it["call_id"], "type": "function",
                    "function": {"name": it["name"], "arguments": it["arguments"]}}
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = it["output"]
            text = output if isinstance(output, str) else "".join(p["text"] for p in output)
            out.append({"role": "tool", "tool_call_id": it["call_id"], "content": text})
    return out
