"""ferry bench: statistics, and the client driven end to end against real servers.

The always-on end-to-end tests use a tiny real SSE server (Starlette + sse-starlette on uvicorn, on a
free port) that streams OpenAI-format chunks at a known pace, so measured numbers can be checked;
it records every request body and the text it streamed back, so the prompts and conversation
histories the bench sends can be checked too.
The llama-server tests run only where the peer binary has been built.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ferry.bench.cli import DEFAULT_PROMPT, main
from ferry.bench.peers import (
    ServerSettings,
    cached_llama_server,
    default_gguf,
    free_port,
    managed_server,
)
from ferry.bench.report import TURN_COLUMNS, Row, ratios, table, ttft_ratios
from ferry.bench.stats import LevelSummary, RequestResult, percentile, summarize, tokens_per_second

TOKEN_DELAY_S = 0.02  # the tiny server's pace between content chunks
EOS_AFTER = 3  # tokens the tiny server emits when ignore_eos is not set
FOLLOW_UP_DELAY_S = 0.15  # the tiny chat server's extra wait before a follow-up turn's first token


# --- statistics -----------------------------------------------------------------------------------


def test_percentile_interpolates_linearly_between_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([float(i) for i in range(101)], 99) == pytest.approx(99.0)
    assert percentile([1.0, 10.0], 99) == pytest.approx(9.91)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match="percentile must be in"):
        percentile([1.0], 101)


def test_tokens_per_second_divides_total_tokens_by_wall_time() -> None:
    assert tokens_per_second(256, 2.0) == 128.0
    assert tokens_per_second(10, 0.0) == 0.0


def test_summary_pools_gaps_and_leaves_failed_requests_out() -> None:
    results = [
        RequestResult(ttft_s=0.1, gaps_s=[0.01, 0.03], output_tokens=3, e2e_s=0.14),
        RequestResult(ttft_s=0.3, gaps_s=[0.02], output_tokens=2, e2e_s=0.32),
        RequestResult(error="HTTP 500: boom"),
    ]
    s = summarize(results, concurrency=2, wall_s=0.5, max_tokens=3)
    assert (s.requests, s.errors, s.short) == (3, 1, 1)
    assert s.output_tokens == 5 and s.output_tok_s == pytest.approx(10.0)
    assert s.requests_s == pytest.approx(4.0)  # successful requests only
    assert s.itl_p50_s == pytest.approx(0.02)  # median of the pooled gaps 0.01, 0.02, 0.03
    assert s.ttft_p50_s == pytest.approx(0.2)
    assert s.first_error == "HTTP 500: boom"


def _summary(concurrency: int, tok_s: float, ttft_s: float | None = None) -> LevelSummary:
    return LevelSummary(concurrency, 1, 0, 0, 1.0, int(tok_s), tok_s, 1.0, ttft_s,
                        *([None] * 4), None)


def test_ratios_compare_each_target_with_the_first_at_the_same_level() -> None:
    rows = [
        Row("a", "u", _summary(1, 100.0)), Row("b", "u", _summary(1, 50.0)),
        Row("a", "u", _summary(8, 200.0)), Row("b", "u", _summary(8, 300.0)),
    ]  # fmt: skip
    assert ratios(rows) == [1.0, 0.5, 1.0, 1.5]
    assert "1.50" in table(rows)


def test_with_rounds_ratios_are_taken_within_each_round_and_summarised_by_median() -> None:
    rows = [
        Row("a", "u", _summary(8, 100.0), 0), Row("b", "u", _summary(8, 110.0), 0),
        Row("b", "u", _summary(8, 40.0), 1), Row("a", "u", _summary(8, 50.0), 1),  # slower box
        Row("a", "u", _summary(8, 100.0), 2), Row("b", "u", _summary(8, 90.0), 2),
    ]  # fmt: skip
    assert ratios(rows) == pytest.approx([1.0, 1.1, 0.8, 1.0, 1.0, 0.9])
    assert "c=8   b                0.900  [1.10, 0.80, 0.90]" in table(rows)


def test_with_rounds_ttft_speed_is_the_first_targets_ttft_over_each_targets_in_its_round() -> None:
    rows = [
        Row("a", "u", _summary(1, 1.0, 8.0), 0), Row("b", "u", _summary(1, 1.0, 10.0), 0),
        Row("b", "u", _summary(1, 1.0, 5.0), 1), Row("a", "u", _summary(1, 1.0, 6.0), 1),
        Row("a", "u", _summary(1, 1.0, 9.0), 2), Row("b", "u", _summary(1, 1.0, None), 2),
    ]  # fmt: skip
    speeds = ttft_ratios(rows)
    assert speeds[:5] == pytest.approx([1.0, 0.8, 1.2, 1.0, 1.0]) and speeds[5] is None
    assert "c=1   b                1.000  [0.80, 1.20]" in table(rows).split("TTFT p50 speed")[1]


def test_rounds_must_be_a_positive_integer(capsys) -> None:
    from ferry.bench.cli import build_parser

    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--url", "http://x", "--rounds", bad])
        assert "--rounds" in capsys.readouterr().err
    assert build_parser().parse_args(["--url", "http://x", "--rounds", "3"]).rounds == 3


# --- a tiny real OpenAI-format SSE server ----------------------------------------------------------


class TinyStats:
    """What the tiny server saw: request bodies in arrival order and the text it streamed back."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[str] = []  # answers[k]: the content streamed for bodies[k]

    def record(self, body: dict[str, Any], n: int) -> list[str]:
        """Remember ``body``; return the ``n`` text chunks to stream, unique to this request."""
        k = len(self.bodies)
        pieces = [f"r{k}.{i} " for i in range(n)]
        self.bodies.append(body)
        self.answers.append("".join(pieces))
        return pieces


def _tiny_app() -> Starlette:
    stats = TinyStats()

    async def completions(request: Request) -> Response:
        body = await request.json()
        endpoint = "chat" if request.url.path.endswith("/chat/completions") else "completions"
        n = body["max_tokens"] if body.get("ignore_eos") else min(EOS_AFTER, body["max_tokens"])
        pieces = stats.record(body, n)
        if body.get("model") == "broken":
            return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, 500)

        def chunk(text: str | None, finish: str | None = None) -> str:
            if endpoint == "chat":
                choice: dict[str, Any] = {"index": 0, "delta": {"content": text}}
            else:
                choice = {"index": 0, "text": text or ""}
            return json.dumps({"object": "chunk", "choices": [{**choice, "finish_reason": finish}]})

        async def events() -> AsyncIterator[str]:
            stats.requests += 1
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                if body["model"] == "garbage":
                    yield "not json"
                if endpoint == "chat":  # a role-only first chunk, as OpenAI sends
                    yield json.dumps({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                if len(body.get("messages", [])) > 1:  # a follow-up turn: slower first token
                    await asyncio.sleep(FOLLOW_UP_DELAY_S)
                for i, piece in enumerate(pieces):
                    await asyncio.sleep(TOKEN_DELAY_S)
                    yield chunk(piece, "length" if i == n - 1 else None)
                if body["model"] == "cut":
                    return
                if body["model"] != "no-usage" and body["stream_options"]["include_usage"]:
                    yield json.dumps({"choices": [], "usage": {"completion_tokens": n}})
                yield "[DONE]"
            finally:
                stats.in_flight -= 1

        return EventSourceResponse(events())

    async def other_apis(request: Request) -> Response:
        """The Responses API's and Anthropic Messages' event streams, at the same pace."""
        body = await request.json()
        responses = request.url.path.endswith("/responses")
        cap = body["max_output_tokens"] if responses else body["max_tokens"]
        n = cap if body.get("ignore_eos") else min(EOS_AFTER, cap)
        pieces = stats.record(body, n)

        def ev(kind: str, **fields: Any) -> dict[str, str]:
            return {"event": kind, "data": json.dumps({"type": kind, **fields})}

        async def events() -> AsyncIterator[dict[str, str]]:
            stats.requests += 1
            yield ev("response.created" if responses else "message_start")
            for piece in pieces:
                await asyncio.sleep(TOKEN_DELAY_S)
                if responses:
                    yield ev("response.output_text.delta", delta=piece)
                else:
                    yield ev("content_block_delta", delta={"type": "text_delta", "text": piece})
            if responses:
                yield ev("response.incomplete", response={"usage": {"output_tokens": n}})
            else:
                yield ev("message_delta", delta={"stop_reason": "max_tokens"},
                         usage={"output_tokens": n})
                yield ev("message_stop")

        return EventSourceResponse(events())

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "tiny", "object": "model"}]})

    app = Starlette(routes=[
        Route("/v1/chat/completions", completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", other_apis, methods=["POST"]),
        Route("/v1/messages", other_apis, methods=["POST"]),
        Route("/v1/models", models),
    ])  # fmt: skip
    app.state.stats = stats
    return app


@pytest.fixture
def tiny_server() -> Iterator[tuple[str, TinyStats]]:
    app = _tiny_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "tiny server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", app.state.stats
    server.should_exit = True
    thread.join(10)


def _run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[dict[str, Any]]]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)["results"]


# --- end to end against the tiny server -------------------------------------------------------------


def test_bench_measures_tokens_and_latencies_of_streamed_chat(tiny_server, capsys) -> None:
    url, _ = tiny_server
    code, results = _run_json(
        capsys, "--url", url, "--concurrency", "1", "--requests", "2", "--max-tokens", "5"
    )
    assert code == 0
    [r] = results
    assert (r["requests"], r["errors"], r["short"], r["output_tokens"]) == (2, 0, 0, 10)
    assert r["ttft_p50_s"] >= TOKEN_DELAY_S * 0.8
    assert TOKEN_DELAY_S * 0.8 <= r["itl_p50_s"] < TOKEN_DELAY_S * 5
    assert r["output_tok_s"] == pytest.approx(r["output_tokens"] / r["wall_s"])
    assert r["output_tok_s"] < 1 / TOKEN_DELAY_S  # one stream at a time cannot beat the pace


def test_completions_without_usage_counts_content_chunks(tiny_server, capsys) -> None:
    url, _ = tiny_server
    code, [r] = _run_json(
        capsys, "--url", f"{url}/v1", "--endpoint", "completions", "--model", "no-usage",
        "--concurrency", "1", "--requests", "2", "--max-tokens", "4",
    )  # fmt: skip
    assert code == 0 and r["output_tokens"] == 8 and r["errors"] == 0


def test_each_endpoint_is_measured_through_its_own_api(tiny_server, capsys) -> None:
    url, stats = tiny_server
    code, results = _run_json(
        capsys, "--url", url, "--endpoint", "chat,responses,messages", "--concurrency", "1",
        "--requests", "2", "--max-tokens", "4", "--warmup", "0",
    )  # fmt: skip
    assert code == 0 and stats.requests == 6
    assert [r["target"] for r in results] == [f"{url} {e}" for e in ("chat", "responses",
                                                                     "messages")]
    for r in results:
        assert (r["errors"], r["output_tokens"], r["short"]) == (0, 8, 0), r
        assert r["ttft_p50_s"] >= TOKEN_DELAY_S * 0.8


def test_endpoint_names_are_checked(capsys) -> None:
    from ferry.bench.cli import build_parser

    for bad in ("", "chat,chat", "chat,graphql"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--url", "http://x", "--endpoint", bad])
        assert "--endpoint" in capsys.readouterr().err


def test_concurrency_bounds_requests_in_flight(tiny_server, capsys) -> None:
    url, stats = tiny_server
    code, results = _run_json(
        capsys, "--url", url, "--concurrency", "1,3", "--requests", "6", "--max-tokens", "3",
        "--warmup", "0",
    )  # fmt: skip
    assert code == 0
    assert [r["concurrency"] for r in results] == [1, 3]
    assert stats.requests == 12 and stats.max_in_flight == 3
    assert results[1]["output_tok_s"] > results[0]["output_tok_s"]


def test_ignore_eos_is_sent_by_default_and_can_be_turned_off(tiny_server, capsys) -> None:
    url, _ = tiny_server
    args = ["--url", url, "--concurrency", "1", "--requests", "2", "--max-tokens", "6"]
    _, [on] = _run_json(capsys, *args)
    _, [off] = _run_json(capsys, *args, "--no-ignore-eos")
    assert (on["short"], on["output_tokens"]) == (0, 12)
    assert (off["short"], off["output_tokens"]) == (2, 2 * EOS_AFTER)


@pytest.mark.parametrize(
    ("model", "error"),
    [("broken", "HTTP 500"), ("cut", "stream ended without [DONE]"), ("garbage", "JSONDecode")],
)
def test_failed_requests_are_counted_and_exit_status_is_one(
    tiny_server, capsys, model: str, error: str
) -> None:
    url, _ = tiny_server
    code, [r] = _run_json(
        capsys, "--url", url, "--model", model, "--concurrency", "1", "--requests", "2",
        "--max-tokens", "3", "--warmup", "0",
    )  # fmt: skip
    assert code == 1
    assert r["errors"] == 2 and r["output_tokens"] == 0 and error in r["first_error"]


def test_a_request_slower_than_the_timeout_is_an_error(tiny_server, capsys) -> None:
    url, _ = tiny_server
    code, [r] = _run_json(
        capsys, "--url", url, "--concurrency", "2", "--requests", "2", "--max-tokens", "50",
        "--timeout", "0.2", "--warmup", "0",
    )  # fmt: skip
    assert code == 1
    assert r["errors"] == 2 and r["first_error"] == "timed out after 0.2 s"
    assert r["wall_s"] < 2


def test_table_prints_each_target_and_its_ratio_to_the_first(tiny_server, capsys) -> None:
    url, _ = tiny_server
    code = main([
        "--url", url, "--url", f"{url}/", "--concurrency", "1,2", "--requests", "2",
        "--max-tokens", "3",
    ])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    rows = [line.split() for line in lines if line.startswith("http")]
    assert [(r[0], r[1]) for r in rows] == [
        (url, "1"),
        (f"{url}/", "1"),
        (url, "2"),
        (f"{url}/", "2"),
    ]
    assert rows[0][6] == "1.00" and rows[2][6] == "1.00"  # x first


def test_a_peer_that_exits_at_start_is_reported_with_status_two(tmp_path: Path, capsys) -> None:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"")
    code = main(["--vs", "llama-server", "--llama-server", "/bin/false", "--gguf", str(gguf),
                 "--concurrency", "1", "--requests", "1"])  # fmt: skip
    assert code == 2
    assert "server exited with 1" in capsys.readouterr().err


# --- scenarios: distinct prompts, multi-turn conversations --------------------------------------


def _prompt(body: dict[str, Any]) -> str:
    return body["messages"][0]["content"] if "messages" in body else body["prompt"]


def test_lead_words_differ_from_the_first_word_for_every_request_of_a_level() -> None:
    from ferry.bench.words import WORDS, lead_words

    firsts = [lead_words(i).split()[0].lower() for i in range(len(WORDS))]
    assert len(set(firsts)) == len(WORDS)  # a level of up to len(WORDS) requests: all differ
    assert len({lead_words(i) for i in range(len(WORDS) ** 2 + 5)}) == len(WORDS) ** 2 + 5


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses", "messages"])
def test_distinct_prompts_start_with_their_own_words_on_every_api(endpoint: str) -> None:
    from ferry.bench.client import RequestSpec

    spec = RequestSpec(endpoint, "m", "Tell a story.", 8, True, None, 10.0, distinct=True)
    prompts = []
    for i in range(40):
        body = spec.payload(i)
        prompt = body.get("input") or _prompt(body)
        assert prompt.endswith(". Tell a story.")
        prompts.append(prompt)
    assert len({p.split()[0] for p in prompts}) == 40
    same = dataclasses.replace(spec, distinct=False)
    assert {json.dumps(same.payload(i)) for i in range(3)} == {json.dumps(same.payload(0))}


def test_distinct_prompts_share_no_first_word_within_a_run(tiny_server, capsys) -> None:
    url, stats = tiny_server
    args = ["--url", url, "--concurrency", "2", "--requests", "6", "--max-tokens", "2"]
    code, [r] = _run_json(capsys, *args, "--distinct-prompts", "--warmup", "2")
    assert code == 0 and r["requests"] == 6 and r["errors"] == 0
    prompts = [_prompt(b) for b in stats.bodies]
    assert len(prompts) == 8  # the warm-up requests too: they must warm no measured prompt
    assert len({p.split()[0] for p in prompts}) == 8
    assert all(p.endswith(DEFAULT_PROMPT) and p != DEFAULT_PROMPT for p in prompts)

    stats.bodies.clear()
    assert _run_json(capsys, *args)[0] == 0
    assert {_prompt(b) for b in stats.bodies} == {DEFAULT_PROMPT}


def _conversations(bodies: list[dict[str, Any]]) -> dict[str, list[int]]:
    """Body indices per conversation (keyed by its opening message), in arrival order."""
    out: dict[str, list[int]] = {}
    for k, body in enumerate(bodies):
        history = body["messages"] if "messages" in body else body["input"]
        out.setdefault(history[0]["content"], []).append(k)
    return out


def _history(body: dict[str, Any]) -> list[dict[str, str]]:
    return body["messages"] if "messages" in body else body["input"]


@pytest.mark.parametrize("endpoint", ["chat", "responses", "messages"])
def test_each_turn_resends_the_history_with_the_answers_streamed_back(
    tiny_server, capsys, endpoint: str
) -> None:
    url, stats = tiny_server
    code, [r] = _run_json(
        capsys, "--url", url, "--endpoint", endpoint, "--conversations", "3", "--turns", "3",
        "--max-tokens", "3", "--warmup", "0",
    )  # fmt: skip
    assert code == 0
    assert (r["concurrency"], r["requests"], r["errors"], r["output_tokens"]) == (3, 9, 0, 27)
    conversations = _conversations(stats.bodies)
    assert len(conversations) == 3 and all(len(ks) == 3 for ks in conversations.values())
    documents = [opening.split("\n\n")[1] for opening in conversations]
    assert len(set(documents)) == 3 and all(len(d.split()) >= 300 for d in documents)
    for ks in conversations.values():
        assert len(_history(stats.bodies[ks[0]])) == 1
        for prev, k in itertools.pairwise(ks):
            before, now = _history(stats.bodies[prev]), _history(stats.bodies[k])
            assert now[:len(before)] == before
            assert now[len(before)] == {"role": "assistant", "content": stats.answers[prev]}
            assert now[len(before) + 1]["role"] == "user" and len(now) == len(before) + 2
            assert now[-1]["content"] != before[-1]["content"]  # a new question


def test_each_round_sends_its_own_documents_and_prompts_to_a_server_that_stays_up(
    tiny_server, capsys
) -> None:
    """With --url the server keeps its cache across rounds: a round that resent the last one's
    documents (or distinct prompts) would measure cache hits, not the load."""
    url, stats = tiny_server
    code, rows = _run_json(capsys, "--url", url, "--conversations", "2", "--turns", "1",
                           "--max-tokens", "2", "--warmup", "0", "--rounds", "2")  # fmt: skip
    assert code == 0 and len(rows) == 2
    assert len(set(_conversations(stats.bodies))) == 4  # 2 conversations x 2 rounds, all new
    stats.bodies.clear()
    code, _ = _run_json(capsys, "--url", url, "--concurrency", "2", "--requests", "3",
                        "--max-tokens", "2", "--distinct-prompts", "--warmup", "1",
                        "--rounds", "2")  # fmt: skip
    assert code == 0
    prompts = [_prompt(b) for b in stats.bodies]
    assert len(prompts) == 8 and len(set(prompts)) == 8  # warm-ups included


def test_conversations_run_at_once_each_turn_after_the_previous(tiny_server, capsys) -> None:
    url, stats = tiny_server
    code, _ = _run_json(capsys, "--url", url, "--conversations", "3", "--turns", "2",
                        "--max-tokens", "3", "--warmup", "0")  # fmt: skip
    assert code == 0 and stats.requests == 6
    assert stats.max_in_flight == 3  # all conversations at once, never more


def test_follow_up_ttft_is_reported_apart_from_first_turn_ttft(tiny_server, capsys) -> None:
    url, _ = tiny_server
    args = ["--url", url, "--conversations", "2", "--turns", "3", "--max-tokens", "2"]
    code, [r] = _run_json(capsys, *args)
    assert code == 0
    # the tiny server delays only follow-up turns' first token, by FOLLOW_UP_DELAY_S
    assert r["follow_ttft_p50_s"] >= FOLLOW_UP_DELAY_S
    assert r["follow_ttft_p50_s"] > r["first_ttft_p50_s"]
    assert r["first_ttft_p99_s"] is not None and r["follow_ttft_p99_s"] is not None

    assert main(args) == 0
    header = capsys.readouterr().out.splitlines()[0]
    for column in TURN_COLUMNS:
        assert column in header


def test_turn_ttfts_come_from_first_turns_and_from_later_turns() -> None:
    results = [
        RequestResult(ttft_s=0.1, output_tokens=1), RequestResult(ttft_s=0.3, output_tokens=1),
        RequestResult(ttft_s=2.0, output_tokens=1, turn=1),
        RequestResult(ttft_s=4.0, output_tokens=1, turn=2),
        RequestResult(error="timed out", turn=3),
    ]  # fmt: skip
    s = summarize(results, concurrency=2, wall_s=1.0, max_tokens=1)
    assert (s.first_ttft_p50_s, s.follow_ttft_p50_s) == pytest.approx((0.2, 3.0))
    assert s.first_ttft_p99_s == pytest.approx(0.298)
    assert s.follow_ttft_p99_s == pytest.approx(3.98)
    lines = table([Row("a", "u", s)]).splitlines()
    assert lines[0].split("  ")[-4:] == [c.rjust(len(c)) for c in TURN_COLUMNS]
    assert lines[2].split()[-4:] == ["200.0", "298.0", "3000.0", "3980.0"]

    single = summarize(results[:2], concurrency=2, wall_s=1.0, max_tokens=1)
    assert single.first_ttft_p50_s is None and single.follow_ttft_p50_s is None
    assert "follow TTFT" not in table([Row("a", "u", single)])
    failed = summarize([results[0], RequestResult(error="x", turn=1)], concurrency=1,
                       wall_s=1.0, max_tokens=1)  # fmt: skip
    assert failed.follow_ttft_p50_s is None and "follow TTFT" in table([Row("a", "u", failed)])


def test_a_conversation_stops_at_its_first_failed_turn(tiny_server, capsys) -> None:
    url, stats = tiny_server
    code, [r] = _run_json(capsys, "--url", url, "--model", "broken", "--conversations", "2",
                          "--turns", "3", "--warmup", "0")  # fmt: skip
    assert code == 1
    assert (r["requests"], r["errors"], len(stats.bodies)) == (2, 2, 2)


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--conversations", "0"], "--conversations"),
        (["--conversations", "abc"], "--conversations"),
        (["--conversations", "2,-1"], "--conversations"),
        (["--conversations", ""], "--conversations"),
        (["--conversations", "2", "--turns", "0"], "--turns"),
        (["--conversations", "2", "--turns", "x"], "--turns"),
        (["--conversations", "2", "--endpoint", "completions"], "--endpoint"),
        (["--conversations", "2", "--distinct-prompts"], "--distinct-prompts"),
        (["--conversations", "2", "--requests", "5"], "--requests"),
        (["--requests", "0"], "--requests"),
        (["--distinct-prompts", "--requests", "-3"], "--requests"),
    ],
)
def test_invalid_scenario_flags_exit_two_naming_the_flag(capsys, argv: list[str], flag: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--url", "http://127.0.0.1:9", *argv])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


# --- the real llama-server peer --------------------------------------------------------------------

LLAMA_SERVER = cached_llama_server()
needs_llama_server = pytest.mark.skipif(
    LLAMA_SERVER is None or not os.access(LLAMA_SERVER, os.X_OK),
    reason=f"peer not built at {LLAMA_SERVER}",
)


def _port_open(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) == 0


@needs_llama_server
def test_llama_server_peer_is_started_measured_and_stopped(capsys) -> None:
    code, [r] = _run_json(
        capsys, "--vs", "llama-server", "--concurrency", "2", "--requests", "2",
        "--max-tokens", "8",
    )  # fmt: skip
    assert code == 0
    assert (r["errors"], r["short"], r["output_tokens"]) == (0, 0, 16)
    assert r["itl_p50_s"] > 0 and r["ttft_p50_s"] > 0
    assert not _port_open(r["url"])


@needs_llama_server
async def test_llama_server_is_stopped_when_the_run_raises(tmp_path: Path) -> None:
    settings = ServerSettings(default_gguf(), 2, 512, 60.0, LLAMA_SERVER)
    with pytest.raises(RuntimeError, match="mid-run"):  # noqa: PT012 -- raised inside the block
        async with managed_server("llama-server", settings, 1, tmp_path) as url:
            assert _port_open(url)
            raise RuntimeError("mid-run")
    assert not _port_open(url)
