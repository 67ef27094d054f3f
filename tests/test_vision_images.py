"""Image parts of chat requests: parsing and checking, before anything decodes them (no server)."""

from __future__ import annotations

import asyncio
import base64

import pytest

from ferry.errors import InvalidRequest, PayloadTooLarge
from ferry.protocol.openai import ChatCompletionRequest
from ferry.vision.images import ImagePolicy, decode_data_uri, load_images
from ferry.vision.testing import png_bytes

PNG = png_bytes(8, 8, (1, 2, 3))
MARK = "<img>"


def uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def image(url: str, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": url, **extra}}


def request(*contents) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": c} for c in contents])


def load(req: ChatCompletionRequest, **policy):
    return asyncio.run(load_images(req.messages, ImagePolicy(**policy)))


def test_a_base64_data_uri_gives_the_image_bytes():
    assert decode_data_uri(uri(PNG), "p", 1 << 20) == PNG


def test_detail_is_accepted_and_ignored():
    [im] = load(request([image(uri(PNG), detail="high")]))
    assert im.data == PNG


@pytest.mark.parametrize(("url", "words"), [
    ("data:image/png;base64,%%%notbase64", "base64"),
    ("data:image/png,plain-not-base64", "data:image/png;base64"),
    (uri(b"hello, not an image"), "PNG, JPEG"),
    (uri(PNG, mime="text/plain"), "not an image"),
])
def test_bad_data_uris_are_400_naming_the_part(url, words):
    with pytest.raises(InvalidRequest) as e:
        load(request([{"type": "text", "text": "hi"}], [{"type": "text", "text": "a"}, image(url)]))
    assert words in e.value.message
    assert e.value.param == "messages.1.content.1.image_url"


def test_an_http_url_is_refused_unless_image_urls_are_allowed():
    with pytest.raises(InvalidRequest) as e:
        load(request([image("https://example.com/cat.png")]))
    assert "--allow-image-urls" in e.value.message
    assert e.value.param == "messages.0.content.0.image_url"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/a.png", "cat.png"])
def test_other_schemes_are_refused_even_when_urls_are_allowed(url):
    with pytest.raises(InvalidRequest, match="data: URI or an http"):
        load(request([image(url)]), allow_urls=True)


def test_an_image_over_the_size_limit_is_413():
    big = PNG + b"\0" * 5000
    with pytest.raises(PayloadTooLarge) as e:
        load(request([image(uri(big))]), max_bytes=4096)
    assert e.value.status == 413 and e.value.param == "messages.0.content.0.image_url"


def test_images_come_in_message_then_part_order():
    a, b, c = (png_bytes(4, 4, (i, i, i)) for i in (1, 2, 3))
    req = request([image(uri(a)), {"type": "text", "text": "and"}, image(uri(b))],
                  "no image here", [image(uri(c))])
    got = load(req)
    assert [im.data for im in got] == [a, b, c]
    assert [im.param for im in got] == ["messages.0.content.0.image_url",
                                        "messages.0.content.2.image_url",
                                        "messages.2.content.0.image_url"]


def test_each_image_part_becomes_the_marker_where_it_stood():
    req = request([{"type": "text", "text": "look: "}, image(uri(PNG)),
                   {"type": "text", "text": " and "}, image(uri(PNG))])
    assert req.messages[0].text(MARK) == "look: <img> and <img>"
    assert req.messages[0].text() == "look:  and "  # a text-only render drops images
