"""Images in the Responses API: ``input_image`` parts reach the projector exactly as chat's
``image_url`` parts do (a real ``ferry serve --mmproj`` with the synthetic test projector)."""

from __future__ import annotations

import base64

import httpx
import openai
import pytest
from conftest import FerryServer
from openai_spec import validate

from ferry.vision.testing import png_bytes, write_mmproj

URI = "data:image/png;base64," + base64.b64encode(png_bytes(40, 30, (220, 20, 20))).decode()


@pytest.fixture(scope="module")
def vserver(tmp_path_factory):
    mmproj = write_mmproj(tmp_path_factory.mktemp("vision") / "mmproj.gguf")
    s = FerryServer("--parallel", "2", "--mmproj", str(mmproj))
    yield s
    s.stop()


def test_input_image_is_seen_like_a_chat_image(vserver):
    chat = httpx.post(vserver.url + "/v1/chat/completions", timeout=120, json={
        "model": "default", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "Describe the picture."},
            {"type": "image_url", "image_url": {"url": URI}}]}]}).json()
    client = openai.OpenAI(base_url=vserver.url + "/v1", api_key="none", max_retries=0,
                           _strict_response_validation=True, timeout=120)
    raw = client.responses.with_raw_response.create(
        model="default", max_output_tokens=16, temperature=0,
        input=[{"role": "user", "content": [
            {"type": "input_text", "text": "Describe the picture."},
            {"type": "input_image", "image_url": URI, "detail": "auto"}]}])
    r = raw.parse()
    validate(raw.http_response.json(), "Response")
    assert r.usage.input_tokens == chat["usage"]["prompt_tokens"]
    assert r.output_text == chat["choices"][0]["message"]["content"]
    [item] = client.responses.input_items.list(r.id).data
    assert [p.type for p in item.content] == ["input_text", "input_image"]
    assert item.content[1].image_url == URI
