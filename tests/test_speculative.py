"""Prompt-lookup speculation keeps greedy output: with ``--speculative ngram`` the text equals the
text without it, and it drafts (and accepts) tokens on input-copying tasks.

Verification decodes several tokens of one sequence in one batch; llama.cpp's kernels are not
batch-invariant (a batch of 5 rows rounds differently from a batch of 1, and a prefix-cache hit
changes the shapes too), so a greedy near-tie can flip, as it can under continuous batching (see
test_concurrency). Measured: identical on the copying prompts; free writing agrees in most runs.
The test asserts identity where the argmax is not a near-tie (the copying tasks) and agreement on
the opening of every answer."""

from __future__ import annotations

import httpx
import pytest

from conftest import FerryServer

PARAGRAPH = ("The river runs through the old town, past the mill and the stone bridge, "
             "where children watch the boats drift slowly toward the sea every summer evening.")
PROMPTS = [
    f"Repeat this paragraph exactly, but replace 'river' with 'canal':\n{PARAGRAPH}",
    f"Copy the text:\n{PARAGRAPH}\n{PARAGRAPH}",
    "List the numbers from 1 to 30 separated by commas.",
    "Write a short poem about winter.",
]


@pytest.fixture(scope="module")
def spec_server():
    s = FerryServer("--speculative", "ngram", "--parallel", "4")
    yield s
    s.stop()


def greedy(url: str, prompt: str, **extra) -> str:
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 96,
        **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def test_greedy_output_is_identical_with_and_without_ngram_speculation(server, spec_server):
    same = 0
    for i, prompt in enumerate(PROMPTS):
        plain = greedy(server.url, prompt)
        spec = greedy(spec_server.url, prompt)
        assert spec[:30] == plain[:30]
        if i < 2:  # copying tasks
            assert spec == plain
        same += spec == plain
        assert greedy(spec_server.url, prompt, speculative=False)[:30] == plain[:30]
    print(f"identical greedy outputs with ngram speculation: {same}/{len(PROMPTS)}")
    stats = httpx.get(spec_server.url + "/health").json()["models"]
    spec = next(iter(stats.values()))["speculative"]
    assert spec["drafted"] > 0 and spec["accepted"] > 0
    print(f"ngram drafted {spec['drafted']} accepted {spec['accepted']}")


def test_streamed_speculative_output_equals_non_streamed(spec_server):
    import json

    want = greedy(spec_server.url, PROMPTS[1])
    with httpx.stream("POST", spec_server.url + "/v1/chat/completions", timeout=120, json={
            "messages": [{"role": "user", "content": PROMPTS[1]}], "temperature": 0,
            "max_tokens": 96, "stream": True}) as r:
        parts = [json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                 for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(parts) == want


def test_speculative_flag_must_be_boolean(spec_server):
    r = httpx.post(spec_server.url + "/v1/chat/completions",
                   json={"messages": [{"role": "user", "content": "x"}], "speculative": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "speculative"
