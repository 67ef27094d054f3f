"""Raw-socket HTTP helpers for transport tests (no client library in between)."""

from __future__ import annotations

import json
import socket


def connect(url: str, timeout: float = 60) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=timeout)


def request_bytes(method: str, path: str, body: dict | bytes | None = None,
                  headers: dict[str, str] | None = None, close: bool = False) -> bytes:
    data = body if isinstance(body, bytes) else (json.dumps(body).encode() if body else b"")
    h = {"Host": "127.0.0.1", "Content-Length": str(len(data))}
    if body is not None and not isinstance(body, bytes):
        h["Content-Type"] = "application/json"
    if close:
        h["Connection"] = "close"
    h.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
    return head.encode() + b"\r\n" + data


def read_all(s: socket.socket) -> bytes:
    out = []
    while True:
        chunk = s.recv(65536)
        if not chunk:
            return b"".join(out)
        out.append(chunk)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        body = dechunk(body)
    return status, headers, body


def dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while True:
        j = data.index(b"\r\n", i)
        n = int(data[i:j].split(b";")[0], 16)
        if n == 0:
            return b"".join(out)
        out.append(data[j + 2: j + 2 + n])
        i = j + 2 + n + 2


def stream_prefix(url: str, body: dict, n: int, headers: dict[str, str] | None = None,
                  path: str = "/v1/chat/completions") -> tuple[bytes, socket.socket]:
    """POST a streaming request on a raw socket; return at least ``n`` de-chunked body bytes
    (whole chunks), or the whole body when the stream ends before ``n``, and the socket.

    A connection the server closes mid-chunk fails the test at once (no busy loop on a dead
    socket)."""
    s = connect(url)
    s.sendall(request_bytes("POST", path, body, headers=headers))
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += _recv(s)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    out = b""
    while len(out) < n:
        while b"\r\n" not in rest:
            rest += _recv(s)
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:  # the terminal chunk: the stream is shorter than n
            break
        while len(rest) < size + 2:
            rest += _recv(s)
        out += rest[:size]
        rest = rest[size + 2:]
    return out, s


def _recv(s: socket.socket) -> bytes:
    data = s.recv(65536)
    assert data, "the server closed the connection mid-response"
    return data
