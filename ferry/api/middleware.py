"""Pure-ASGI middleware (never buffers a streaming response): request ids and the one log line per
request, API-key auth, and the body-size limit enforced while the body arrives."""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable

from ferry.api.errors import error_content
from ferry.errors import AuthenticationError, FerryError, PayloadTooLarge

log = logging.getLogger("ferry.access")

PUBLIC_PATHS = ("/health",)
UI_PATHS = ("/", "/index.html")


def request_owner(request) -> str | None:
    """The API key a request came with (None without keys): who owns its streams, stored
    responses and prompt-cache namespace. Set by ``FerryMiddleware``; the one place that reads it."""
    return request.scope.get("state", {}).get("api_key")


def _token(headers: dict[bytes, bytes]) -> bytes | None:
    token = headers.get(b"x-api-key")
    auth = headers.get(b"authorization", b"")
    if token is None and auth[:7].lower() == b"bearer ":
        token = auth[7:].strip()
    return token


async def _send_error(send, exc: FerryError, path: str, request_id: str) -> None:
    status, content = error_content(exc, path, request_id)
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"x-request-id", request_id.encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FerryMiddleware:
    def __init__(self, app, *, api_keys: list[str], max_body_size: int,
                 large_body_paths: dict[str, int] | None = None,
                 on_response: Callable[[dict, int, float], None] | None = None) -> None:
        self.app = app
        self.on_response = on_response  # (scope, status, seconds), e.g. Metrics.on_response
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body_size = max_body_size
        # routes that take uploads (audio) own their own, larger, limit
        self.large_body_paths = large_body_paths or {}

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        token = _token(headers)
        return token is not None and any(hmac.compare_digest(token, k) for k in self.api_keys)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        rid = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        t0 = time.perf_counter()
        status = [0]

        async def send_wrapped(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = list(message.get("headers", [])) + [
                    (b"x-request-id", rid.encode())]
            await send(message)

        path = scope["path"]
        try:
            if (self.api_keys and scope["method"] != "OPTIONS" and path not in PUBLIC_PATHS
                    and not (scope["method"] == "GET" and (path in UI_PATHS
                                                            or path.startswith("/ui/")))
                    and not self._authorized(headers)):
                raise AuthenticationError("Incorrect API key provided. Send it as "
                                          "'Authorization: Bearer KEY' or 'X-Api-Key: KEY'.")
            scope["state"]["api_key"] = self._key_of(headers)
            if any(path.startswith(p) for p in self.large_body_paths):
                return await self.app(scope, receive, send_wrapped)
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body_size:
                raise PayloadTooLarge(f"Request body is {int(length)} bytes; the limit is "
                                      f"{self.max_body_size} bytes.",
                                      headers={"Connection": "close"})
            if length is None and b"chunked" in headers.get(b"transfer-encoding", b""):
                receive = await self._buffer_chunked(receive)
            await self.app(scope, receive, send_wrapped)
        except FerryError as e:
            if status[0] == 0:
                await _send_error(send_wrapped, e, path, rid)
        finally:
            elapsed = time.perf_counter() - t0
            log.info("%s %s %s %d %.1fms", rid, scope["method"], path, status[0], elapsed * 1000,
                     extra={"request_id": rid, "method": scope["method"], "path": path,
                            "status": status[0], "duration_ms": round(elapsed * 1000, 1)})
            if self.on_response is not None:
                self.on_response(scope, status[0], elapsed)

    def _key_of(self, headers: dict[bytes, bytes]) -> str | None:
        token = _token(headers) if self.api_keys else None
        return token.decode("latin-1") if token else None

    async def _buffer_chunked(self, receive):
        """Read a chunked body of unknown size, at most max_body_size bytes of it, then replay it."""
        parts, seen = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return receive
            seen += len(message.get("body", b""))
            if seen > self.max_body_size:
                raise PayloadTooLarge(f"Request body exceeds the limit of {self.max_body_size} "
                                      "bytes.", headers={"Connection": "close"})
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(parts)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay
