"""Chat and text completions: request -> prompt tokens + sampling -> Generation -> OpenAI objects.

Streaming yields typed events (`ferry.sse.Event` / `DONE`); only the SSE encoder frames them.
Shapes follow the OpenAI spec: the first chat chunk carries ``role``, every chunk carries the same
``id``, ``usage`` is ``null`` on content chunks when ``stream_options.include_usage`` is set and a
final usage-only chunk with ``choices: []`` follows.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any

from ferry import __version__
from ferry.engine.chat_prompt import RenderedChat, render_chat
from ferry.engine.sequence import ImageSpan, SamplingParams, TokenLogprob
from ferry.errors import ContextTooLong, InvalidRequest
from ferry.protocol.openai import ChatCompletionRequest, CompletionRequest, SamplingRequest
from ferry.services.generation import Generation
from ferry.services.models import ChatModel
from ferry.sse import DONE, Event
from ferry.structured import tools
from ferry.structured.constraint import compile_json_schema, constraint_for_response_format
from ferry.vision.images import ImageInput, ImagePolicy, load_images

FINGERPRINT = f"fp_ferry_{__version__.replace('.', '')}"


def budget(prompt_len: int, max_tokens: int | None, n_ctx_seq: int) -> int:
    """Tokens this prompt may generate; 400 stating both numbers when it cannot fit."""
    if max_tokens is None:
        if prompt_len >= n_ctx_seq:
            raise ContextTooLong(f"This model's maximum context length is {n_ctx_seq} tokens, "
                                 f"but the prompt has {prompt_len} tokens.", param="messages")
        return n_ctx_seq - prompt_len
    if prompt_len + max_tokens > n_ctx_seq:
        raise ContextTooLong(f"This model's maximum context length is {n_ctx_seq} tokens. "
                             f"However, you requested {prompt_len + max_tokens} tokens "
                             f"({prompt_len} in the prompt, {max_tokens} for the completion).",
                             param="max_tokens")
    return max_tokens


def _chat_logprobs(lps: list[TokenLogprob] | None) -> dict | None:
    if lps is None:
        return None
    return {"content": [{"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes,
                         "top_logprobs": [{"token": t, "logprob": p, "bytes": b}
                                          for t, b, p in lp.top]} for lp in lps],
            "refusal": None}


@dataclass
class ChatJob:
    """A validated chat request ready to run. ``tools``: the answer is the tool-call JSON shape
    (ferry.structured.tools) and is returned as ``message.tool_calls``."""

    req: ChatCompletionRequest
    model: ChatModel
    prompt: list[int]
    params: SamplingParams
    max_tokens: int
    tools: bool = False
    images: tuple[ImageSpan, ...] = ()  # encoded images in `prompt` (placeholders there)

    def start(self, cache_ns: str = "") -> Generation:
        return Generation(self.model.engine, [self.prompt], self.params, self.req.n,
                          [self.max_tokens], self.images, cache_ns)


async def prepare_chat_async(req: ChatCompletionRequest, cm: ChatModel,
                             policy: ImagePolicy) -> ChatJob:
    """``prepare_chat``; a chat with images on a model with a projector has its images loaded
    here and is rendered, tokenised and encoded in the projector's worker thread."""
    if cm.projector is None or not any(m.has_image() for m in req.messages):
        return prepare_chat(req, cm)
    images = await load_images(req.messages, policy)
    return await cm.projector.prepare(prepare_chat, req, cm, images)


def prepare_chat(req: ChatCompletionRequest, cm: ChatModel,
                 images: list[ImageInput] | None = None) -> ChatJob:
    """Validate and render a chat: messages -> tool/format constraint -> prompt -> budget.
    ``images``: the chat's images in order (only with ``cm.projector``; call this off the event
    loop then: it encodes them)."""
    marker = cm.projector.marker if images is not None else ""
    messages = template_messages(req, cm.id, marker, images_allowed=images is not None)
    messages, constraint, use_tools = _structure(req, cm, messages)
    if use_tools and req.continue_final_message:
        raise InvalidRequest("a final assistant message to continue cannot be combined with "
                             "tools", param="messages")
    rendered = render_chat(cm.require_template(), cm.model, messages,
                           continue_final=req.continue_final_message)
    prompt, spans = _tokenize_chat(cm, rendered, images)
    mt = budget(len(prompt), req.token_limit, cm.engine.n_ctx_seq)
    params = req.to_sampling_params(cm.model.n_vocab)
    params.constraint = constraint
    return ChatJob(req, cm, prompt, params, mt, tools=use_tools and constraint is not None,
                   images=spans)


def template_messages(req: ChatCompletionRequest, model_id: str, marker: str, *,
                      images_allowed: bool) -> list[dict[str, Any]]:
    """The messages as the chat template reads them; each image part becomes ``marker``. Image
    parts without a projector and audio parts are a 400 naming the message."""
    messages = []
    for i, m in enumerate(req.messages):
        if m.has_image() and not images_allowed:
            raise InvalidRequest(f"model {model_id!r} cannot see images: it was not served with "
                                 "a multimodal projector (--mmproj)", param=f"messages.{i}.content")
        if m.has_audio():
            raise InvalidRequest(f"model {model_id!r} cannot hear audio input",
                                 param=f"messages.{i}.content")
        msg: dict[str, Any] = {"role": m.role, "content": m.text(marker)}
        if m.tool_calls:
            msg["tool_calls"] = [tc.model_dump() for tc in m.tool_calls]
        if m.tool_call_id:
            msg["tool_call_id"] = m.tool_call_id
        if m.name:
            msg["name"] = m.name
        messages.append(msg)
    return messages


def _structure(req: ChatCompletionRequest, cm: ChatModel, messages: list[dict[str, Any]]
               ) -> tuple[list[dict[str, Any]], Any, bool]:
    """Tools and ``response_format``: the messages with the tool prompt added, the token
    constraint (None = free text) and whether the answer is a tool call."""
    constraint = None
    use_tools = bool(req.tools) and req.tool_choice != "none"
    if req.tools is not None or req.tool_choice is not None:
        tools.validate_tools(req.tools, req.tool_choice, req.parallel_tool_calls)
    messages = tools.prepare_messages(messages, req.tools if use_tools else None,
                                      req.tool_choice, req.parallel_tool_calls)
    if use_tools:
        if req.response_format and req.response_format.get("type") != "text":
            raise InvalidRequest("response_format cannot be combined with tools",
                                 param="response_format")
        schema = tools.tool_output_schema(req.tools, req.tool_choice, req.parallel_tool_calls)
        if schema is not None:
            constraint = compile_json_schema(schema, cm.token_vocab, param="tools")
    elif req.response_format is not None:
        constraint = constraint_for_response_format(req.response_format, cm.token_vocab)
    return messages, constraint, use_tools


def _tokenize_chat(cm: ChatModel, rendered: RenderedChat, images: list[ImageInput] | None
                   ) -> tuple[list[int], tuple[ImageSpan, ...]]:
    """The rendered chat as prompt tokens; with images, also their encoded spans. Client text
    is plain text in both: only the template's markup becomes control tokens (chat_prompt)."""
    if images is None:
        return rendered.tokenize(cm.model), ()
    prompt, spans = cm.projector.tokenize(rendered.segments, images)
    _check_images(spans, images, cm.engine.cfg.n_batch)
    if spans and spans[-1].end >= len(prompt):  # the engine needs text after the last image
        raise InvalidRequest("the rendered prompt ends with an image", param="messages")
    return prompt, spans




def _check_images(spans: tuple[ImageSpan, ...], images: list[ImageInput], n_batch: int) -> None:
    """An image is decoded in one batch, so it may not have more tokens than a batch holds."""
    for span, im in zip(spans, images):  # one span per image (no tiling projectors here)
        if span.n_tokens > n_batch:
            raise InvalidRequest(f"the image takes {span.n_tokens} tokens, more than one batch "
                                 f"holds ({n_batch}, --batch-size)", param=im.param)


def _message(job: ChatJob, text: str, finish: str | None) -> tuple[dict, str | None]:
    """The assistant message (with tool_calls in tool mode) and the final finish_reason."""
    if not job.tools:
        return {"role": "assistant", "content": text, "refusal": None, "annotations": []}, finish
    content, calls = tools.parse_tool_output(text)
    msg: dict = {"role": "assistant", "content": content, "refusal": None, "annotations": []}
    if calls:
        msg["tool_calls"] = [c.to_dict() for c in calls]
        if finish == "stop":
            finish = "tool_calls"
    return msg, finish


async def chat_response(job: ChatJob, gen: Generation) -> dict:
    n = job.req.n
    texts: list[list[str]] = [[] for _ in range(n)]
    lps: list[list[TokenLogprob]] = [[] for _ in range(n)]
    finish: list[str | None] = [None] * n
    async for idx, out in gen.outputs():
        texts[idx].append(out.text)
        if out.logprobs:
            lps[idx].extend(out.logprobs)
        if out.finish_reason:
            finish[idx] = out.finish_reason
    choices = []
    for i in range(n):
        msg, reason = _message(job, "".join(texts[i]), finish[i])
        choices.append({"index": i, "message": msg,
                        "logprobs": _chat_logprobs(lps[i]) if job.req.logprobs else None,
                        "finish_reason": reason})
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
            "created": int(time.time()), "model": job.model.id,
            "system_fingerprint": FINGERPRINT, "choices": choices, "usage": gen.usage()}


def _chunker(req: SamplingRequest, model_id: str, prefix: str, obj: str) -> Callable[..., Event]:
    """Builds one stream's chunks: one id and ``created`` for all, ``usage`` only when asked."""
    cid, created = f"{prefix}-{uuid.uuid4().hex}", int(time.time())

    def chunk(choices: list[dict], usage: Any = None) -> Event:
        body = {"id": cid, "object": obj, "created": created, "model": model_id,
                "system_fingerprint": FINGERPRINT, "choices": choices}
        if req.include_usage:
            body["usage"] = usage
        return Event(body)

    return chunk


async def chat_stream(job: ChatJob, gen: Generation) -> AsyncGenerator[Event | object, None]:
    chunk = _chunker(job.req, job.model.id, "chatcmpl", "chat.completion.chunk")

    parsers = [tools.ToolStreamParser() if job.tools else None for _ in range(job.req.n)]
    for i in range(job.req.n):
        yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                      "logprobs": None, "finish_reason": None}])
    async for idx, out in gen.outputs():
        parser = parsers[idx]
        if parser is None:
            if out.text or out.logprobs:
                yield chunk([{"index": idx, "delta": {"content": out.text},
                              "logprobs": _chat_logprobs(out.logprobs), "finish_reason": None}])
        else:
            deltas = parser.feed(out.text) if out.text else []
            if out.finish_reason:
                deltas += parser.finish()
            for d in deltas:
                yield chunk([{"index": idx, "delta": d, "logprobs": None,
                              "finish_reason": None}])
        if out.finish_reason:
            reason = out.finish_reason
            if parser is not None and parser.calls and reason == "stop":
                reason = "tool_calls"
            yield chunk([{"index": idx, "delta": {}, "logprobs": None, "finish_reason": reason}])
    if job.req.include_usage:
        yield chunk([], gen.usage())
    yield DONE


# ---- text completions ------------------------------------------------------------------------
@dataclass
class CompletionJob:
    req: CompletionRequest
    model: ChatModel
    prompts: list[list[int]]
    texts: list[str]
    params: SamplingParams
    max_tokens: list[int]

    def start(self, cache_ns: str = "") -> Generation:
        return Generation(self.model.engine, self.prompts, self.params, self.req.n,
                          self.max_tokens, cache_ns=cache_ns)


def prepare_completion(req: CompletionRequest, cm: ChatModel) -> CompletionJob:
    p = req.prompt
    raw: list[str | list[int]]
    if isinstance(p, str):
        raw = [p]
    elif all(isinstance(x, int) for x in p):
        raw = [list(p)]  # type: ignore[arg-type]
    else:
        raw = list(p)  # type: ignore[arg-type]
    prompts, texts = [], []
    for i, r in enumerate(raw):
        if isinstance(r, str):
            toks = cm.model.tokenize(r, add_special=True, parse_special=True)
            texts.append(r)
        else:
            if not r:
                raise InvalidRequest(f"prompt {i} is empty", param="prompt")
            toks = list(r)
            texts.append(cm.model.detokenize(toks))
        if not toks:
            raise InvalidRequest(f"prompt {i} is empty", param="prompt")
        prompts.append(toks)
    mts = [budget(len(t), req.max_tokens if req.max_tokens is not None else 16,
                  cm.engine.n_ctx_seq) for t in prompts]
    params = req.to_sampling_params(cm.model.n_vocab)
    return CompletionJob(req, cm, prompts, texts, params, mts)


def _completion_logprobs(lps: list[TokenLogprob], offset: int) -> dict:
    offsets, pos = [], offset
    for lp in lps:
        offsets.append(pos)
        pos += len(lp.token)
    return {"tokens": [lp.token for lp in lps], "token_logprobs": [lp.logprob for lp in lps],
            "top_logprobs": [{t: p for t, _, p in lp.top} for lp in lps],
            "text_offset": offsets}


async def completion_response(job: CompletionJob, gen: Generation) -> dict:
    n_choices = len(job.prompts) * job.req.n
    texts: list[list[str]] = [[] for _ in range(n_choices)]
    lps: list[list[TokenLogprob]] = [[] for _ in range(n_choices)]
    finish: list[str | None] = [None] * n_choices
    async for idx, out in gen.outputs():
        texts[idx].append(out.text)
        lps[idx].extend(out.logprobs or [])
        if out.finish_reason:
            finish[idx] = out.finish_reason
    choices = []
    for i in range(n_choices):
        prefix = job.texts[i // job.req.n] if job.req.echo else ""
        choices.append({
            "index": i, "text": prefix + "".join(texts[i]),
            "logprobs": (_completion_logprobs(lps[i], len(prefix))
                         if job.req.logprobs is not None else None),
            "finish_reason": finish[i]})
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": job.model.id,
            "system_fingerprint": FINGERPRINT, "choices": choices, "usage": gen.usage()}


async def completion_stream(job: CompletionJob, gen: Generation
                            ) -> AsyncGenerator[Event | object, None]:
    chunk = _chunker(job.req, job.model.id, "cmpl", "text_completion")

    offsets = [0] * (len(job.prompts) * job.req.n)
    if job.req.echo:
        for i in range(len(offsets)):
            text = job.texts[i // job.req.n]
            offsets[i] = len(text)
            yield chunk([{"index": i, "text": text, "logprobs": None, "finish_reason": None}])
    async for idx, out in gen.outputs():
        if out.text or out.logprobs or out.finish_reason:
            lp = None
            if job.req.logprobs is not None:
                lp = _completion_logprobs(out.logprobs or [], offsets[idx])
            offsets[idx] += len(out.text)
            yield chunk([{"index": idx, "text": out.text, "logprobs": lp,
                          "finish_reason": out.finish_reason}])
    if job.req.include_usage:
        yield chunk([], gen.usage())
    yield DONE
