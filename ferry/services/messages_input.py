"""Anthropic request → chat request: the conversation rules Anthropic enforces, then the same
conversation in chat-completions form.

Rules (each a 400 naming the message, worded as Anthropic words them):
- ``tool_use`` blocks only in assistant messages, ``tool_result`` and ``image`` blocks only in
  user messages; a request with either tool block must define ``tools``.
- Every ``tool_use`` is answered by a ``tool_result`` in the next message, and every
  ``tool_result`` answers a ``tool_use`` of the previous message; tool results come first.
- Messages and text blocks are non-empty, except the final assistant message (a prefill), which
  must not end with whitespace.
Accepted as Anthropic accepts them: a first message from the assistant, and consecutive messages
of one role (joined into one turn). A final assistant message is a prefill: the answer continues it.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from ferry.errors import InvalidRequest
from ferry.protocol.anthropic import (
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from ferry.protocol.openai import ChatCompletionRequest

_ONLY_IN = {"tool_use": "assistant", "tool_result": "user", "image": "user",
            "thinking": "assistant", "redacted_thinking": "assistant"}


def _check_blocks(i: int, m: MessageParam, last: bool) -> None:
    blocks = m.blocks()
    empty = not blocks or (isinstance(m.content, str) and not m.content)
    if empty and not (last and m.role == "assistant"):
        raise InvalidRequest(f"messages.{i}: all messages must have non-empty content except "
                             "for the optional final assistant message")
    seen_other = False
    for j, b in enumerate(blocks):
        role = _ONLY_IN.get(b.type)
        if role is not None and role != m.role:
            raise InvalidRequest(f"messages.{i}.content.{j}: `{b.type}` blocks are only allowed "
                                 f"in {role} messages")
        if isinstance(b, TextBlock) and not b.text and not (last and m.role == "assistant"):
            raise InvalidRequest(f"messages.{i}.content.{j}.text: text content blocks must be "
                                 "non-empty")
        if isinstance(b, ToolResultBlock) and seen_other:
            raise InvalidRequest(f"messages.{i}.content.{j}: `tool_result` blocks must come "
                                 "first in the content, before any other block")
        seen_other |= not isinstance(b, ToolResultBlock)


def _check_tool_pairs(msgs: list[MessageParam], has_tools: bool) -> None:
    asked: list[str] = []  # tool_use ids of the previous message, still unanswered
    for i, m in enumerate(msgs):
        blocks = m.blocks()
        if not has_tools and any(isinstance(b, ToolUseBlock | ToolResultBlock) for b in blocks):
            raise InvalidRequest("Requests which include `tool_use` or `tool_result` blocks must "
                                 "define tools.")
        answered = set()
        for j, b in enumerate(blocks):
            if isinstance(b, ToolResultBlock):
                if b.tool_use_id not in asked:
                    raise InvalidRequest(
                        f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                        f"`tool_result` blocks: {b.tool_use_id}. Each `tool_result` block must "
                        "have a corresponding `tool_use` block in the previous message.")
                answered.add(b.tool_use_id)
        if missing := [t for t in asked if t not in answered]:
            raise InvalidRequest(
                f"messages.{i - 1}: `tool_use` ids were found without `tool_result` blocks "
                f"immediately after: {', '.join(missing)}. Each `tool_use` block must have a "
                "corresponding `tool_result` block in the next message.")
        asked = [b.id for b in blocks if isinstance(b, ToolUseBlock)]
    if asked:
        raise InvalidRequest(
            f"messages.{len(msgs) - 1}: `tool_use` ids were found without `tool_result` blocks "
            f"immediately after: {', '.join(asked)}. Each `tool_use` block must have a "
            "corresponding `tool_result` block in the next message.")


def _parts(blocks: list[Any]) -> list[dict]:
    parts: list[dict] = []
    for b in blocks:
        if isinstance(b, TextBlock):
            parts.append({"type": "text", "text": b.text})
        elif isinstance(b, ImageBlock):
            parts.append({"type": "image_url", "image_url": {"url": b.url()}})
    return parts


def _tool_result(b: ToolResultBlock) -> dict:
    parts = [{"type": "text", "text": b.content}] if isinstance(b.content, str) \
        else _parts(list(b.content))
    if b.is_error:
        parts.insert(0, {"type": "text", "text": "Error: "})
    return {"role": "tool", "tool_call_id": b.tool_use_id, "content": parts or ""}


def _turn(role: str, blocks: list[Any]) -> list[dict]:
    """One Anthropic turn as chat messages (tool results first, as their own messages)."""
    out = [_tool_result(b) for b in blocks if isinstance(b, ToolResultBlock)]
    parts = _parts(blocks)
    calls = [{"id": b.id, "type": "function",
              "function": {"name": b.name, "arguments": json.dumps(b.input, ensure_ascii=False)}}
             for b in blocks if isinstance(b, ToolUseBlock)]
    if calls:
        out.append({"role": role, "content": parts or None, "tool_calls": calls})
    elif parts or role == "assistant":
        out.append({"role": role, "content": parts})
    return out


def _turns(msgs: list[MessageParam]) -> list[tuple[str, list[Any]]]:
    """Consecutive messages of one role joined into one turn (a blank line between them)."""
    turns: list[tuple[str, list[Any]]] = []
    for m in msgs:
        if turns and turns[-1][0] == m.role:
            turns[-1][1].append(TextBlock(type="text", text="\n\n"))
            turns[-1][1].extend(m.blocks())
        else:
            turns.append((m.role, m.blocks()))
    return turns


def _sampling(req: MessagesRequest) -> dict:
    fmt = req.output_config.format if req.output_config else None
    response_format = {"type": "json_schema", "json_schema": {
        "name": "output", "schema": fmt.json_schema, "strict": True}} if fmt else None
    return {"response_format": response_format, "max_tokens": None, "stop": req.stop_sequences,
            "temperature": req.temperature,
            "top_p": req.top_p, "top_k": req.top_k or 0, "stream": req.stream,
            "stream_options": {"include_usage": True}, "ignore_eos": req.ignore_eos,
            "user": req.metadata.user_id if req.metadata else None}


def _tools(req: CountTokensRequest) -> dict:
    out: dict[str, Any] = {}
    if req.tools:
        out["tools"] = [{"type": "function", "function": {
            "name": t.name, "description": t.description, "parameters": t.input_schema}}
            for t in req.tools]
    c = req.tool_choice
    if c is not None and c.type in ("any", "tool") and not req.tools:
        raise InvalidRequest(f"tool_choice: type '{c.type}' requires tools")
    if c is not None:
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(c.type) or \
            {"type": "function", "function": {"name": getattr(c, "name", "")}}
        if getattr(c, "disable_parallel_tool_use", None):
            out["parallel_tool_calls"] = False
    return out


def messages_to_chat(req: CountTokensRequest) -> ChatCompletionRequest:
    """The chat request with the same prompt and sampling (prefill: ``continue_final_message``)."""
    msgs = req.messages
    for i, m in enumerate(msgs):
        _check_blocks(i, m, last=i == len(msgs) - 1)
    _check_tool_pairs(msgs, bool(req.tools))
    chat: list[dict] = [{"role": "system", "content": s}] if (s := req.system_text()) else []
    for role, blocks in _turns(msgs):
        chat.extend(_turn(role, blocks))
    prefill = msgs[-1].role == "assistant"
    if prefill and isinstance(chat[-1]["content"], list):
        text = "".join(p["text"] for p in chat[-1]["content"])
        if text != text.rstrip():
            raise InvalidRequest("final assistant content cannot end with trailing whitespace")
        chat[-1]["content"] = text
    body: dict[str, Any] = {"model": req.model, "messages": chat, "continue_final_message": prefill,
                            **_tools(req)}
    if isinstance(req, MessagesRequest):
        body.update(_sampling(req))
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:  # a translation the chat request refuses: still the client's
        raise InvalidRequest(f"invalid request: {e.errors()[0].get('msg', e)}") from None
