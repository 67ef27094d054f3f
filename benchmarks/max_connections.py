"""How fast a connection beyond --max-connections gets its 503, while the admitted connections
stream: starts ``ferry serve --max-connections N --parallel N``, holds N streaming requests open,
then opens ``--refusals`` fresh connections (raw sockets) one after another and times each from
connect to the server's close after the 503. Also times the same request (GET /v1/models) on an
admitted keep-alive connection.

    .venv/bin/python benchmarks/max_connections.py [--limit 4] [--refusals 200]
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import FerryServer


def hold(url: str, stop: threading.Event) -> None:
    body = {"messages": [{"role": "user", "content": "Tell a story"}], "max_tokens": 1500,
            "ignore_eos": True, "stream": True}
    with httpx.Client(timeout=600) as c, c.stream("POST", url + "/v1/chat/completions",
                                                  json=body) as r:
        chunks = r.iter_bytes()
        for _ in chunks:
            if stop.is_set():
                return


def raw_get(port: int) -> int:
    """GET /v1/models on a new connection (a raw socket: no client set-up in the timing); the
    status, after reading the response to the server's close."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def ms(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--limit", type=int, default=4)
    ap.add_argument("--refusals", type=int, default=200)
    args = ap.parse_args()
    server = FerryServer("--max-connections", str(args.limit), "--parallel", str(args.limit),
                         passive_wait=False)
    stop = threading.Event()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as admitted:
            admitted.get("/v1/models")  # this keep-alive connection holds one place
            holders = [threading.Thread(target=hold, args=(server.url, stop), daemon=True)
                       for _ in range(args.limit - 1)]
            for t in holders:
                t.start()
            time.sleep(2)  # the streams are generating
            refused, served = [], []
            for _ in range(args.refusals):
                t0 = time.perf_counter()
                status = raw_get(server.port)
                refused.append(time.perf_counter() - t0)
                assert status == 503, status
                t0 = time.perf_counter()
                assert admitted.get("/v1/models").status_code == 200
                served.append(time.perf_counter() - t0)
        stop.set()
    finally:
        server.stop()
    for name, xs in (("503 on a new connection", refused), ("200 on an admitted one", served)):
        print(f"{name}: n={len(xs)} p50={ms(xs, 0.5):.2f} ms p99={ms(xs, 0.99):.2f} ms "
              f"max={max(xs) * 1000:.2f} ms mean={statistics.mean(xs) * 1000:.2f} ms")


if __name__ == "__main__":
    main()
