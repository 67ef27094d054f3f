"""Sampling parameters have the documented effect, on the real model."""

from __future__ import annotations

MSG = [{"role": "user", "content": "Write a short story about a cat."}]


def chat(client, **kw):
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model="default", messages=MSG, **kw)


def test_n_returns_n_choices_with_their_own_text(client):
    r = chat(client, n=3, temperature=1.0, seed=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) > 1


def test_same_seed_gives_same_text(client):
    a = chat(client, temperature=0.9, seed=42)
    b = chat(client, temperature=0.9, seed=42)
    c = chat(client, temperature=0.9, seed=43)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert c.choices[0].message.content != a.choices[0].message.content


def test_greedy_is_deterministic(client):
    a = chat(client, temperature=0)
    b = chat(client, temperature=0)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_string_is_not_emitted_and_finishes_with_stop(client):
    full = chat(client, temperature=0, max_tokens=40).choices[0].message.content
    words = full.split()
    stop = words[len(words) // 2]
    r = chat(client, temperature=0, max_tokens=40, stop=[stop])
    assert r.choices[0].finish_reason == "stop"
    assert stop not in r.choices[0].message.content
    assert full.startswith(r.choices[0].message.content)
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       chat(client, temperature=0, max_tokens=40, stop=[stop], stream=True)
                       if c.choices)
    assert streamed == r.choices[0].message.content


def test_max_tokens_gives_exact_count_and_length(client):
    r = chat(client, max_tokens=7, temperature=0, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(model="default", messages=MSG, temperature=0,
                                       max_completion_tokens=5,
                                       extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"


def test_logprobs_tokens_join_to_the_content(client):
    r = chat(client, temperature=0, logprobs=True, top_logprobs=3,
             extra_body={"ignore_eos": True}, max_tokens=16)
    lp = r.choices[0].logprobs.content
    assert "".join(t.token for t in lp) == r.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in lp)
    assert all(t.top_logprobs[0].logprob >= t.logprob - 1e-4 for t in lp)  # greedy: chosen = best


def test_penalties_change_the_output(client):
    base = chat(client, temperature=0, max_tokens=48).choices[0].message.content
    for kw in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}):
        assert chat(client, temperature=0, max_tokens=48, **kw).choices[0].message.content != base


def test_logit_bias_changes_the_output(client):
    base = chat(client, temperature=0, max_tokens=8, logprobs=True)
    first = base.choices[0].logprobs.content[0]
    tok_id = client.post("/tokenize", body={"content": first.token}, cast_to=object)
    banned = chat(client, temperature=0, max_tokens=8, logit_bias={str(tok_id["tokens"][0]): -100})
    assert banned.choices[0].message.content != base.choices[0].message.content


def test_banned_greedy_token_gives_the_runner_up(client):
    """The engine's own argmax falls back to llama.cpp's chain when the argmax is a biased token:
    the first token becomes the second-best one of the unbiased distribution."""
    base = chat(client, temperature=0, max_tokens=1, logprobs=True, top_logprobs=2)
    best, second = base.choices[0].logprobs.content[0].top_logprobs[:2]
    tok_id = client.post("/tokenize", body={"content": best.token}, cast_to=object)["tokens"][0]
    banned = chat(client, temperature=0, max_tokens=1, logit_bias={str(tok_id): -100})
    assert banned.choices[0].message.content == second.token


def test_greedy_argmax_shortcut_matches_llama_cpp_greedy_sampler(client):
    # a presence penalty of 1e-9 cannot move a float32 logit, but it sends the request through
    # llama.cpp's sampler chain instead of the engine's numpy argmax
    fast = chat(client, temperature=0, max_tokens=64, logit_bias={"0": -1}).choices[0]
    chain = chat(client, temperature=0, max_tokens=64, presence_penalty=1e-9).choices[0]
    assert fast.message.content == chain.message.content
