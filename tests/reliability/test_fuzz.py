"""A raw-HTTP fuzzer on loopback: malformed request lines, bad headers, bad chunked bodies,
huge headers, mutated JSON bodies and slowloris connections. Zero 5xx, zero tracebacks in the
server log, the server stays up and keeps serving others throughout.
(Schema-driven fuzzing against /openapi.json lives in tests/test_openapi.py.)"""

from __future__ import annotations

import json
import random
import socket
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import FerryServer

from .common import SCALES, sizes, summary

CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
SEEDS = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"prompt": "Hi", "max_tokens": 4},
    "/v1/embeddings": {"model": "all-minilm-l6-v2", "input": ["a", "b"]},
    "/v1/streams/lookup": {"conversation_ids": ["a", "b"]},
}
POSTS = list(SEEDS)


def valid(path: str = "/v1/chat/completions", extra: bytes = b"") -> bytes:
    body = json.dumps(SEEDS[path]).encode()
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def request_line_cases(rng: random.Random) -> list[bytes]:
    cases = [b"THIS IS NOT HTTP\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
             b"GET  HTTP/1.1\r\n\r\n", b"\x00\x01\x02\x03\r\n\r\n", b"\r\n\r\n\r\n",
             b"GET /%zz%00 HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /\x00 HTTP/1.1\r\n\r\n",
             b"BREW /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\n\n",
             b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET /v1/models?" + b"x=1&" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET http://evil/v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
             b"GET /v1/../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n",
             b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
             b"GET / HTTP/1.0\r\n\r\n", b"DELETE /v1/stream/%2F%2E%2E HTTP/1.1\r\nHost: x\r\n\r\n",
             b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"]
    for _ in range(40):
        cases.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) + b"\r\n\r\n")
    return cases


def header_cases() -> list[bytes]:
    r = []
    for h in (b"NoColonHere", b"Bad Name: x", b" Leading: space", b"X: a\x00b", b"X: \xff\xfe",
              b"Content-Length: -1", b"Content-Length: abc", b"Content-Length: 1e3",
              b"Content-Length: 99999999999999999999999", b"Content-Length: 5\r\nContent-Length: 6",
              b"Transfer-Encoding: gzip, chunked",
              b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity",
              b"Transfer-Encoding: xchunked",
              b"X-Folded: a\r\n  continued", b"Content-Type: application/json; charset=utf-16",
              b"Content-Type: text/plain", b"Content-Encoding: gzip", b"Expect: 100-continue",
              b"Authorization: Bearer " + b"k" * 10_000, b"X-Request-Id: " + b"r" * 5000,
              b"X-Conversation-Id: ../../etc", b"Connection: upgrade\r\nUpgrade: websocket",
              b"Host: a\r\nHost: b"):
        r.append(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + h + b"\r\n\r\n"
                 + json.dumps(CHAT).encode())
        r.append(valid(extra=h + b"\r\n"))
    r.append(b"GET /v1/models HTTP/1.1\r\n" + b"X-Big: " + b"h" * 200_000 + b"\r\n\r\n")
    r.append(b"GET /v1/models HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5000))
             + b"\r\n")
    r.append(b"GET /v1/models HTTP/1.1\r\n" + b"X-Huge: " + b"h" * 4_000_000 + b"\r\n\r\n")
    return r


def chunked_cases() -> list[bytes]:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
            b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    body = json.dumps(CHAT).encode()
    ok = b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    bad = [b"zz\r\n" + body + b"\r\n0\r\n\r\n", b"%x\r\n" % (len(body) + 5) + body + b"\r\n0\r\n\r\n",
           b"%x\r\n" % len(body) + body + b"0\r\n\r\n", b"ffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
           b"-5\r\nabc\r\n0\r\n\r\n", b"%x;ext=\x00\xff\r\n" % len(body) + body + b"\r\n0\r\n\r\n",
           b"3\r\n{\"m\r\n", b"%x\r\n" % len(body) + body + b"\r\n0\r\nTrailer: \xff\r\n\r\n",
           b"".join(b"1\r\n" + bytes([c]) + b"\r\n" for c in body) + b"0\r\n\r\n",
           b"0\r\n\r\n", ok.replace(b"\r\n", b"\n"), b"%X\r\n" % len(body) + body + b"\r\n0\r\n\r\n"]
    return [head + b for b in bad]


def mutate(rng: random.Random, value):
    choices = [None, -1, 0, 2**63, -(2**63), 1e308, float("nan"), "", "x" * 10_000, [], {},
               [None], {"a": None}, True, "\u0000", "\U0001F600" * 100, "<|im_end|>", [[]] * 50]
    if isinstance(value, dict) and value and rng.random() < 0.6:
        k = rng.choice(list(value))
        return {**value, k: mutate(rng, value[k])}
    if isinstance(value, list) and value and rng.random() < 0.6:
        i = rng.randrange(len(value))
        return value[:i] + [mutate(rng, value[i])] + value[i + 1:]
    return rng.choice(choices)


def json_cases(rng: random.Random, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        path = POSTS[i % len(POSTS)]
        body = mutate(rng, SEEDS[path])
        if isinstance(body, dict) and "max_tokens" in body and body is not SEEDS[path]:
            body.setdefault("max_tokens", 4)
        raw = json.dumps(body, allow_nan=True).encode()
        if rng.random() < 0.2:
            raw = raw[:rng.randrange(len(raw) + 1)]  # truncated JSON
        if rng.random() < 0.1:
            raw = bytes(b ^ (1 << rng.randrange(8)) if rng.random() < 0.05 else b for b in raw)
        out.append(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
                   b"application/json\r\nContent-Length: " + str(len(raw)).encode()
                   + b"\r\n\r\n" + raw)
    for path in POSTS:
        for raw in (b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                    b"", b"null", b"[]", b'"x"', b"1e999999", b'{"messages":' + b"[" * 5000):
            out.append(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
                       b"application/json\r\nContent-Length: " + str(len(raw)).encode()
                       + b"\r\n\r\n" + raw)
    return out


def send_case(port: int, payload: bytes) -> str:
    """Send one case and return its outcome: an HTTP status, 'closed' or 'no-answer'."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        try:
            s.sendall(payload)
        except OSError:
            pass  # the server may answer (and close) before taking the whole payload
        s.settimeout(10)
        data = b""
        try:
            while b"\r\n" not in data:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            return "no-answer"  # an incomplete request: the server waits for the rest
        except ConnectionResetError:
            return "closed"
        if not data:
            return "closed"
        line = data.split(b"\r\n", 1)[0].split()
        return line[1].decode() if len(line) > 1 and line[0].startswith(b"HTTP/") else "garbage"
    finally:
        s.close()


def slowloris(port: int, stop: threading.Event, sent: Counter) -> None:
    """Open a request and send one header byte per second until stopped."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    payload = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 10_000
    try:
        for b in payload:
            if stop.wait(1.0):
                return
            s.sendall(bytes([b]))
            sent["bytes"] += 1
    except OSError:
        sent["cut"] += 1  # the server closed the idle-ish connection: also fine
    finally:
        s.close()


@pytest.mark.parametrize("scale", SCALES)
def test_fuzzed_http_never_gets_a_5xx_and_the_server_keeps_serving(scale):
    sz = sizes(scale)
    rng = random.Random(10)
    srv = FerryServer("--parallel", "2")
    stop = threading.Event()
    sent: Counter = Counter()
    lorises = [threading.Thread(target=slowloris, args=(srv.port, stop, sent))
               for _ in range(sz["slowloris"])]
    try:
        for t in lorises:
            t.start()
        outcomes: Counter = Counter()
        cases = 0
        latencies = []
        for _ in range(sz["fuzz_rounds"]):
            batch = (request_line_cases(rng) + header_cases() + chunked_cases()
                     + json_cases(rng, 200))
            rng.shuffle(batch)
            with ThreadPoolExecutor(6) as pool:
                for out in pool.map(lambda p: send_case(srv.port, p), batch):
                    outcomes[out] += 1
            cases += len(batch)
            t0 = time.monotonic()  # others are served while the slowloris connections hang on
            r = httpx.post(srv.url + "/v1/chat/completions", json=CHAT, timeout=30)
            latencies.append(time.monotonic() - t0)
            assert r.status_code == 200
        assert all(t.is_alive() or sent["cut"] for t in lorises), "slowloris still connected"
        stop.set()
        for t in lorises:
            t.join(5)
        h = httpx.get(srv.url + "/health", timeout=5)
        fivexx = sum(n for k, n in outcomes.items() if k[:1] == "5")
        log = srv.log()
        tracebacks = log.count("Traceback")
        summary("fuzz", scale=scale, cases=cases, slowloris=len(lorises),
                slowloris_bytes=sent["bytes"], slowloris_cut=sent["cut"], fivexx=fivexx,
                tracebacks=tracebacks, max_other_latency_s=max(latencies),
                outcomes=",".join(f"{k}:{n}" for k, n in sorted(outcomes.items())))
        assert fivexx == 0, outcomes
        assert tracebacks == 0, log[log.index("Traceback") - 2000:][:6000]
        assert h.status_code == 200 and srv.proc.poll() is None
        assert max(latencies) < 10
    finally:
        stop.set()
        srv.stop()
