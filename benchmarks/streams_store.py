"""Stream-store micro-benchmark: append throughput, replay time-to-first-byte, live-follow lag.

    python benchmarks/streams_store.py [--events 30000] [--redis-url redis://...]

Without --redis-url it starts its own redis-server (from PATH or /usr/bin) on a free loopback
port, without persistence, and stops it at the end. Events are ~150-byte SSE chunks, like one
streamed token of a chat completion.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator

from ferry.streams import StreamStore, make_store

EVENT_BODY = (
    'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
    '"model":"m","choices":[{"index":0,"delta":{"content":" token"}}]}\n\n'
)


def _event(store_session_id: str) -> bytes:
    return f"id: {store_session_id}\n{EVENT_BODY}".encode()


@contextlib.contextmanager
def _redis_server() -> Iterator[str]:
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as workdir:
        args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            for _ in range(200):
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
                    break
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=10)


async def _append_rate(store: StreamStore, events: int) -> tuple[float, int, str]:
    conv = f"bench-{uuid.uuid4().hex[:8]}"
    session = await store.open(conv, None)
    started = time.perf_counter()
    for _ in range(events):
        await session.append(_event(session.next_event_id()))
    elapsed = time.perf_counter() - started
    await session.finish()
    return events / elapsed, session.total_bytes, conv


async def _first_byte(store: StreamStore, conv: str, offset: int, repeats: int = 50) -> float:
    """Median seconds from calling replay() to holding the first chunk."""
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        chunks = await store.replay(conv, None, offset=offset)
        await chunks.__anext__()
        samples.append(time.perf_counter() - started)
        await chunks.aclose()
    return statistics.median(samples)


async def _follow_lag(writer: StreamStore, reader: StreamStore, events: int = 200) -> float:
    """Median seconds from calling append() to the follower (another replica) holding it."""
    conv = f"bench-{uuid.uuid4().hex[:8]}"
    session = await writer.open(conv, None)
    chunks = await reader.replay(conv, None)
    lags = []
    for _ in range(events):
        started = time.perf_counter()
        await session.append(_event(session.next_event_id()))
        await chunks.__anext__()
        lags.append(time.perf_counter() - started)
    await session.finish()
    await chunks.aclose()
    return statistics.median(lags)


async def _bench(name: str, url: str, events: int, buffer_bytes: int) -> None:
    store = make_store(url, buffer_bytes=buffer_bytes, ttl=60)
    other = make_store(url, buffer_bytes=buffer_bytes, ttl=60) if url != "memory" else store
    try:
        rate, total, conv = await _append_rate(store, events)
        head = await _first_byte(store, conv, offset=max(0, total - buffer_bytes + 1000))
        tail = await _first_byte(store, conv, offset=total - 1)
        lag = await _follow_lag(store, other)
        print(
            f"| {name} | {rate:,.0f} ev/s ({rate * len(_event('0')) / 1e6:.1f} MB/s) "
            f"| {head * 1e3:.3f} | {tail * 1e3:.3f} | {lag * 1e3:.3f} |"
        )
    finally:
        await store.close()
        if other is not store:
            await other.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--buffer-bytes", type=int, default=4 << 20)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    print(f"{args.events} appends of {len(_event('0'))}-byte events, buffer {args.buffer_bytes} B")
    print(
        "| store | append | TTFB oldest kept byte (ms) | TTFB newest byte (ms) | follow lag (ms) |"
    )
    print("|---|---|---|---|---|")
    await _bench("memory", "memory", args.events, args.buffer_bytes)
    if args.redis_url:
        await _bench("redis", args.redis_url, args.events, args.buffer_bytes)
    else:
        with _redis_server() as url:
            await _bench("redis", url, args.events, args.buffer_bytes)


if __name__ == "__main__":
    asyncio.run(main())
