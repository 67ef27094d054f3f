"""Does Ray Serve's own HTTP proxy keep Ferry's transport guarantees? (the front-door decision)

Runs a tiny streaming SSE app behind Ray Serve's HTTP proxy (uvicorn in the proxy actor, the
app as the ingress deployment) and checks, with raw sockets, what Ferry's tests check on its own
server: a client that half-closes after its request (``shutdown(SHUT_WR)``) still gets the whole
stream; a client that disconnects gets its generation cancelled; a reader that stops reading.

    python benchmarks/ray_proxy_transport.py        # prints one line per property

Needs only ``ray[serve]``; starts and stops its own local Ray instance.
"""

from __future__ import annotations

import asyncio
import socket
import time

import ray
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from ray import serve

N_EVENTS = 40
api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class Streamer:
    def __init__(self) -> None:
        self.cancelled = 0

    @api.post("/stream")
    async def stream(self) -> StreamingResponse:
        async def events():
            try:
                for i in range(N_EVENTS):
                    await asyncio.sleep(0.05)
                    yield f"data: {i}\n\n".encode()
                yield b"data: [DONE]\n\n"
            except asyncio.CancelledError:
                self.cancelled += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    @api.get("/cancelled")
    async def count(self) -> int:
        return self.cancelled


def _request(port: int, method: str, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
              "Connection: close\r\n\r\n".encode())
    return s


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _cancelled(port: int) -> str:
    body = _read_all(_request(port, "GET", "/cancelled"))
    return body.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def main() -> None:
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024)
    port = 18765
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(Streamer.bind(), route_prefix="/")
    try:
        s = _request(port, "POST", "/stream")
        s.shutdown(socket.SHUT_WR)
        body = _read_all(s)
        events = body.count(b"data: ")
        print(f"half-closed client: {events} of {N_EVENTS + 1} events, "
              f"[DONE] {'received' if b'[DONE]' in body else 'MISSING'}")
        time.sleep(N_EVENTS * 0.05 + 0.5)
        print(f"  its generator was cancelled: {_cancelled(port)} (cancellations so far)")
        s = _request(port, "POST", "/stream")
        s.recv(4096)
        s.close()
        time.sleep(1.0)
        print(f"disconnected client: cancellations so far {_cancelled(port)}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
