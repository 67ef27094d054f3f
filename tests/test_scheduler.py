"""Scheduler logic with a fake runner: no llama.cpp involved."""

from __future__ import annotations

from ferry.engine.scheduler import Scheduler
from ferry.engine.sequence import SamplingParams, Sequence, Status


def seq(prompt: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(prompt, SamplingParams(), max_tokens, lambda o: None)


def fake_run(sched: Scheduler, plan, next_token: int = 7) -> None:
    """What the engine does after a decode: advance, sample for rows with logits."""
    for w in plan.work:
        w.seq.num_computed += len(w.tokens)
        if w.logits:
            w.seq.generated.append(next_token)


def test_every_running_sequence_advances_in_one_step():
    s = Scheduler(n_slots=4, max_batch_tokens=512, prefill_chunk=64)
    seqs = [seq([1, 2, 3]) for _ in range(4)]
    for q in seqs:
        s.add(q)
    plan = s.schedule()
    assert {w.seq.id for w in plan.work} == {q.id for q in seqs}
    fake_run(s, plan)
    plan = s.schedule()
    assert all(len(w.tokens) == 1 and w.logits for w in plan.work)
    assert len(plan.work) == 4


def test_no_more_sequences_run_than_slots():
    s = Scheduler(n_slots=2, max_batch_tokens=512, prefill_chunk=64)
    for _ in range(5):
        s.add(seq([1, 2]))
    s.schedule()
    assert s.num_running == 2 and s.num_waiting == 3


def one_decoding(s: Scheduler) -> Sequence:
    """A sequence admitted to ``s`` and past its prompt: it decodes from the next step on."""
    a = seq([1, 2], max_tokens=1000)
    s.add(a)
    fake_run(s, s.schedule())
    return a


def prefill_sizes(s: Scheduler, a: Sequence, b: Sequence, after=lambda steps: None) -> list[int]:
    """Tokens of ``b``'s prompt computed each step until it is done (``after(steps so far)`` runs
    after each); the decoding ``a`` must advance every step."""
    sizes: list[int] = []
    while b.in_prefill:
        plan = s.schedule()
        assert any(w.seq is a for w in plan.work), "the running stream must advance every step"
        sizes.append(sum(len(w.tokens) for w in plan.work if w.seq is b))
        fake_run(s, plan)
        after(len(sizes))
    return sizes


def test_long_prompt_is_prefilled_in_chunks_while_others_decode():
    s = Scheduler(n_slots=2, max_batch_tokens=512, prefill_chunk=64)
    a = one_decoding(s)
    b = seq(list(range(2000)))
    s.add(b)
    # 65-token chunks (64 in a batch of their own, one beside the decodes); the 50-token tail
    # rides with the last one (a short chunk costs more a token)
    assert prefill_sizes(s, a, b) == [65] * 29 + [115]


def test_while_a_sequence_waits_for_a_slot_prompts_are_prefilled_in_backlog_chunks():
    s = Scheduler(n_slots=2, max_batch_tokens=512, prefill_chunk=64, backlog_chunk=256)
    a = one_decoding(s)
    b, c = seq(list(range(2000))), seq([5, 6])
    s.add(b)

    def backlog(steps: int) -> None:
        if steps == 1:
            s.add(c)  # no slot for c: a backlog
        if steps == 4:
            s.finish(c, "cancelled")  # the backlog is gone: back to --prefill-chunk

    sizes = prefill_sizes(s, a, b, backlog)
    assert sizes[:4] == [65, 257, 257, 257]
    # then 65-token chunks again, the last taking the tail: 2000 - 65 - 3 x 257 = 1164 = 17 x 65 + 59
    assert sizes[4:] == [65] * 16 + [124]


def test_a_prompt_up_to_twice_the_backlog_chunk_is_prefilled_in_one_step_beside_decodes():
    s = Scheduler(n_slots=2, max_batch_tokens=512, prefill_chunk=64, backlog_chunk=256)
    a = one_decoding(s)
    b, c = seq(list(range(370))), seq(list(range(1000, 1400)))
    s.add(b)
    s.add(c)  # the longer prompt waits: a backlog
    plan = s.schedule()
    assert {w.seq.id: len(w.tokens) for w in plan.work} == {a.id: 1, b.id: 370}
    assert c.status is Status.WAITING


def test_while_others_decode_every_prefilling_sequence_computes_at_least_one_token_a_step():
    # the runner puts each item's last token beside the decodes: no running id is missing from
    # that ubatch, so llama.cpp does not cut it at a gap
    s = Scheduler(n_slots=4, max_batch_tokens=512, prefill_chunk=64)
    a = seq([1, 2], max_tokens=100)
    s.add(a)
    fake_run(s, s.schedule())
    b, c, d = seq(list(range(300))), seq(list(range(1000, 1200))), seq(list(range(2000, 2002)))
    for q in (b, c, d):
        s.add(q)
    first = s.schedule()  # admitted fewest tokens first: d, c, b
    assert {w.seq.id: (len(w.tokens), w.logits) for w in first.work} == {
        a.id: (1, True), d.id: (2, True), c.id: (63, False), b.id: (1, False)}
    fake_run(s, first)
    seen: dict[int, list[int]] = {b.id: [], c.id: []}
    while b.in_prefill or c.in_prefill:
        plan = s.schedule()
        assert {w.seq.id for w in plan.work} == {q.id for q in s.running}
        for w in plan.work:
            if w.seq.id in seen and w.seq.in_prefill:
                seen[w.seq.id].append(len(w.tokens))
        fake_run(s, plan)
    # b computes one token a step while c takes the chunks (the last with its tail), then its own
    assert seen[c.id] == [65, 72] and seen[b.id] == [1, 1, 65, 65, 65, 102]


def test_alone_a_long_prompt_uses_the_whole_batch():
    s = Scheduler(n_slots=2, max_batch_tokens=512, prefill_chunk=64)
    b = seq(list(range(2000)))
    s.add(b)
    plan = s.schedule()
    assert plan.num_tokens == 512


def test_cancelled_sequence_leaves_at_next_step_and_frees_its_slot():
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    a, b = seq([1, 2]), seq([3, 4])
    s.add(a)
    s.add(b)
    fake_run(s, s.schedule())
    a.cancelled = True
    plan = s.schedule()
    assert plan.cancelled == [a] and a.status is Status.FINISHED
    assert [w.seq for w in plan.work] == [b]


def test_prompt_extending_a_cached_prefix_skips_it():
    s = Scheduler(n_slots=2, max_batch_tokens=512, prefill_chunk=64)
    a = seq(list(range(100, 120)))
    s.add(a)
    fake_run(s, s.schedule())  # prompt computed, token 7 sampled
    fake_run(s, s.schedule())  # token 7 computed
    s.finish(a, "stop")
    b = seq(list(range(100, 120)) + [7, 9, 10])  # next turn: previous prompt + answer + more
    s.add(b)
    plan = s.schedule()
    assert b.num_cached == 21 and plan.work[0].pos == 21
    assert plan.work[0].tokens == [9, 10]
    assert s.stats.prefix_hits == 1


def test_identical_prompt_recomputes_at_least_its_last_token():
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    a = seq(list(range(20)))
    s.add(a)
    fake_run(s, s.schedule())
    s.finish(a, "stop")
    b = seq(list(range(20)))
    s.add(b)
    plan = s.schedule()
    assert plan.work[0].tokens == [19] and plan.work[0].logits


def test_waiting_past_queue_timeout_expires():
    s = Scheduler(n_slots=1, queue_timeout=5, max_batch_tokens=512, prefill_chunk=64)
    a, b = seq([1]), seq([2])
    s.add(a)
    s.schedule(now=0)
    b.arrival = 0
    s.add(b)
    plan = s.schedule(now=10)
    assert plan.expired == [b] and b.finish_reason == "queue_timeout"


def test_prompt_last_chunk_carries_a_draft_of_the_first_tokens():
    from ferry.engine.ngram import NGramDrafter

    q = seq([5, 6, 7, 8, 9, 5, 6, 7], max_tokens=3)
    q.drafter = NGramDrafter(max_draft=4)
    q.drafter.extend(q.prompt)
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    s.add(q)
    (w,) = s.schedule().work
    assert w.tokens == [*q.prompt, 8, 9] and w.draft == [8, 9] and w.n_logits == 3


def test_draft_is_capped_by_tokens_left_and_batch_budget():
    from ferry.engine.ngram import NGramDrafter

    q = seq([5, 6, 7, 8, 9, 5, 6, 7], max_tokens=2)  # one token may follow the first: 1 draft
    q.drafter = NGramDrafter(max_draft=4)
    q.drafter.extend(q.prompt)
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    s.add(q)
    assert s.schedule().work[0].draft == [8]
    tight = seq([5, 6, 7, 8, 9, 5, 6, 7], max_tokens=9)
    tight.drafter = NGramDrafter(max_draft=4)
    tight.drafter.extend(tight.prompt)
    s = Scheduler(n_slots=1, max_batch_tokens=9, prefill_chunk=64)  # 8 prompt tokens leave room for 1 draft
    s.add(tight)
    assert s.schedule().work[0].draft == [8]


def test_concurrent_prompts_with_a_shared_prefix_compute_it_once():
    s = Scheduler(n_slots=3, min_share=4, max_batch_tokens=512, prefill_chunk=64)
    system = list(range(100, 140))
    a, b, c = seq(system + [1, 2]), seq(system + [3, 4]), seq([9] * 42)
    for q in (a, b, c):
        s.add(q)
    plan = s.schedule()
    assert {w.seq.id for w in plan.work} == {a.id, c.id}  # b waits for a's prefix
    assert b.share_from == (a, 40) and c.share_from is None
    fake_run(s, plan)
    plan = s.schedule()
    assert plan.copies == [(a.slot, b.slot, 40)]
    (wb,) = [w for w in plan.work if w.seq is b]
    assert wb.pos == 40 and wb.tokens == [3, 4] and b.num_cached == 40
    assert s.stats.prefix_hits == 1 and s.stats.prefix_cached_tokens == 40


def test_a_source_that_leaves_first_means_a_normal_prefill():
    s = Scheduler(n_slots=2, min_share=4, max_batch_tokens=512, prefill_chunk=64)
    a, b = seq(list(range(30)) + [1]), seq(list(range(30)) + [2])
    s.add(a)
    s.add(b)
    s.schedule()
    a.cancelled = True
    plan = s.schedule()
    (wb,) = plan.work
    assert wb.seq is b and wb.pos == 0 and not plan.copies and b.share_from is None


def test_short_shared_prefixes_are_just_prefilled():
    s = Scheduler(n_slots=2, min_share=16, max_batch_tokens=512, prefill_chunk=64)
    a, b = seq(list(range(10)) + [1]), seq(list(range(10)) + [2])
    s.add(a)
    s.add(b)
    assert len(s.schedule().work) == 2 and b.share_from is None


def test_a_refused_partial_removal_prefills_the_prompt_from_zero():
    # e.g. sliding-window cells overwritten
    s = Scheduler(n_slots=1, kv_keep=lambda slot, n: 0, max_batch_tokens=512, prefill_chunk=64)
    a = seq(list(range(100, 120)))
    s.add(a)
    fake_run(s, s.schedule())
    s.finish(a, "stop")
    b = seq(list(range(100, 120)) + [7, 9, 10])
    s.add(b)
    plan = s.schedule()
    assert b.num_cached == 0
    assert plan.work[0].pos == 0 and plan.work[0].tokens == b.prompt and plan.work[0].logits
    assert s.stats.prefix_hits == 0


def test_a_refused_share_means_a_normal_prefill():
    s = Scheduler(n_slots=2, min_share=4, kv_keep=lambda slot, n: 0, max_batch_tokens=512,
                  prefill_chunk=64)
    system = list(range(100, 140))
    a, b = seq(system + [1, 2]), seq(system + [3, 4])
    s.add(a)
    s.add(b)
    fake_run(s, s.schedule())  # b waits for a's prefix
    plan = s.schedule()
    (wb,) = [w for w in plan.work if w.seq is b]
    assert not plan.copies and wb.pos == 0 and wb.tokens == b.prompt and b.num_cached == 0


def test_kv_lost_while_generating_recomputes_every_token_then_decodes_on():
    s = Scheduler(n_slots=1, max_batch_tokens=512, prefill_chunk=64)
    a = seq([1, 2, 3], max_tokens=10)
    s.add(a)
    fake_run(s, s.schedule(), next_token=7)  # prompt; 7 sampled
    fake_run(s, s.schedule(), next_token=8)  # 7 computed; 8 sampled
    assert a.all_tokens == [1, 2, 3, 7, 8] and a.num_computed == 4
    s.kv_lost(a, 0)  # e.g. a trim after rejected drafts that the memory refused
    plan = s.schedule()
    (w,) = plan.work
    assert w.pos == 0 and w.tokens == [1, 2, 3, 7, 8] and w.logits  # logits: the next token
    fake_run(s, plan, next_token=9)
    (w,) = s.schedule().work
    assert w.pos == 5 and w.tokens == [9] and w.logits and not a.in_prefill
