"""When the engine may take the argmax itself instead of running llama.cpp's sampler chain."""

from __future__ import annotations

from ferry.engine.sampling import argmax_is_exact
from ferry.engine.sequence import SamplingParams


def test_plain_greedy_and_negative_biases_take_the_argmax_shortcut():
    assert argmax_is_exact(SamplingParams(temperature=0))
    assert argmax_is_exact(SamplingParams(temperature=0, logit_bias={2: float("-inf"), 5: -3}))


def test_anything_that_reshapes_the_distribution_uses_the_chain():
    for p in (SamplingParams(temperature=0.7), SamplingParams(temperature=0, repeat_penalty=1.1),
              SamplingParams(temperature=0, presence_penalty=0.5),
              SamplingParams(temperature=0, frequency_penalty=0.5),
              SamplingParams(temperature=0, logit_bias={3: 1.0}),
              SamplingParams(temperature=0, constraint=lambda: None)):
        assert not argmax_is_exact(p)
