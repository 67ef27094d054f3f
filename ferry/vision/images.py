"""Image content parts of chat messages -> image bytes, checked before anything decodes them.

``{"type": "image_url", "image_url": {"url": ..., "detail": ...}}``: ``data:image/...;base64,``
URIs always; ``http(s)://`` URLs only when the server was started with ``--allow-image-urls``
(fetched with a timeout and a size cap); any other scheme is refused. ``detail`` is accepted and
ignored.

Invariants:
- Every failure is an ``InvalidRequest`` (400) naming the part: ``messages.N.content.M.image_url``;
  an image over ``max_bytes`` is a ``PayloadTooLarge`` (413).
- Only PNG, JPEG, GIF and BMP bytes (by their magic numbers) are passed on, so llama.cpp's decoder
  never sees anything else; images come out in message order, then part order, which is the order
  of their markers in the rendered prompt.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from ferry.errors import InvalidRequest, PayloadTooLarge
from ferry.protocol.openai import ImagePart, Message

FETCH_TIMEOUT_S = 10.0
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")
_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,",
                       re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ImageInput:
    data: bytes  # the encoded image file (PNG, JPEG, GIF or BMP)
    param: str  # where it came from, for errors: messages.N.content.M.image_url


@dataclass(frozen=True, slots=True)
class ImagePolicy:
    allow_urls: bool = False
    max_bytes: int = 8 * 1024 * 1024


def image_parts(messages: list[Message]) -> list[tuple[str, ImagePart]]:
    """(param, part) for every image part, in prompt order."""
    return [(f"messages.{i}.content.{j}.image_url", p)
            for i, m in enumerate(messages) if isinstance(m.content, list)
            for j, p in enumerate(m.content) if isinstance(p, ImagePart)]


def decode_data_uri(url: str, param: str, max_bytes: int) -> bytes:
    m = _DATA_URI.match(url)
    if m is None:
        raise InvalidRequest("an image data URI must look like data:image/png;base64,...",
                             param=param)
    mime = (m.group("mime") or "").lower()
    if mime and not mime.startswith("image/"):
        raise InvalidRequest(f"a data URI of type {mime!r} is not an image", param=param)
    payload = url[m.end():]
    if len(payload) > (max_bytes + 2) // 3 * 4 + 4:
        raise PayloadTooLarge(f"the image is larger than {max_bytes} bytes", param=param)
    try:
        data = base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("the image data URI is not valid base64", param=param) from None
    return check_image(data, param, max_bytes)


def check_image(data: bytes, param: str, max_bytes: int) -> bytes:
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"the image is larger than {max_bytes} bytes", param=param)
    if not data.startswith(_MAGIC):
        raise InvalidRequest("the image is not a PNG, JPEG, GIF or BMP file", param=param)
    return data


async def load_images(messages: list[Message], policy: ImagePolicy) -> list[ImageInput]:
    """Every image of ``messages`` as bytes (fetching URLs if the policy allows)."""
    out = []
    for param, part in image_parts(messages):
        url = part.image_url.url.strip()
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            data = decode_data_uri(url, param, policy.max_bytes)
        elif scheme in ("http", "https"):
            if not policy.allow_urls:
                raise InvalidRequest("image URLs are not fetched by this server (start it with "
                                     "--allow-image-urls); send the image as a data: URI",
                                     param=param)
            data = check_image(await fetch(url, param, policy.max_bytes), param, policy.max_bytes)
        else:
            raise InvalidRequest("an image URL must be a data: URI or an http(s) URL",
                                 param=param)
        out.append(ImageInput(data, param))
    return out


async def fetch(url: str, param: str, max_bytes: int) -> bytes:
    """GET ``url`` with a timeout, no redirects, and at most ``max_bytes`` read."""
    import httpx

    try:
        async with (httpx.AsyncClient(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
                    client.stream("GET", url) as r):
            if r.status_code != 200:
                raise InvalidRequest(f"fetching the image returned HTTP {r.status_code}",
                                     param=param)
            buf = bytearray()
            async for piece in r.aiter_bytes():
                buf += piece
                if len(buf) > max_bytes:
                    raise PayloadTooLarge(f"the image is larger than {max_bytes} bytes",
                                          param=param)
            return bytes(buf)
    except httpx.HTTPError as e:
        raise InvalidRequest(f"the image could not be fetched: {type(e).__name__}",
                             param=param) from None
