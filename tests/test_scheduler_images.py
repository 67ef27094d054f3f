"""Scheduler logic for prompts with image spans (fake runner, no llama.cpp)."""

from __future__ import annotations

import numpy as np
from test_scheduler import fake_run, seq

from ferry.engine.scheduler import Scheduler
from ferry.engine.sequence import ImageSpan, SamplingParams, Sequence


def image_seq(prompt: list[int], start: int, n: int) -> Sequence:
    span = ImageSpan(start, np.zeros((n, 4), np.float32))
    return Sequence(prompt, SamplingParams(), 4, lambda o: None, images=(span,))


def test_an_image_is_one_work_item_of_its_own_and_never_split():
    s = Scheduler(n_slots=2, max_batch_tokens=64, prefill_chunk=8)
    q = image_seq([1, 2, 3] + [0] * 20 + [4, 5], start=3, n=20)
    s.add(q)
    items = []
    while q.in_prefill:
        plan = s.schedule()
        items += [(w.pos, len(w.tokens), w.image is not None) for w in plan.work]
        fake_run(s, plan)
    assert items == [(0, 3, False), (3, 20, True), (23, 2, False)]


def test_an_image_larger_than_the_prefill_chunk_still_progresses_beside_decoding_streams():
    s = Scheduler(n_slots=2, max_batch_tokens=16, prefill_chunk=4)
    other = seq([1, 2], max_tokens=100)
    s.add(other)
    fake_run(s, s.schedule())  # `other` decodes from now on
    q = image_seq([9] + [0] * 30 + [5], start=1, n=30)  # 30 > the step's whole budget
    s.add(q)
    for _ in range(4):
        fake_run(s, s.schedule())
    assert not q.in_prefill


def test_prefix_reuse_stops_at_the_first_image():
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    text = list(range(100, 120))
    a = image_seq(text + [0, 0, 4], start=20, n=2)
    s.add(a)
    fake_run(s, s.schedule())
    s.finish(a, "stop")
    (entry,) = s.cache.entries.values()
    assert entry.tokens == text
    b = image_seq(text + [0, 0, 4], start=20, n=2)  # same placeholders, maybe another image
    s.add(b)
    s.schedule()
    assert b.num_cached == 20


def test_a_text_prompt_never_reuses_placeholder_positions_of_an_image_prompt():
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    text = list(range(100, 120))
    a = image_seq(text + [0, 0, 2], start=20, n=2)
    s.add(a)
    fake_run(s, s.schedule())
    s.finish(a, "stop")
    b = seq(text + [0, 0, 2, 3])
    s.add(b)
    s.schedule()
    assert b.num_cached == 20
