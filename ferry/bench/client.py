"""Streaming OpenAI-compatible requests, timed; and one concurrency level of them against one URL.

Invariants:
- Every request streams (``stream: true`` with ``stream_options.include_usage``) at temperature 0.
- A request counts as successful only if the server answered 200 with an event stream that ended
  with ``[DONE]`` and carried no error object; anything else becomes ``RequestResult.error`` and is
  never raised, so one bad request cannot end a run.
- A "content chunk" is an event carrying non-empty text: the first choice's ``delta.content``
  (chat) or ``text`` (completions), a ``response.output_text.delta`` (Responses API), a
  ``content_block_delta`` with a ``text_delta`` (Anthropic Messages); TTFT and inter-token gaps
  are measured on those only. A stream ends with ``[DONE]`` (chat, completions),
  ``response.completed``/``response.incomplete`` (Responses) or ``message_stop`` (Messages).
- Exactly ``n_requests`` requests are sent per level with at most ``concurrency`` in flight; a new
  one starts as soon as one finishes (closed loop), so the server sees a steady ``concurrency``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from httpx_sse import SSEError, aconnect_sse

from ferry.bench.stats import RequestResult
from ferry.bench.words import lead_words

Endpoint = Literal["chat", "completions", "responses", "messages"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions",
                         "responses": "/v1/responses", "messages": "/v1/messages"}
ENDPOINTS: tuple[str, ...] = tuple(PATHS)
STOP_REASONS = {"max_tokens": "length", "end_turn": "stop"}  # Anthropic's -> OpenAI's finish


@dataclass(frozen=True)
class RequestSpec:
    """What every request of a run asks for."""

    endpoint: Endpoint
    model: str
    prompt: str
    max_tokens: int
    ignore_eos: bool
    api_key: str | None
    timeout_s: float
    extra_body: dict[str, Any] | None = None  # merged into every request (e.g. response_format)
    distinct: bool = False  # request i's prompt starts with lead_words(i) (no shared prefix)

    def payload(self, index: int = 0, messages: list[dict[str, str]] | None = None
                ) -> dict[str, Any]:
        """Request ``index``'s body; ``messages`` (a conversation's history) replace the single
        prompt on the chat-style APIs (chat, responses, messages)."""
        prompt = f"{lead_words(index)}. {self.prompt}" if self.distinct else self.prompt
        body: dict[str, Any] = {"model": self.model, "temperature": 0, "stream": True}
        if self.endpoint == "responses":
            body |= {"input": messages or prompt, "max_output_tokens": self.max_tokens}
        elif self.endpoint == "messages":
            body |= {"messages": messages or [{"role": "user", "content": prompt}],
                     "max_tokens": self.max_tokens}
        else:
            body |= {"max_tokens": self.max_tokens, "stream_options": {"include_usage": True}}
            if self.endpoint == "chat":
                body["messages"] = messages or [{"role": "user", "content": prompt}]
            else:
                body["prompt"] = prompt
        if self.ignore_eos:
            body["ignore_eos"] = True  # llama-server / Ferry extension: always emit max_tokens
        body.update(self.extra_body or {})
        return body

    def headers(self) -> dict[str, str]:
        if self.endpoint == "messages":
            return {"anthropic-version": "2023-06-01",
                    **({"x-api-key": self.api_key} if self.api_key else {})}
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def api_root(base_url: str) -> str:
    """``http://h:p``, ``http://h:p/`` and ``http://h:p/v1`` all name the same server."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


@dataclass
class Step:
    """What one server-sent event means to the timer."""

    text: str = ""
    finish: str | None = None
    usage_tokens: int | None = None  # output tokens, when the event reports usage
    done: bool = False  # the stream's proper end
    error: str | None = None


def _openai_step(data: str, endpoint: Endpoint) -> Step:
    if data == "[DONE]":
        return Step(done=True)
    chunk = json.loads(data)
    if "error" in chunk:
        return Step(error=f"stream error: {json.dumps(chunk['error'])[:200]}")
    usage = (chunk.get("usage") or {}).get("completion_tokens")
    choices = chunk.get("choices") or []
    if not choices:
        return Step(usage_tokens=usage)
    choice = choices[0]
    if endpoint == "chat":
        text = (choice.get("delta") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    return Step(text, choice.get("finish_reason"), usage)


def _responses_step(data: str) -> Step:
    ev = json.loads(data)
    kind = ev.get("type")
    if kind == "response.output_text.delta":
        return Step(text=ev.get("delta") or "")
    if kind in ("response.completed", "response.incomplete"):
        usage = (ev["response"].get("usage") or {}).get("output_tokens")
        finish = "stop" if kind == "response.completed" else "length"
        return Step(finish=finish, usage_tokens=usage, done=True)
    if kind in ("error", "response.failed"):
        return Step(error=f"stream error: {data[:200]}")
    return Step()


def _messages_step(data: str) -> Step:
    ev = json.loads(data)
    kind = ev.get("type")
    if kind == "content_block_delta":
        delta = ev.get("delta") or {}
        return Step(text=delta.get("text") or "" if delta.get("type") == "text_delta" else "")
    if kind == "message_delta":
        stop = (ev.get("delta") or {}).get("stop_reason")
        finish = None if stop is None else STOP_REASONS.get(stop, stop)
        return Step(finish=finish, usage_tokens=(ev.get("usage") or {}).get("output_tokens"))
    if kind == "message_stop":
        return Step(done=True)
    if kind == "error":
        return Step(error=f"stream error: {data[:200]}")
    return Step()


def parse_event(data: str, endpoint: Endpoint) -> Step:
    if endpoint == "responses":
        return _responses_step(data)
    if endpoint == "messages":
        return _messages_step(data)
    return _openai_step(data, endpoint)


async def _consume_stream(
    client: httpx.AsyncClient, url: str, payload: dict[str, Any], spec: RequestSpec,
    result: RequestResult,
) -> None:
    start = time.perf_counter()
    last: float | None = None
    chunks = 0
    usage_tokens: int | None = None
    async with aconnect_sse(
        client, "POST", url, json=payload, headers=spec.headers()
    ) as source:
        if source.response.status_code != 200:
            body = (await source.response.aread()).decode(errors="replace")
            result.error = f"HTTP {source.response.status_code}: {body[:200]}"
            return
        async for event in source.aiter_sse():
            step = parse_event(event.data, spec.endpoint)
            if step.error is not None:
                result.error = step.error
                return
            if step.usage_tokens is not None:
                usage_tokens = step.usage_tokens
            result.finish_reason = step.finish or result.finish_reason
            if step.done:
                result.e2e_s = time.perf_counter() - start
                result.output_tokens = usage_tokens if usage_tokens is not None else chunks
                return
            text = step.text
            if not text:
                continue
            result.text += text
            now = time.perf_counter()
            if last is None:
                result.ttft_s = now - start
            else:
                result.gaps_s.append(now - last)
            last = now
            chunks += 1
    final = {"responses": "response.completed", "messages": "message_stop"}.get(spec.endpoint)
    result.error = f"stream ended without {final or '[DONE]'}"


async def stream_request(
    client: httpx.AsyncClient, base_url: str, spec: RequestSpec, index: int = 0,
    messages: list[dict[str, str]] | None = None,
) -> RequestResult:
    """Send one streaming request and time it; failures come back in ``.error``."""
    result = RequestResult()
    url = api_root(base_url) + PATHS[spec.endpoint]
    try:
        async with asyncio.timeout(spec.timeout_s):  # whole request, not per read
            await _consume_stream(client, url, spec.payload(index, messages), spec, result)
    except TimeoutError:
        result.error = f"timed out after {spec.timeout_s:g} s"
    except (httpx.HTTPError, SSEError, ValueError, AttributeError, KeyError, TypeError) as exc:
        # transport failures and malformed chunks alike are this request's error, not the run's
        result.error = f"{type(exc).__name__}: {exc}"[:300]
    if result.error is not None:  # a failed request contributes nothing but its error
        return RequestResult(error=result.error)
    return result


async def discover_model(base_url: str, api_key: str | None = None) -> str:
    """First id from ``GET /v1/models``; ``"default"`` if the server does not list any."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(api_root(base_url) + "/v1/models", headers=headers)
            data = response.json().get("data") or []
            return str(data[0]["id"]) if data else "default"
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return "default"


async def run_level(
    base_url: str,
    spec: RequestSpec,
    *,
    concurrency: int,
    n_requests: int,
    first_index: int = 0,
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Send requests ``first_index`` .. ``first_index + n_requests - 1`` with ``concurrency`` in
    flight; return the results and the wall time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(spec.timeout_s, connect=10)
    results: list[RequestResult] = []
    pending = iter(range(first_index, first_index + n_requests))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in pending:  # shared iterator: each index is taken by exactly one worker
            results.append(await stream_request(client, base_url, spec, i))
            if on_done is not None:
                on_done(len(results))

    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(min(concurrency, n_requests))))
        wall_s = time.perf_counter() - start
    return results, wall_s
