"""Backpressure: --parallel 2 --max-queue 4 under 4x the admitted load. The overload paths fire
(429 with Retry-After when the queue is full, 503 queue_timeout when a queued request waits too
long) and every admitted request that was not timed out completes fully."""

from __future__ import annotations

import asyncio
import collections
import json

import httpx
import pytest
from conftest import FerryServer

from .common import SCALES, sizes, summary, wait_idle

PARALLEL, QUEUE = 2, 4
MAX_TOKENS = 48


async def one(c: httpx.AsyncClient, i: int) -> str:
    """One request; returns its outcome: ok, 429, 503:queue_timeout (or an unexpected label)."""
    stream = i % 2 == 1
    body = {"prompt": f"Item {i}:", "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": stream}
    if stream:
        body["stream_options"] = {"include_usage": True}
    if not stream:
        r = await c.post("/v1/completions", json=body)
        if r.status_code == 200:
            return "ok" if r.json()["usage"]["completion_tokens"] == MAX_TOKENS else "short"
        return outcome_of_error(r.status_code, r.headers, r.json())
    async with c.stream("POST", "/v1/completions", json=body) as r:
        raw = await r.aread()
    if r.status_code != 200:
        return outcome_of_error(r.status_code, r.headers, json.loads(raw))
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    if events and events[-1] == "[DONE]":
        usage = json.loads(events[-2])["usage"]
        return "ok" if usage["completion_tokens"] == MAX_TOKENS else "short"
    last = json.loads(events[-1]) if events else {}
    return f"stream-error:{last.get('error', {}).get('code')}"


def outcome_of_error(status: int, headers, body: dict) -> str:
    code = body["error"]["code"]
    if status == 429:
        assert headers.get("retry-after"), "429 carries Retry-After"
    return f"{status}:{code}"


async def waves(url: str, n_waves: int) -> collections.Counter:
    load = 4 * (PARALLEL + QUEUE)
    out: collections.Counter = collections.Counter()
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=load)) as c:
        for w in range(n_waves):
            out.update(await asyncio.gather(*(one(c, w * load + i) for i in range(load))))
    return out


@pytest.mark.parametrize("scale", SCALES)
def test_overload_gets_429_or_queue_timeout_and_admitted_requests_complete(scale):
    n_waves = sizes(scale)["overload_waves"]
    srv = FerryServer("--parallel", str(PARALLEL), "--max-queue", str(QUEUE),
                      "--queue-timeout", "1.5")
    try:
        got = asyncio.run(waves(srv.url, n_waves))
        wait_idle(srv.url, 30)
        summary("backpressure", scale=scale, waves=n_waves, sent=sum(got.values()),
                **{k.replace(":", "_"): v for k, v in sorted(got.items())})
        expected = {"ok", "429:overloaded", "503:queue_timeout", "stream-error:queue_timeout"}
        assert set(got) <= expected, got
        assert got["ok"] >= n_waves * PARALLEL, "every admitted, untimed-out request completed"
        assert got["429:overloaded"] >= n_waves * 2 * (PARALLEL + QUEUE)
        assert got["503:queue_timeout"] + got["stream-error:queue_timeout"] >= 1
        assert srv.proc.poll() is None
    finally:
        srv.stop()
