"""Where the CPU of a streamed token goes: every process's (and thread's) CPU seconds over one
fixed run, plain `ferry serve` vs the Ray path (front door -> handle -> engine replica).

Wall-clock tok/s on a 2-core machine moves by +-10% from one minute to the next; the CPU each
process spends for the same tokens does not, so this names the processes (Ray's raylet, GCS,
Serve controller, agents, the two Serve replicas, the plain server) that take llama.cpp's cores.

    bash benchmarks/ray.sh overhead   # or any two servers, then:
    python benchmarks/ray_cpu.py --url plain=http://127.0.0.1:18200 \
        --url ray=http://127.0.0.1:18201 --requests 8 --max-tokens 128 --idle 20

Per target: CPU seconds of each process over ``--requests`` sequential (c=1) streamed chat
requests (``ignore_eos``), then over ``--idle`` seconds of no traffic (the background rate);
``--threads`` also splits the busiest processes by thread.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import Counter

import httpx

TICK = os.sysconf("SC_CLK_TCK")
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."


def _ticks(stat_path: str) -> tuple[str, int] | None:
    try:
        with open(stat_path) as f:
            head, rest = f.read().rsplit(")", 1)
    except OSError:
        return None
    fields = rest.split()
    return head.split("(", 1)[1], int(fields[11]) + int(fields[12])  # comm, utime + stime


def _name(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "?"
    words = [a.decode(errors="replace") for a in argv if a][:6]
    text = " ".join(w.rsplit("/", 1)[-1] if i == 0 else w for i, w in enumerate(words))
    return text[:70]


def snapshot(threads: bool) -> dict[tuple[str, str], int]:
    """CPU ticks by (pid, label): a process, or with ``threads`` also each of its threads."""
    out: dict[tuple[str, str], int] = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        got = _ticks(f"/proc/{pid}/stat")
        if got is None:
            continue
        out[(pid, _name(pid))] = got[1]
        if threads:
            try:
                tids = os.listdir(f"/proc/{pid}/task")
            except OSError:
                continue
            for tid in tids:
                t = _ticks(f"/proc/{pid}/task/{tid}/stat")
                if t is not None and tid != pid:
                    out[(pid, f"  thread {t[0]}")] = out.get((pid, f"  thread {t[0]}"), 0) + t[1]
                elif t is not None:
                    out[(pid, f"  thread {t[0]} (main)")] = t[1]
    return out


def delta(before: dict, after: dict) -> Counter:
    return Counter({k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)})


async def run(url: str, requests: int, max_tokens: int) -> tuple[int, float]:
    body = {"model": "default", "temperature": 0, "stream": True, "max_tokens": max_tokens,
            "ignore_eos": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    chunks = 0
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        t0 = time.perf_counter()
        for _ in range(requests):  # c=1
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                r.raise_for_status()
                async for line in r.aiter_lines():
                    chunks += line.startswith("data: {")
        return chunks, time.perf_counter() - t0


def report(title: str, d: Counter, tokens: int, top: int) -> None:
    procs = Counter({k: v for k, v in d.items() if not k[1].startswith("  ")})
    total = sum(procs.values()) / TICK
    per = f", {1000 * total / tokens:.2f} ms CPU per token" if tokens else ""
    print(f"\n## {title}: {total:.2f} CPU s in all processes{per}")
    for (pid, label), ticks in procs.most_common(top):
        print(f"{ticks / TICK:8.2f} s  {pid:>7}  {label}")
        threads = sorted(((v, k[1]) for k, v in d.items() if k[0] == pid and k[1].startswith("  ")),
                         reverse=True)
        for v, name in threads[:6]:
            print(f"{v / TICK:8.2f} s  {'':>7}  {name}")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", action="append", required=True, help="LABEL=URL, repeatable")
    p.add_argument("--requests", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--idle", type=float, default=20.0, help="seconds of no traffic to measure")
    p.add_argument("--threads", action="store_true", help="split processes by thread")
    p.add_argument("--top", type=int, default=14)
    args = p.parse_args()
    targets = [u.split("=", 1) for u in args.url]
    for _label, url in targets:
        await run(url, 1, 16)  # warm-up
    if args.idle:
        s0 = snapshot(args.threads)
        await asyncio.sleep(args.idle)
        report(f"idle {args.idle:.0f} s", delta(s0, snapshot(args.threads)), 0, args.top)
    for label, url in targets:
        s0 = snapshot(args.threads)
        chunks, wall = await run(url, args.requests, args.max_tokens)
        d = delta(s0, snapshot(args.threads))
        tokens = args.requests * args.max_tokens
        report(f"{label}: {args.requests} x {args.max_tokens} tokens at c=1 in {wall:.1f} s "
               f"({tokens / wall:.1f} tok/s, {chunks} chunks)", d, tokens, args.top)


if __name__ == "__main__":
    asyncio.run(main())
