"""The chat page (ferry/ui) driven in Debian's headless Chromium against real Ferry servers.

What is checked: answers stream into the page; a reload mid-answer resumes through
``GET /v1/stream/{id}?from=N`` with no missing or repeated text (compared with the session's full
bytes fetched from the server and parsed by httpx-sse); Stop cancels the generation; two
conversations stream at once; model text is never parsed as HTML; an API-key server asks for the
key once; the layout works on a phone-sized screen.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, FerryServer
from httpx_sse import connect_sse
from playwright import sync_api

CHROMIUM = Path("/usr/bin/chromium")  # `make test` installs Debian's chromium when missing

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "artifacts"
LONG = '{"ignore_eos": true}'  # with max tokens 300: ~10 s of streaming on the shared CI box



@pytest.fixture(scope="module")
def ui_server() -> Iterator[FerryServer]:
    s = FerryServer("--parallel", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, ui_server):
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    open_chat(page, ui_server.url)
    yield page
    context.close()
    assert errors == [], errors


def open_chat(page, url: str, *, max_tokens: int = 300, extra: str = LONG) -> None:
    """Load the page, wait for the model list, set max tokens and extra fields in Settings."""
    page.goto(url + "/")
    page.wait_for_function("document.querySelector('#model').options.length > 0")
    page.click("#settings-button")
    page.fill("#settings-form [name=maxTokens]", str(max_tokens))
    page.fill("#settings-form [name=extra]", extra)
    page.click("#save-settings")


def send(page, text: str) -> str:
    """Send a message; returns the stream id (X-Conversation-Id) of the answer."""
    page.fill("#input", text)
    page.press("#input", "Enter")
    answer = page.locator(".message.assistant").last
    sync_api.expect(answer).to_have_attribute("data-state", "streaming")
    return answer.get_attribute("data-stream")


def answer_of(page, stream_id: str):
    return page.locator(f'.message.assistant[data-stream="{stream_id}"]')


def wait_for_text(page, stream_id: str, min_chars: int) -> None:
    page.wait_for_function(
        """([id, n]) => {
            const m = document.querySelector(`.message[data-stream="${id}"] .content`);
            return m && m.textContent.length >= n;
        }""",
        arg=[stream_id, min_chars],
    )


def wait_done(page, stream_id: str, timeout: float = 90_000) -> None:
    page.wait_for_selector(
        f'.message[data-stream="{stream_id}"][data-state="done"]', timeout=timeout
    )


def stored_message(page, stream_id: str) -> dict:
    """The answer as the page saved it in localStorage."""
    return page.evaluate(
        """(id) => {
            const conv = JSON.parse(localStorage.getItem("ferry.conv." + id.split(".")[0]));
            return conv.messages.find((m) => m.stream && m.stream.id === id);
        }""",
        stream_id,
    )


def rendered(page, markdown: str) -> str:
    """What the page's own Markdown renderer shows for `markdown` (its textContent)."""
    return page.evaluate(
        """async (text) => {
            const { renderMarkdown } = await import("/ui/markdown.js");
            const div = document.createElement("div");
            div.append(renderMarkdown(text));
            return div.textContent;
        }""",
        markdown,
    )


def server_text(url: str, stream_id: str, headers: dict[str, str] | None = None) -> str:
    """The answer assembled from the session's full bytes, parsed by httpx-sse; also checks that
    every event id is the byte offset where the event starts."""
    with httpx.Client(base_url=url, timeout=60, headers=headers) as c:
        raw = c.get(f"/v1/stream/{stream_id}", params={"from": 0}).content
        parts, done = [], False
        with connect_sse(c, "GET", f"/v1/stream/{stream_id}", params={"from": 0}) as source:
            for ev in source.iter_sse():
                assert raw[int(ev.id) :].startswith(f"id: {ev.id}\n".encode())
                if ev.data == "[DONE]":
                    done = True
                    break
                for choice in json.loads(ev.data)["choices"]:
                    parts.append(choice["delta"].get("content") or "")
    assert done
    return "".join(parts)


def lookup(url: str, stream_id: str, headers: dict[str, str] | None = None) -> list[dict]:
    r = httpx.post(
        url + "/v1/streams/lookup",
        json={"conversation_ids": [stream_id]},
        headers=headers,
        timeout=10,
    )
    r.raise_for_status()
    return r.json()["data"]


def test_page_and_assets_are_served_from_the_package(ui_server):
    index = httpx.get(ui_server.url + "/")
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert "http://" not in index.text and "https://" not in index.text  # no CDN
    js = httpx.get(ui_server.url + "/ui/app.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]


def test_message_streams_into_the_page(page, ui_server):
    stream_id = send(page, "Tell me about the sea.")
    wait_for_text(page, stream_id, 40)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "ui-mid-stream.png"))
    assert answer_of(page, stream_id).get_attribute("data-state") == "streaming"
    assert page.locator("#conversations li.current.generating").count() == 1
    wait_done(page, stream_id)
    assert stored_message(page, stream_id)["content"] == server_text(ui_server.url, stream_id)
    assert page.locator("#title").inner_text() == "Tell me about the sea."


def test_reload_mid_stream_resumes_without_missing_or_repeated_text(page, ui_server):
    stream_id = send(page, "Write a long story about a lighthouse keeper.")
    wait_for_text(page, stream_id, 60)
    before = stored_message(page, stream_id)
    assert before["stream"]["state"] == "streaming"
    replays: list[str] = []
    page.on("request", lambda r: "/v1/stream/" in r.url and replays.append(r.url))
    page.reload()
    wait_done(page, stream_id)

    # it reattached where it had stopped, not from the start
    assert replays and replays[0].startswith(f"{ui_server.url}/v1/stream/{stream_id}?from=")
    offset = int(replays[0].rsplit("=", 1)[1])
    total = lookup(ui_server.url, stream_id)[0]["total_bytes"]
    assert before["stream"]["consumed"] <= offset < total

    full = server_text(ui_server.url, stream_id)
    assert stored_message(page, stream_id)["content"] == full
    shown = answer_of(page, stream_id).locator(".content").text_content()
    assert shown == rendered(page, full)
    assert len(full) > len(before["content"])


def test_stop_ends_the_generation(page, ui_server):
    stream_id = send(page, "Count slowly from one to five hundred.")
    wait_for_text(page, stream_id, 20)
    page.click("#stop")
    sync_api.expect(answer_of(page, stream_id)).to_have_attribute("data-state", "stopped")
    text = answer_of(page, stream_id).locator(".content").text_content()
    # DELETE cancels the generation and forgets the id: lookup reports it done or not at all
    deadline = time.monotonic() + 5
    while (infos := lookup(ui_server.url, stream_id)) and not infos[0]["is_done"]:
        assert time.monotonic() < deadline, infos
        time.sleep(0.2)
    while any(m["running"] for m in httpx.get(ui_server.url + "/health").json()["models"].values()):
        assert time.monotonic() < deadline, "the generation still runs after Stop"
        time.sleep(0.2)
    time.sleep(1.5)
    assert answer_of(page, stream_id).locator(".content").text_content() == text
    assert rendered(page, stored_message(page, stream_id)["content"]) == text
    sync_api.expect(page.locator("#send")).to_be_visible()


def test_second_conversation_streams_while_the_first_finishes(page, ui_server):
    first = send(page, "Describe a forest in autumn.")
    wait_for_text(page, first, 20)
    page.click("#new-chat")
    second = send(page, "Describe a desert at night.")
    first_item = page.locator(f'#conversations li[data-id="{first.split(".")[0]}"]')
    sync_api.expect(first_item).to_have_class("generating")  # shown while it runs elsewhere
    grown = len(stored_message(page, first)["content"])
    wait_for_text(page, second, 20)
    assert stored_message(page, first)["stream"]["state"] == "streaming"
    wait_done(page, second)
    page.wait_for_function(
        """(id) => JSON.parse(localStorage.getItem("ferry.conv." + id.split(".")[0]))
                      .messages.at(-1).stream.state === "done" """,
        arg=first,
        timeout=90_000,
    )
    assert len(stored_message(page, first)["content"]) > grown
    first_item.locator(".open").click()
    wait_done(page, first)
    assert stored_message(page, first)["content"] == server_text(ui_server.url, first)
    assert stored_message(page, second)["content"] == server_text(ui_server.url, second)
    sync_api.expect(first_item).not_to_have_class("generating")


def test_markdown_renderer_shows_html_as_text(page):
    nodes = page.evaluate(
        """async () => {
            const { renderMarkdown } = await import("/ui/markdown.js");
            const div = document.createElement("div");
            div.append(renderMarkdown([
                "Hi <script>window.pwned = 1</script> <img src=x onerror='window.pwned=2'>",
                "", "- **one** `<b>`", "- [two](javascript:alert(1))", "",
                "```html", "<script>alert(1)</script>", "```",
            ].join("\\n")));
            document.body.append(div);
            return {
                text: div.textContent, html: div.innerHTML,
                scripts: div.querySelectorAll("script, img, b").length,
                items: [...div.querySelectorAll("li")].map((li) => li.textContent),
                links: div.querySelectorAll("a").length,
                code: div.querySelector("pre code").textContent,
                pwned: window.pwned ?? null,
            };
        }"""
    )
    assert nodes["scripts"] == 0 and nodes["pwned"] is None and nodes["links"] == 0
    assert "<script>window.pwned = 1</script>" in nodes["text"]
    assert "&lt;script&gt;" in nodes["html"]
    assert nodes["items"] == ["one <b>", "[two](javascript:alert(1))"]
    assert nodes["code"] == "<script>alert(1)</script>"


def test_model_output_with_script_tags_is_shown_as_text(page):
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    open_chat(page, page.url.rstrip("/"), max_tokens=80, extra='{"temperature": 0}')
    stream_id = send(page, "Write a minimal HTML page with a script tag that shows an alert.")
    wait_done(page, stream_id)
    content = stored_message(page, stream_id)["content"]
    assert "<script>" in content  # the model (greedy) writes a script tag
    assert page.locator("#messages script").count() == 0
    assert "<script>" in answer_of(page, stream_id).locator(".content").text_content()
    assert dialogs == []


def test_phone_layout_hides_the_sidebar_behind_the_menu(browser, ui_server):
    context = browser.new_context(viewport={"width": 390, "height": 760}, is_mobile=True)
    page = context.new_page()
    page.goto(ui_server.url + "/")
    sync_api.expect(page.locator("#menu")).to_be_visible()
    sync_api.expect(page.locator("#sidebar")).not_to_be_in_viewport()
    page.click("#menu")
    sync_api.expect(page.locator("#sidebar")).to_be_in_viewport()
    page.click("#new-chat")  # choosing a conversation closes the drawer
    sync_api.expect(page.locator("#sidebar")).not_to_be_in_viewport()
    sync_api.expect(page.locator("#input")).to_be_in_viewport()
    context.close()


def test_conversations_are_kept_renamed_and_deleted(page):
    page.click("#new-chat")
    page.click("#new-chat")
    items = page.locator("#conversations li")
    assert items.count() == 3
    first_id = items.nth(0).get_attribute("data-id")
    page.once("dialog", lambda d: d.accept("Renamed chat"))
    items.nth(0).locator(".rename").click()
    sync_api.expect(page.locator("#title")).to_have_text("Renamed chat")
    page.reload()
    sync_api.expect(page.locator(f'#conversations li[data-id="{first_id}"] .open')).to_have_text(
        "Renamed chat"
    )
    page.once("dialog", lambda d: d.accept())
    page.locator(f'#conversations li[data-id="{first_id}"] .delete').click()
    sync_api.expect(items).to_have_count(2)
    assert page.evaluate(f"localStorage.getItem('ferry.conv.{first_id}')") is None


def test_api_key_server_asks_for_the_key_then_works(browser):
    server = FerryServer("--api-key", "k", "--parallel", "2")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.set_default_timeout(30_000)
        auth: list[str | None] = []
        page.on(
            "request", lambda r: "/v1/" in r.url and auth.append(r.headers.get("authorization"))
        )
        page.goto(server.url + "/")
        sync_api.expect(page.locator("#key-dialog")).to_be_visible()
        page.fill("#key-input", "wrong")
        page.press("#key-input", "Enter")
        sync_api.expect(page.locator("#key-error")).to_have_text("The server refused this key.")
        page.fill("#key-input", "k")
        page.press("#key-input", "Enter")
        sync_api.expect(page.locator("#key-dialog")).to_be_hidden()
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        page.reload()  # the key is remembered
        page.wait_for_function("document.querySelector('#model').options.length > 0")
        sync_api.expect(page.locator("#key-dialog")).to_be_hidden()
        page.click("#settings-button")
        page.fill("#settings-form [name=maxTokens]", "20")
        page.click("#save-settings")
        stream_id = send(page, "Hello!")
        wait_done(page, stream_id)
        key = {"Authorization": "Bearer k"}
        assert stored_message(page, stream_id)["content"] == server_text(server.url, stream_id, key)
        assert auth[:2] == [None, "Bearer wrong"] and set(auth[2:]) == {"Bearer k"}
    finally:
        context.close()
        server.stop()


def test_sse_parser_counts_bytes_across_split_chunks(page):
    """Split a stream at every byte (inside events and inside multi-byte characters): the parser
    yields the same events, each starting at its id, and its byte count is always exact."""
    result = page.evaluate(
        """async () => {
            const { SseParser } = await import("/ui/sse.js");
            const body = new TextEncoder().encode(
                'id: 0\\ndata: {"t":"héllo ✓"}\\n\\n: ping\\n\\nid: 40\\ndata: a\\ndata: b\\n\\n' +
                'id: 64\\r\\ndata: [DONE]\\r\\n\\r\\n');
            const whole = new SseParser().feed(body);
            const bad = [];
            for (let cut = 1; cut < body.length; cut++) {
                const p = new SseParser();
                const evs = [...p.feed(body.subarray(0, cut))];
                // a reload here: a new parser from the saved (consumed, pending)
                const q = new SseParser(p.consumed, p.pending);
                evs.push(...q.feed(body.subarray(cut)));
                if (p.consumed !== cut || q.consumed !== body.length
                    || JSON.stringify(evs) !== JSON.stringify(whole)) bad.push(cut);
            }
            return { whole, bad };
        }"""
    )
    assert result["bad"] == []
    assert [(e["id"], e["start"], e["data"]) for e in result["whole"]] == [
        ("0", 0, '{"t":"héllo ✓"}'),
        ("40", 40, "a\nb"),
        ("64", 64, "[DONE]"),
    ]
