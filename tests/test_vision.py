"""Images in chats end to end: a real ``ferry serve --mmproj`` with the synthetic random-weight
projector (no vision GGUF ships here), driven by the official client with strict validation."""

from __future__ import annotations

import asyncio
import base64

import httpx
import openai
import pytest
from conftest import FerryServer
from test_concurrency import one
from test_errors import check

from ferry.vision.testing import n_image_tokens, png_bytes, write_mmproj

RED = png_bytes(40, 30, (220, 20, 20))
NOISE = png_bytes(64, 48, seed=7)


def uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat(*images: bytes, text: str = "Describe the picture.") -> list[dict]:
    parts: list[dict] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": uri(im)}} for im in images]
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def vserver(tmp_path_factory):
    mmproj = write_mmproj(tmp_path_factory.mktemp("vision") / "mmproj.gguf")
    s = FerryServer("--parallel", "4", "--mmproj", str(mmproj))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def vclient(vserver):
    return openai.OpenAI(base_url=vserver.url + "/v1", api_key="none", max_retries=0,
                         _strict_response_validation=True, timeout=120)


@pytest.fixture(scope="module")
def avclient(vserver):
    return openai.AsyncOpenAI(base_url=vserver.url + "/v1", api_key="none", max_retries=0,
                              _strict_response_validation=True, timeout=120)


def ask(client, messages, **kw):
    return client.chat.completions.create(model="default", messages=messages, max_tokens=16,
                                          temperature=0, **kw)


def test_a_chat_with_an_image_completes_and_counts_the_image_tokens(vclient):
    with_image = ask(vclient, chat(RED))
    without = ask(vclient, chat())
    assert with_image.choices[0].message.content
    assert with_image.choices[0].finish_reason in ("stop", "length")
    assert with_image.usage.prompt_tokens == without.usage.prompt_tokens + n_image_tokens()


def test_two_images_count_twice_and_the_same_image_answers_the_same(vclient):
    two = ask(vclient, chat(RED, NOISE))
    one_image = ask(vclient, chat(RED))
    assert two.usage.prompt_tokens == one_image.usage.prompt_tokens + n_image_tokens()
    again = ask(vclient, chat(RED))  # may reuse the slot's KV, but only up to the image
    assert again.choices[0].message.content == one_image.choices[0].message.content


def test_an_image_chat_streams(vclient):
    stream = ask(vclient, chat(NOISE), stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage.prompt_tokens > n_image_tokens()


def test_text_only_chats_still_work_on_a_vision_server(vclient):
    r = ask(vclient, [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}])
    assert r.choices[0].message.content


async def test_concurrent_text_streams_are_not_disturbed_by_image_requests(avclient):
    prompts = [f"Tell me a fact about the number {i}." for i in range(3)]
    alone = [await one(avclient, p) for p in prompts]

    async def image_chat(im: bytes):
        return await avclient.chat.completions.create(
            model="default", messages=chat(im), max_tokens=16, temperature=0)

    results = await asyncio.gather(*(one(avclient, p) for p in prompts),
                                   image_chat(RED), image_chat(NOISE))
    together, images = results[:3], results[3:]
    assert all(r.choices[0].message.content for r in images)
    for a, b in zip(alone, together):
        assert b and a[:20] == b[:20]  # same criterion as test_concurrency


def test_a_garbage_image_is_400_and_the_server_keeps_serving(vserver, vclient):
    with httpx.Client(base_url=vserver.url, timeout=60) as h:
        body = {"model": "default", "messages": chat(b"\x89PNG\r\n\x1a\nnot really")}
        err = check(h.post("/v1/chat/completions", json=body), 400)
        assert err["param"] == "messages.0.content.1.image_url"
        body["messages"] = [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://127.0.0.1:9/x.png"}}]}]
        assert "--allow-image-urls" in check(h.post("/v1/chat/completions", json=body),
                                             400)["message"]
    assert ask(vclient, chat(RED)).choices[0].message.content
