"""Streaming OpenAI-compatible requests, timed; and one concurrency level of them against one URL.

Invariants:
- Every request streams (``stream: true`` with ``stream_options.include_usage``) at temperature 0.
- A request counts as successful only if the server answered 200 with an event stream that ended
  with ``[DONE]`` and carried no error object; anything else becomes ``RequestResult.error`` and is
  never raised, so one bad request cannot end a run.
- A "content chunk" is a chunk whose first choice carries non-empty text (``delta.content`` for
  chat, ``text`` for completions); TTFT and inter-token gaps are measured on those only.
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

Endpoint = Literal["chat", "completions"]
PATHS: dict[str, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


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
    distinct: bool = False  # request i's prompt starts with its own words (no shared prefix)

    def payload(self, index: int = 0, messages: list[dict[str, str]] | None = None
                ) -> dict[str, Any]:
        """Request ``index``'s body; ``messages`` (chat) replace the single-prompt message."""
        prompt = f"Request {index} of this run. {self.prompt}" if self.distinct else self.prompt
        body: dict[str, Any] = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.endpoint == "chat":
            body["messages"] = messages or [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if self.ignore_eos:
            body["ignore_eos"] = True  # llama-server / Ferry extension: always emit max_tokens
        body.update(self.extra_body or {})
        return body

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def api_root(base_url: str) -> str:
    """``http://h:p``, ``http://h:p/`` and ``http://h:p/v1`` all name the same server."""
    root = base_url.rstrip("/")
    return root.removesuffix("/v1")


def _chunk_text(chunk: dict[str, Any], endpoint: Endpoint) -> tuple[str, str | None]:
    choices = chunk.get("choices") or []
    if not choices:
        return "", None
    choice = choices[0]
    if endpoint == "chat":
        text = (choice.get("delta") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
    return text, choice.get("finish_reason")


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
            if event.data == "[DONE]":
                result.e2e_s = time.perf_counter() - start
                result.output_tokens = usage_tokens if usage_tokens is not None else chunks
                return
            chunk = json.loads(event.data)
            if "error" in chunk:
                result.error = f"stream error: {json.dumps(chunk['error'])[:200]}"
                return
            if chunk.get("usage"):
                usage_tokens = chunk["usage"].get("completion_tokens")
            text, finish = _chunk_text(chunk, spec.endpoint)
            result.finish_reason = finish or result.finish_reason
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
    result.error = "stream ended without [DONE]"


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
    on_done: Callable[[int], None] | None = None,
) -> tuple[list[RequestResult], float]:
    """Send ``n_requests`` with ``concurrency`` in flight; return the results and the wall time."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    timeout = httpx.Timeout(spec.timeout_s, connect=10)
    results: list[RequestResult] = []
    pending = iter(range(n_requests))

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
