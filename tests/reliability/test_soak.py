"""Soak: mixed traffic (chat, completions, embeddings, resumable streams, structured outputs)
at a concurrency the box sustains. After a warm-up, RSS grows less than 5%, no request fails
except the deliberate ones, and resumed streams are byte-identical; p99 TTFT is printed."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter

import httpx
import pytest
from conftest import FerryServer

from .common import SCALES, settle_rss, sizes, summary, wait_idle

CONCURRENCY = 4
FIRST_TOKEN = re.compile(rb'"(content|text)":"[^"]')  # a delta carrying text, not the role
SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "population"],
          "properties": {"city": {"type": "string", "maxLength": 24},
                         "population": {"type": "integer"}}}


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def stream_ttft(c: httpx.AsyncClient, path: str, body: dict,
                      headers: dict | None = None) -> tuple[float, bytes]:
    """Seconds to the first generated text, and the whole body (which must end with [DONE])."""
    t0 = time.monotonic()
    ttft = None
    parts = []
    async with c.stream("POST", path, json=body, headers=headers or {}) as r:
        if r.status_code != 200:
            raise AssertionError(f"{path} {r.status_code} {(await r.aread())[:200]!r}")
        async for chunk in r.aiter_bytes():
            parts.append(chunk)
            if ttft is None and FIRST_TOKEN.search(b"".join(parts[-2:])):
                ttft = time.monotonic() - t0
    data = b"".join(parts)
    if not data.rstrip().endswith(b"data: [DONE]"):
        raise AssertionError(f"{path} stream did not end with [DONE]: {data[-200:]!r}")
    return ttft if ttft is not None else time.monotonic() - t0, data


async def one(c: httpx.AsyncClient, kind: str, w: int, i: int, ttfts: list[float]) -> None:
    if kind == "chat":
        r = await c.post("/v1/chat/completions", json={"messages": msgs(f"Fact {i}?"),
                                                       "max_tokens": 16})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"], r.text
    elif kind == "chat_stream":
        ttfts.append((await stream_ttft(c, "/v1/chat/completions", {
            "messages": msgs(f"Tell me about {i}."), "max_tokens": 24, "stream": True}))[0])
    elif kind == "completion":
        ttft, _ = await stream_ttft(c, "/v1/completions", {"prompt": f"Once upon a time {i}",
                                                           "max_tokens": 16, "stream": True})
        ttfts.append(ttft)
    elif kind == "embeddings":
        r = await c.post("/v1/embeddings", json={"model": "all-minilm-l6-v2",
                                                 "input": [f"text {i}", "another", "third"]})
        assert r.status_code == 200 and len(r.json()["data"]) == 3, r.text
    elif kind == "resumable":
        conv = f"soak-{w}-{i % 3}"  # a few ids per worker: sessions are replaced, not piled up
        ttft, data = await stream_ttft(c, "/v1/chat/completions", {
            "messages": msgs(f"Story {i}"), "max_tokens": 24, "stream": True},
            headers={"X-Conversation-Id": conv})
        ttfts.append(ttft)
        cut = len(data) // 2
        r = await c.get(f"/v1/stream/{conv}", params={"from": cut})
        assert r.status_code == 200 and data[:cut] + r.content == data, "resumed bytes differ"
    elif kind == "structured":
        r = await c.post("/v1/chat/completions", json={
            "messages": msgs("A city and its population, as JSON."), "max_tokens": 48,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}}})
        assert r.status_code == 200, r.text
        ch = r.json()["choices"][0]
        if ch["finish_reason"] == "stop":
            assert set(json.loads(ch["message"]["content"])) == {"city", "population"}
    elif kind == "deliberate_404":
        r = await c.post("/v1/chat/completions", json={"model": "no-such-model",
                                                       "messages": msgs("x"), "max_tokens": 2})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


KINDS = ["chat", "chat_stream", "completion", "embeddings", "resumable", "structured",
         "chat", "chat_stream", "completion", "resumable", "structured", "deliberate_404"]


async def traffic(url: str, seconds: float) -> tuple[Counter, Counter, list[float]]:
    done: Counter = Counter()
    errors: Counter = Counter()
    ttfts: list[float] = []
    deadline = time.monotonic() + seconds

    async def worker(w: int) -> None:
        async with httpx.AsyncClient(base_url=url, timeout=120) as c:
            i = 0
            while time.monotonic() < deadline:
                kind = KINDS[(i + 3 * w) % len(KINDS)]
                try:
                    await one(c, kind, w, i, ttfts)
                    done[kind] += 1
                except (AssertionError, httpx.HTTPError, ValueError) as e:
                    errors[f"{kind}: {str(e)[:160]}"] += 1
                i += 1

    await asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
    return done, errors, ttfts


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(0.99 * len(xs)))] if xs else float("nan")


@pytest.mark.timeout(1200)  # the long variant soaks for 10 minutes
@pytest.mark.parametrize("scale", SCALES)
def test_soak_mixed_traffic_holds_memory_and_serves_every_request(scale):
    total = sizes(scale)["soak_seconds"]
    warm = max(10.0, 0.15 * total)
    # --cache-ram 0: the prompt cache's RAM tier grows by design up to its budget (its bound is
    # tested in test_prompt_cache_api); this test looks for leaks everywhere else
    srv = FerryServer("--parallel", "4", "--stream-store", "memory", "--stream-ttl", "5",
                      "--cache-ram", "0")
    try:
        pid = srv.proc.pid
        _, warm_errors, _ = asyncio.run(traffic(srv.url, warm))
        wait_idle(srv.url, 30)
        base = settle_rss(pid)
        done, errors, ttfts = asyncio.run(traffic(srv.url, total - warm))
        wait_idle(srv.url, 30)
        time.sleep(5)  # finished resumable sessions reach their ttl
        after = settle_rss(pid)
        growth = (after - base) / base
        n = sum(done.values())
        summary("soak", scale=scale, seconds=total, concurrency=CONCURRENCY, requests=n,
                rps=n / (total - warm), errors=sum(errors.values()),
                deliberate=done["deliberate_404"], p50_ttft_s=sorted(ttfts)[len(ttfts) // 2],
                p99_ttft_s=p99(ttfts), rss_base_mib=base / 1024, rss_after_mib=after / 1024,
                rss_growth_pct=100 * growth,
                mix=",".join(f"{k}:{v}" for k, v in sorted(done.items())))
        assert not warm_errors and not errors, {**warm_errors, **errors}
        assert set(done) == set(KINDS)
        assert growth < 0.05
        assert srv.proc.poll() is None
    finally:
        srv.stop()
