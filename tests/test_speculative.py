"""Prompt-lookup speculation keeps greedy output: with ``--speculative ngram`` the text equals the
text without it, and it drafts (and accepts) tokens on input-copying tasks.

Verification decodes several tokens of one sequence in one batch; llama.cpp's kernels are not
batch-invariant (a batch of 5 rows rounds differently from a batch of 1, and a prefix-cache hit
changes the shapes too), so a greedy near-tie can flip, as it can under continuous batching (see
test_concurrency). Measured: identical on the copying prompts; free writing agrees in most runs.
The test asserts identity where the argmax is not a near-tie (the copying tasks) and agreement on
the opening of every answer.

Sampled requests speculate too: drafts are verified by the request's own seeded sampler, one draw
per emitted token in order, so a seeded answer is the same text with and without speculation, and
the first token's distribution, drafted on at the end of the prompt, passes a chi-square test
against the model's own probabilities.

``--speculative draft`` here uses the bundled GGUF as its own draft model (so drafts are mostly
accepted and exactness is what is shown; a smaller draft is what makes it faster)."""

from __future__ import annotations

import asyncio
import json
import math

import httpx
import openai
import pytest
from conftest import FerryServer
from scipy.stats import chisquare

from ferry.engine.model import bundled_model_path

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


@pytest.fixture(scope="module")
def draft_server():
    s = FerryServer("--speculative", "draft", "--draft-model", bundled_model_path(),
                    "--parallel", "4")
    yield s
    s.stop()


def greedy(url: str, prompt: str, **extra) -> str:
    r = httpx.post(url + "/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": prompt}], "temperature": 0, "max_tokens": 96,
        **extra})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["message"]["content"]


def assert_same_greedy(plain_url: str, spec_url: str) -> int:
    """Identical text on the copying prompts, the same opening on the others (near-ties: see the
    module docstring); returns how many answers were identical."""
    same = 0
    for i, prompt in enumerate(PROMPTS):
        plain = greedy(plain_url, prompt)
        spec = greedy(spec_url, prompt)
        assert spec[:30] == plain[:30]
        if i < 2:  # copying tasks
            assert spec == plain
        same += spec == plain
    return same


def speculation(url: str) -> dict:
    stats = httpx.get(url + "/health").json()["models"]
    return next(iter(stats.values()))["speculative"]


def test_greedy_output_is_identical_with_and_without_ngram_speculation(server, spec_server):
    same = assert_same_greedy(server.url, spec_server.url)
    print(f"identical greedy outputs with ngram speculation: {same}/{len(PROMPTS)}")
    for prompt in PROMPTS:  # opting out per request
        assert (greedy(spec_server.url, prompt, speculative=False)[:30]
                == greedy(server.url, prompt)[:30])
    spec = speculation(spec_server.url)
    assert spec["drafted"] > 0 and spec["accepted"] > 0
    print(f"ngram drafted {spec['drafted']} accepted {spec['accepted']}")


def test_streamed_speculative_output_equals_non_streamed(spec_server):
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


def test_greedy_output_is_identical_with_and_without_a_draft_model(server, draft_server):
    before = speculation(draft_server.url)
    assert_same_greedy(server.url, draft_server.url)
    after = speculation(draft_server.url)
    drafted = after["drafted"] - before["drafted"]
    accepted = after["accepted"] - before["accepted"]
    print(f"draft model drafted {drafted} accepted {accepted}")
    assert accepted >= 0.6 * drafted > 0  # its own draft: agrees except past the end and near-ties


@pytest.mark.parametrize("which", ["ngram", "draft"])
def test_seeded_sampled_output_is_the_same_text_with_and_without_speculation(
        which, spec_server, draft_server):
    """Compared with the prompt cached for both (a cold prefill and a cached one round the logits
    differently, which can move a draw from the flat tail of a full-vocabulary distribution)."""
    url = spec_server.url if which == "ngram" else draft_server.url
    drafted = 0
    for prompt in PROMPTS[:2]:
        greedy(url, prompt, max_tokens=1, speculative=False)  # cache the prompt
        for seed in (1, 2, 3):
            body = {"messages": [{"role": "user", "content": prompt}], "temperature": 0.8,
                    "top_p": 0.95, "seed": seed, "max_tokens": 64}
            plain = httpx.post(url + "/v1/chat/completions", timeout=120,
                               json={**body, "speculative": False}).json()
            spec = httpx.post(url + "/v1/chat/completions", timeout=120, json=body).json()
            assert spec["choices"][0]["message"]["content"] == \
                plain["choices"][0]["message"]["content"]
            assert "completion_tokens_details" not in plain["usage"]
            details = spec["usage"].get("completion_tokens_details") or {}
            drafted += (details.get("accepted_prediction_tokens", 0)
                        + details.get("rejected_prediction_tokens", 0))
    assert drafted > 0


def test_usage_reports_accepted_and_rejected_drafts_to_the_strict_client(spec_server):
    c = openai.OpenAI(base_url=spec_server.url + "/v1", api_key="x",
                      _strict_response_validation=True, timeout=120)
    model = c.models.list().data[0].id
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[1]}],
                                  temperature=0, max_tokens=64)
    d = r.usage.completion_tokens_details
    assert d is not None and d.accepted_prediction_tokens > 0
    assert d.rejected_prediction_tokens is not None
    assert d.accepted_prediction_tokens <= r.usage.completion_tokens


# The last 3 tokens (" sat on the") occurred before, followed by " mat": the n-gram drafter
# proposes " mat" as the first token, verified against a temperature-1 draw.
LOOKUP_PROMPT = "The cat sat on the mat. The dog sat on the mat. The bird sat on the"
N_SAMPLES = 400


def test_first_token_distribution_is_preserved_under_speculation(spec_server):
    """Chi-square goodness of fit of 400 seeded first tokens (each request drafted on) against
    the model's own first-token probabilities from a non-speculative logprobs request."""
    url = spec_server.url
    ref = httpx.post(url + "/v1/completions", timeout=60, json={
        "prompt": LOOKUP_PROMPT, "max_tokens": 1, "temperature": 1.0, "logprobs": 5,
        "speculative": False}).json()
    top = ref["choices"][0]["logprobs"]["top_logprobs"][0]  # token -> logprob
    probs = {t: math.exp(lp) for t, lp in top.items()}
    # the drafted token is a plausible one, so both accepting and rejecting are exercised
    assert 0.05 < probs.get(" mat", 0) < 0.95

    async def sample_all() -> list[dict]:
        sem = asyncio.Semaphore(8)
        async with httpx.AsyncClient(timeout=120) as h:
            async def one(seed: int) -> dict:
                async with sem:
                    r = await h.post(url + "/v1/completions", json={
                        "prompt": LOOKUP_PROMPT, "max_tokens": 2, "temperature": 1.0,
                        "seed": seed, "logprobs": 1})
                    assert r.status_code == 200, r.text
                    return r.json()
            return await asyncio.gather(*(one(seed) for seed in range(N_SAMPLES)))

    results = asyncio.run(sample_all())
    firsts = [r["choices"][0]["logprobs"]["tokens"][0] for r in results]
    drafted = [r["usage"].get("completion_tokens_details") for r in results]
    assert all(d and d["accepted_prediction_tokens"] + d["rejected_prediction_tokens"] >= 1
               for d in drafted), "every request must have drafted its first token"
    accepted = sum(d["accepted_prediction_tokens"] > 0 for d in drafted)
    assert accepted == firsts.count(" mat")  # a draft is accepted exactly when the draw is " mat"
    bins = [t for t, p in probs.items() if p * N_SAMPLES >= 5]
    observed = [firsts.count(t) for t in bins] + [sum(t not in bins for t in firsts)]
    expected = [probs[t] * N_SAMPLES for t in bins]
    expected.append(N_SAMPLES - sum(expected))
    stat, pvalue = chisquare(observed, expected)
    print(f"first tokens {dict(zip([*bins, 'other'], observed))}, expected "
          f"{[round(e, 1) for e in expected]}, chi2 {stat:.2f}, p {pvalue:.3f}")
    assert pvalue > 0.001


def test_draft_model_with_another_vocabulary_is_refused():
    from ferry.embeddings import bundled_model_dir
    from ferry.embeddings.gguf_cache import cached_gguf
    from ferry.engine.draft import DraftModel, DraftModelMismatch
    from ferry.engine.model import Model
    from ferry.engine.runner import RunnerConfig

    target = Model(bundled_model_path())
    other = Model(cached_gguf(bundled_model_dir()))  # MiniLM: a BERT vocabulary
    with pytest.raises(DraftModelMismatch, match="vocabulary"):
        DraftModel(other, target, RunnerConfig(512, 1, 1, 512))
