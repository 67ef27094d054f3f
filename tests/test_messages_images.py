"""Image blocks on the Messages API: a real ``ferry serve --mmproj`` with the synthetic projector
(no vision GGUF ships here) and ``--allow-image-urls``; base64 and url sources reach the chat
path's image loading, so they count as the projector's image tokens."""

from __future__ import annotations

import base64
import http.server
import threading

import pytest
from conftest import FerryServer, anthropic_client

from ferry.vision.testing import n_image_tokens, png_bytes, write_mmproj

RED = png_bytes(40, 30, (220, 20, 20))


def base64_block(data: bytes) -> dict:
    return {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                        "data": base64.b64encode(data).decode()}}


def ask(*blocks: dict) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, *blocks]}]


@pytest.fixture(scope="module")
def image_url():
    class One(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # http.server calls it by this name
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(RED)))
            self.end_headers()
            self.wfile.write(RED)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), One)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/red.png"
    srv.shutdown()


@pytest.fixture(scope="module")
def vanth(tmp_path_factory):
    mmproj = write_mmproj(tmp_path_factory.mktemp("vision") / "mmproj.gguf")
    s = FerryServer("--parallel", "2", "--mmproj", str(mmproj), "--allow-image-urls")
    yield anthropic_client(s.url)
    s.stop()


def test_base64_image_counts_as_the_projectors_tokens(vanth):
    without = vanth.messages.count_tokens(model="default", messages=ask()).input_tokens
    with_image = vanth.messages.count_tokens(model="default", messages=ask(base64_block(RED)))
    assert with_image.input_tokens == without + n_image_tokens()
    m = vanth.messages.create(model="default", max_tokens=8, messages=ask(base64_block(RED)))
    assert m.content[0].text and m.usage.output_tokens > 0
    assert (m.usage.input_tokens + m.usage.cache_read_input_tokens) == with_image.input_tokens


def test_url_image_is_fetched_when_allowed(vanth, image_url):
    url_block = {"type": "image", "source": {"type": "url", "url": image_url}}
    n_url = vanth.messages.count_tokens(model="default", messages=ask(url_block)).input_tokens
    n_b64 = vanth.messages.count_tokens(model="default", messages=ask(base64_block(RED)))
    assert n_url == n_b64.input_tokens
    with vanth.messages.stream(model="default", max_tokens=6, messages=ask(url_block)) as s:
        assert s.get_final_message().usage.output_tokens > 0


def test_garbage_image_is_400_in_anthropic_envelope(vanth):
    import anthropic

    bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                       "data": base64.b64encode(b"not a png").decode()}}
    with pytest.raises(anthropic.BadRequestError) as e:
        vanth.messages.create(model="default", max_tokens=4, messages=ask(bad))
    assert e.value.body["type"] == "error"
    assert e.value.body["error"]["type"] == "invalid_request_error"
