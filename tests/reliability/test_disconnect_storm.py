"""Disconnect storm: many streaming clients drop at random moments by FIN, RST or half-close;
afterwards no sequence is left, memory is back to its baseline and the next request is served."""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

import httpx
import pytest
from conftest import FerryServer
from rawhttp import connect, request_bytes

from .common import SCALES, busy, settle_rss, sizes, summary, wait_idle

MODES = ("fin", "rst", "half")


def body(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Tell story number {i}."}],
            "max_tokens": 300, "ignore_eos": True, "stream": True}


LOCK = threading.Lock()


def one_client(url: str, i: int, rng: random.Random, got: dict[str, int]) -> None:
    mode = MODES[i % 3]
    s = connect(url, timeout=30)
    s.sendall(request_bytes("POST", "/v1/chat/completions", body(i)))
    deadline = time.monotonic() + rng.uniform(0.0, 3.0)  # a random moment: queued, mid-stream
    s.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            n = len(s.recv(65536))
            with LOCK:
                got["bytes"] += n
        except TimeoutError:
            pass
    if mode == "rst":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif mode == "half":
        s.shutdown(socket.SHUT_WR)
        time.sleep(rng.uniform(0.1, 1.0))  # still reading a little, then gone
    s.close()
    with LOCK:
        got[mode] += 1


def storm(url: str, n: int, seed: int) -> dict[str, int]:
    rng = random.Random(seed)
    got = {"fin": 0, "rst": 0, "half": 0, "bytes": 0}
    threads = [threading.Thread(target=one_client, args=(url, i, random.Random(rng.random()), got))
               for i in range(n)]
    for t in threads:
        t.start()
        time.sleep(0.01)
    for t in threads:
        t.join(60)
    return got


@pytest.mark.parametrize("scale", SCALES)
def test_disconnect_storm_leaves_no_sequence_and_no_memory_behind(scale):
    n = sizes(scale)["storm_clients"]
    srv = FerryServer("--parallel", "8")
    try:
        pid = srv.proc.pid
        storm(srv.url, 16, seed=1)  # warm-up: allocator, KV cache, code paths
        wait_idle(srv.url, 30)
        base = settle_rss(pid)
        t0 = time.monotonic()
        got = storm(srv.url, n, seed=2)
        storm_s = time.monotonic() - t0
        idle_after = wait_idle(srv.url, 30)
        after = settle_rss(pid)
        growth = (after - base) / base
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                       json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})
        summary("disconnect_storm", scale=scale, clients=n, fin=got["fin"], rst=got["rst"],
                half_close=got["half"], bytes_read=got["bytes"], storm_s=storm_s,
                idle_after_s=idle_after, rss_base_mib=base / 1024, rss_after_mib=after / 1024,
                rss_growth_pct=100 * growth, next_status=r.status_code)
        assert got["fin"] + got["rst"] + got["half"] == n
        assert busy(srv.url) == 0
        assert abs(growth) < 0.10
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        assert srv.proc.poll() is None
    finally:
        srv.stop()
