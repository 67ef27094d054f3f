"""Cost of resumable streams: output tokens/s at concurrency 8, plain vs resumable (memory and
Redis stores), and the time from a reconnect to the first replayed byte.

    python benchmarks/resumable.py [--concurrency 8] [--max-tokens 128] [--rounds 2]

Starts its own redis-server and Ferry processes on loopback; runs are interleaved per round so
the ratios come from the same machine state.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FerryServer, free_port, start_redis, stop_redis


async def one(c: httpx.AsyncClient, max_tokens: int, conv: str | None) -> int:
    body = {"messages": [{"role": "user", "content": "Write about the sea."}], "stream": True,
            "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    headers = {"X-Conversation-Id": conv} if conv else {}
    n = 0
    async with c.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"role"' not in line:
                n += 1
    return n


async def level(url: str, conc: int, max_tokens: int, resumable: bool) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        t0 = time.perf_counter()
        counts = await asyncio.gather(*(one(c, max_tokens, uuid.uuid4().hex if resumable else None)
                                        for _ in range(conc)))
        return sum(counts) / (time.perf_counter() - t0)


async def reconnect_ttfb(url: str, samples: int = 20) -> float:
    """Median ms from sending GET /v1/stream/{id}?from=N to holding the first byte."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        conv = uuid.uuid4().hex
        await one(c, 64, conv)
        out = []
        for i in range(samples):
            t0 = time.perf_counter()
            async with c.stream("GET", f"/v1/stream/{conv}", params={"from": 100 * i}) as r:
                async for _ in r.aiter_raw():
                    out.append((time.perf_counter() - t0) * 1000)
                    break
        return statistics.median(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    tmp = tempfile.mkdtemp()
    redis_proc = start_redis(port := free_port(), tmp)
    servers = {"memory": FerryServer("--parallel", str(args.concurrency), passive_wait=False),
               "redis": FerryServer("--parallel", str(args.concurrency), "--stream-store",
                                    f"redis://127.0.0.1:{port}/0", passive_wait=False)}
    try:
        res: dict[str, list[float]] = {}
        for _ in range(args.rounds):
            for store, srv in servers.items():
                for resumable in (False, True):
                    key = f"{store}/{'resumable' if resumable else 'plain'}"
                    tps = asyncio.run(level(srv.url, args.concurrency, args.max_tokens,
                                            resumable))
                    res.setdefault(key, []).append(tps)
        print("| store | plain tok/s | resumable tok/s | ratio | reconnect → first byte (ms) |")
        print("|---|---|---|---|---|")
        for store, srv in servers.items():
            plain = statistics.median(res[f"{store}/plain"])
            resum = statistics.median(res[f"{store}/resumable"])
            ttfb = asyncio.run(reconnect_ttfb(srv.url))
            print(f"| {store} | {plain:.1f} | {resum:.1f} | {resum / plain:.2f} | {ttfb:.2f} |")
    finally:
        for s in servers.values():
            s.stop()
        stop_redis(redis_proc)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
