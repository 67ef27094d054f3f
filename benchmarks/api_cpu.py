"""Server CPU per streamed token through chat completions and Anthropic Messages.

On a shared machine the wall-clock tok/s of two runs differs by +-30% from one minute to the
next; the CPU seconds the server process itself spends for the same tokens do not (+-3%), so
they compare the cost of the two API layers over the one chat path.

    python -m ferry serve --port 8000 --parallel 8 &
    python benchmarks/api_cpu.py --url http://127.0.0.1:8000 --pid $(pgrep -f 'ferry serve') \
        --rounds 6

Each round runs ``--requests`` streamed requests (``ignore_eos``, ``--max-tokens``) at
concurrency ``--concurrency`` through each API, in alternating order, reading every byte.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx

PROMPT = [{"role": "user", "content": "Tell me about rivers."}]


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def request(api: str, max_tokens: int) -> tuple[str, dict]:
    body = {"model": "default", "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "ignore_eos": True, "messages": PROMPT}
    if api == "chat":
        return "/v1/chat/completions", {**body, "stream_options": {"include_usage": True}}
    return "/v1/messages", body


async def run(url: str, api: str, args: argparse.Namespace) -> tuple[float, float]:
    path, body = request(api, args.max_tokens)
    sem = asyncio.Semaphore(args.concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        async def one() -> None:
            async with sem, client.stream("POST", path, json=body) as r:
                async for _ in r.aiter_bytes():
                    pass

        c0, t0 = cpu_seconds(args.pid), time.perf_counter()
        await asyncio.gather(*(one() for _ in range(args.requests)))
        return cpu_seconds(args.pid) - c0, time.perf_counter() - t0


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--pid", type=int, required=True, help="the server's process id")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    tokens = args.requests * args.max_tokens
    cpu: dict[str, list[float]] = {"chat": [], "messages": []}
    wall: dict[str, list[float]] = {"chat": [], "messages": []}
    for r in range(args.rounds):
        for api in (["chat", "messages"] if r % 2 == 0 else ["messages", "chat"]):
            c, w = await run(args.url, api, args)
            cpu[api].append(c)
            wall[api].append(w)
            print(f"round {r} {api:9s} server cpu {c:6.2f} s  wall {w:6.1f} s  "
                  f"{tokens / c:6.1f} tok per cpu-s  {tokens / w:6.1f} tok/s", flush=True)
    for api, seconds in cpu.items():
        print(f"{api:9s} median: {tokens / statistics.median(seconds):6.1f} tok per cpu-s, "
              f"{tokens / statistics.median(wall[api]):6.1f} tok/s")
    ratio = statistics.median(cpu["chat"]) / statistics.median(cpu["messages"])
    print(f"messages / chat, tokens per server cpu-second: {ratio:.3f}")


if __name__ == "__main__":
    asyncio.run(main())
