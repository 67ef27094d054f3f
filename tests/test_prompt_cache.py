"""The prompt cache's pure logic: the prefix index, the tiers, and the scheduler driving them,
against a fake KV that records which tokens (and whose) every sequence id holds."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.engine.cache import namespace
from ferry.engine.cache.index import BLOCK, PrefixIndex, common_prefix
from ferry.engine.cache.store import PromptCache, Tier
from ferry.engine.scheduler import Scheduler
from ferry.engine.sequence import SamplingParams, Sequence, Status

HEADER = 64  # bytes of a fake blob besides its cells


@dataclass
class Blob:
    cells: list[tuple[int, str]]  # (token, namespace of the sequence that computed it)
    bytes_per_cell: int

    def __len__(self) -> int:
        return HEADER + self.bytes_per_cell * len(self.cells)


class FakeKv:
    """Each sequence id's cells in order: (token, namespace that computed it)."""

    bytes_per_cell = 10

    def __init__(self) -> None:
        self.seqs: dict[int, list[tuple[int, str]]] = {}

    def cells(self, seq_id: int) -> list[tuple[int, str]]:
        return self.seqs.setdefault(seq_id, [])

    def trim(self, seq_id: int, keep: int) -> int:
        del self.cells(seq_id)[keep:]
        return min(keep, len(self.cells(seq_id)))

    def copy(self, src: int, dst: int, n: int) -> None:
        assert not self.cells(dst), "copy into a sequence that holds cells"
        self.seqs[dst] = self.cells(src)[:n]

    def save(self, seq_id: int) -> Blob:
        return Blob(list(self.cells(seq_id)), self.bytes_per_cell)

    def restore(self, blob: Blob, seq_id: int) -> bool:
        assert not self.cells(seq_id), "restore into a sequence that holds cells"
        self.seqs[seq_id] = list(blob.cells)
        return True

    def decode(self, seq: Sequence, pos: int, tokens: list[int]) -> None:
        cells = self.cells(seq.slot)
        assert len(cells) == pos, "decode must continue exactly where the sequence's KV ends"
        cells.extend((t, seq.cache_ns) for t in tokens)

    def used(self) -> int:
        return sum(len(c) for c in self.seqs.values())


def toy_model(tokens: list[int]) -> int:
    """The fake model's greedy next token: a function of the whole history."""
    return 1000 + hash(tuple(tokens)) % 97


def step(s: Scheduler, kv: FakeKv) -> None:
    plan = s.schedule()
    for src, dst, n in plan.copies:
        kv.seqs[dst] = kv.cells(src)[:n]
    for w in plan.work:
        kv.decode(w.seq, w.pos, w.tokens)
        w.seq.num_computed = w.pos + len(w.tokens)
        if w.logits:
            w.seq.generated.append(toy_model(w.seq.all_tokens))
            if len(w.seq.generated) >= w.seq.max_tokens:
                s.finish(w.seq, "length")


def check(s: Scheduler, kv: FakeKv) -> None:
    """Every running sequence's KV is exactly its own tokens, computed in its namespace; every
    cache entry holds exactly its tokens; the RAM budget and the pool hold."""
    for q in s.running:
        assert kv.cells(q.slot) == [(t, q.cache_ns) for t in q.all_tokens[:q.num_computed]]
    ram = 0
    for e in s.cache.entries.values():
        held = kv.cells(e.seq_id) if e.tier is Tier.POOL else e.blob.cells
        assert held == [(t, e.ns) for t in e.tokens]
        ram += e.nbytes
    assert ram == s.cache.ram_bytes <= s.cache.ram_budget
    assert kv.used() <= s.pool_cells


def sched(**kw) -> Scheduler:
    return Scheduler(max_batch_tokens=kw.pop("max_batch_tokens", 512),
                     prefill_chunk=kw.pop("prefill_chunk", 64), **kw)


def seq(prompt: list[int], ns: str = "", max_tokens: int = 4) -> Sequence:
    return Sequence(prompt, SamplingParams(), max_tokens, lambda o: None, cache_ns=ns)


def run_one(s: Scheduler, kv: FakeKv, q: Sequence) -> Sequence:
    s.add(q)
    while q.status is not Status.FINISHED:
        step(s, kv)
        check(s, kv)
    return q


# ---- the index -----------------------------------------------------------------------------------


def test_index_finds_the_longest_common_prefix_within_a_namespace():
    ix = PrefixIndex()
    doc = list(range(100))
    ix.add("a", "k1", doc[:40])
    ix.add("b", "k1", doc[:70] + [7] * 10)
    ix.add("c", "k2", doc)
    assert ix.longest("k1", doc) == ("b", 70)
    assert ix.longest("k2", doc[:50]) == ("c", 50)
    assert ix.longest("k3", doc) == (None, 0)
    assert ix.longest("k1", doc[:BLOCK - 1]) == (None, 0)  # shorter than a block: not indexed
    ix.remove("b")
    assert ix.longest("k1", doc) == ("a", 40)
    assert ix.covered_by("k1", doc) == ["a"] and ix.covered_by("k2", doc[:99]) == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(["add", "remove", "touch"]), st.integers(0, 7),
                          st.sampled_from(["x", "y"]),
                          st.lists(st.integers(0, 3), min_size=0, max_size=80)), max_size=40),
       st.lists(st.tuples(st.sampled_from(["x", "y"]), st.lists(st.integers(0, 3), max_size=80)),
                min_size=1, max_size=10))
def test_index_agrees_with_a_brute_force_search(ops, queries):
    ix, ref = PrefixIndex(), {}
    for op, eid, ns, tokens in ops:
        if op == "add" and eid not in ref:
            ix.add(eid, ns, tokens)
            ref[eid] = (ns, tokens)
        elif op == "remove" and eid in ref:
            ix.remove(eid)
            del ref[eid]
        elif op == "touch" and eid in ref:
            ix.touch(eid)
    for ns, prompt in queries:
        best = max((common_prefix(t, prompt) for n, t in ref.values() if n == ns), default=0)
        eid, n = ix.longest(ns, prompt)
        if best < BLOCK:
            assert n == 0 or n == best
        else:
            assert n == best and ref[eid][0] == ns
            assert common_prefix(ref[eid][1], prompt) == n
        for c in ix.covered_by(ns, prompt):
            assert ref[c][0] == ns and prompt[:len(ref[c][1])] == ref[c][1]


def test_namespace_of_a_key_and_salt():
    assert namespace(None, None) == ""
    assert len({namespace("k1", None), namespace("k2", None), namespace("k1", "s"),
                namespace(None, "s"), namespace("k1s", None)}) == 5


# ---- tiers ---------------------------------------------------------------------------------------


def test_pool_entry_moves_to_ram_and_restores_exactly():
    kv = FakeKv()
    cache = PromptCache(kv, ram_budget=10_000, min_restore=BLOCK)
    kv.cells(3).extend((t, "n") for t in range(50))
    assert cache.insert("n", list(range(50)), 3) == []
    assert cache.evict_pool() == [3] and kv.cells(3) == []
    (e,) = cache.entries.values()
    assert e.tier is Tier.RAM and cache.ram_bytes == HEADER + 500
    entry, n = cache.lookup("n", list(range(40)) + [9])
    assert entry is e and n == 40
    assert cache.materialize(entry, n, 5) == (40, [])
    assert kv.cells(5) == [(t, "n") for t in range(40)]
    assert cache.stats.hits["ram"] == 1 and cache.stats.restored_tokens["ram"] == 40


def test_ram_tier_evicts_least_recently_used_within_budget():
    kv = FakeKv()
    cache = PromptCache(kv, ram_budget=2 * (HEADER + 400), min_restore=BLOCK)
    for i in range(3):
        kv.cells(i).extend((100 * i + t, "") for t in range(40))
        cache.insert("", [100 * i + t for t in range(40)], i)
        cache.evict_pool()
    assert cache.ram_bytes <= cache.ram_budget and len(cache.entries) == 2
    assert cache.lookup("", list(range(40)))[0] is None  # the oldest went
    assert cache.stats.evictions == {"pool": 3, "ram": 1}


def test_zero_budget_drops_instead_of_saving():
    kv = FakeKv()
    cache = PromptCache(kv, ram_budget=0)
    kv.cells(0).extend((t, "") for t in range(40))
    cache.insert("", list(range(40)), 0)
    assert cache.evict_pool() == [0] and not cache.entries and cache.ram_bytes == 0


def test_a_newer_entry_covering_an_older_one_replaces_it():
    kv = FakeKv()
    cache = PromptCache(kv, ram_budget=0)
    kv.cells(0).extend((t, "") for t in range(40))
    cache.insert("", list(range(40)), 0)
    kv.cells(1).extend((t, "") for t in range(60))
    assert cache.insert("", list(range(60)), 1) == [0]
    assert [e.seq_id for e in cache.entries.values()] == [1]


# ---- through the scheduler -----------------------------------------------------------------------


def test_a_follow_up_turn_reuses_the_history_from_ram_after_others_pushed_it_out():
    kv = FakeKv()
    s = sched(n_slots=1, kv=kv, n_seq_ids=2, pool_cells=200, ram_budget=100_000,
                  min_restore=BLOCK, headroom=1)
    first = run_one(s, kv, seq(list(range(60))))
    for i in range(3):  # other conversations take the pool
        run_one(s, kv, seq([500 + i] * 100))
    follow = run_one(s, kv, seq(first.all_tokens[:63] + [7, 8, 9]))
    assert follow.num_cached == 63
    assert s.cache.stats.hits["ram"] == 1


def test_another_namespace_gets_no_hit():
    kv = FakeKv()
    s = sched(n_slots=1, kv=kv, n_seq_ids=4, pool_cells=500, headroom=1)
    run_one(s, kv, seq(list(range(60)), ns="alice"))
    assert run_one(s, kv, seq(list(range(60)) + [1], ns="bob")).num_cached == 0
    assert run_one(s, kv, seq(list(range(60)) + [1], ns="alice")).num_cached == 60


def test_concurrent_prompts_share_in_flight_only_within_a_namespace():
    s = sched(n_slots=2, min_share=4)
    system = list(range(100, 140))
    a, b = seq(system + [1], ns="alice"), seq(system + [2], ns="bob")
    s.add(a)
    s.add(b)
    s.schedule()
    assert b.share_from is None


def test_cheap_follow_ups_go_first_but_the_oldest_is_passed_over_a_bounded_number_of_times():
    kv = FakeKv()
    s = sched(n_slots=1, kv=kv, pool_cells=10_000, max_bypass=2, headroom=1)
    base = run_one(s, kv, seq(list(range(200)), max_tokens=1))
    long_first = seq(list(range(1000, 1300)), max_tokens=1)
    s.add(long_first)
    follows = [seq(base.all_tokens[:200] + [i], max_tokens=1) for i in range(5)]
    for q in follows:
        s.add(q)
    order: list[Sequence] = []
    while s.has_work():
        step(s, kv)
        check(s, kv)
        order += [q for q in [long_first, *follows]
                  if q.status is not Status.WAITING and q not in order]
    assert order.index(long_first) == 2  # two cheap ones went first, then it could wait no more


def test_a_long_queue_of_first_turns_does_not_turn_admission_into_arrival_order():
    """Only the oldest waiting sequence counts its bypasses: every first turn queued behind it
    does not reach the bound at once, so cheap follow-ups keep going first (two per first turn
    here) instead of waiting behind every first turn that arrived before them."""
    f, c, order = admission_order(4, 6, max_bypass=2)
    assert order == [c[0], c[1], f[0], c[2], c[3], f[1], c[4], c[5], f[2], f[3]]


def admission_order(n_first: int, n_follow: int, **kw):
    """One slot; ``n_first`` first turns (300 uncached tokens each), then ``n_follow`` cheap
    follow-ups of one cached conversation, all waiting at once. Returns (first turns,
    follow-ups, the order they were admitted in)."""
    kv = FakeKv()
    s = sched(n_slots=1, n_seq_ids=8, kv=kv, pool_cells=10_000, headroom=1, **kw)
    base = run_one(s, kv, seq(list(range(200)), max_tokens=1))
    firsts = [seq(list(range(1000 * (i + 1), 1000 * (i + 1) + 300)), max_tokens=1)
              for i in range(n_first)]
    follows = [seq(base.all_tokens[:200] + [i], max_tokens=1) for i in range(n_follow)]
    for q in firsts + follows:
        s.add(q)
    order: list[Sequence] = []
    while s.has_work():
        step(s, kv)
        check(s, kv)
        order += [q for q in firsts + follows if q.status is not Status.WAITING and q not in order]
    return firsts, follows, order


def test_among_cheap_follow_ups_the_conversation_furthest_behind_goes_first():
    # two conversations' follow-ups, each one chunk of new tokens: the shorter history (fewer
    # turns done, more to come) is admitted first although it arrived last
    kv = FakeKv()
    s = sched(n_slots=1, n_seq_ids=8, kv=kv, pool_cells=10_000, headroom=1)
    ahead = run_one(s, kv, seq(list(range(300)), max_tokens=1))
    behind = run_one(s, kv, seq(list(range(1000, 1100)), max_tokens=1))
    ahead_next = seq(ahead.all_tokens + [7] * 20, max_tokens=1)  # fewer tokens left, but
    behind_next = seq(behind.all_tokens + [7] * 30, max_tokens=1)  # this history is shorter
    s.add(ahead_next)
    s.add(behind_next)
    step(s, kv)
    assert behind_next.status is Status.FINISHED and ahead_next.status is Status.WAITING


def test_when_few_first_turns_are_left_waiting_they_go_before_cached_follow_ups():
    """Three first turns wait with three cheap follow-ups: one follow-up goes first, then the
    oldest first turn (passed over once: the bound). With two left (last_cold), the first turns
    go before the remaining follow-ups: held back, their conversations would run after the
    others had ended, in a narrow batch."""
    f, c, order = admission_order(3, 3, max_bypass=1, last_cold=2)
    assert order == [c[0], f[0], f[1], f[2], c[1], c[2]]


def test_the_pool_never_overflows_running_sequences_are_preempted_and_resumed_exactly():
    kv = FakeKv()
    s = sched(n_slots=3, kv=kv, pool_cells=120, n_ctx_seq=120, headroom=1)
    qs = [seq([i * 100 + t for t in range(20)], max_tokens=40) for i in range(3)]
    for q in qs:
        s.add(q)
    preempted = 0
    while s.has_work():
        step(s, kv)
        check(s, kv)
        preempted += sum(q.swapped is not None for q in s.waiting)
    assert preempted > 0
    for q in qs:
        alone = list(q.prompt)
        while len(alone) < len(q.prompt) + 40:
            alone.append(toy_model(alone))
        assert q.all_tokens == alone  # same output as if it had run alone


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_conversations_never_see_a_wrong_or_foreign_prefix(data):
    """Several tenants' conversations with growing histories, through a small pool and a tiny
    RAM budget: at every step each sequence's KV is its own tokens, entries hold exactly their
    tokens, the budget holds, and a lookup finds what a brute-force search over entries finds."""
    kv = FakeKv()
    s = sched(n_slots=data.draw(st.integers(1, 3)), kv=kv, min_share=4,
                  n_seq_ids=data.draw(st.integers(3, 6)), pool_cells=400, n_ctx_seq=200,
                  ram_budget=data.draw(st.sampled_from([0, 300, 2000])), min_restore=BLOCK,
                  headroom=1, max_bypass=2, close_gaps=data.draw(st.booleans()),
                  gap_patience=data.draw(st.integers(1, 3)),
                  prefill_chunk=data.draw(st.sampled_from([8, 64])),
                  backlog_chunk=data.draw(st.sampled_from([None, 16, 256])))
    convs = [(data.draw(st.sampled_from(["", "k1", "k2"])),
              [data.draw(st.integers(0, 2))] * data.draw(st.integers(1, 40))) for _ in range(4)]
    for _ in range(data.draw(st.integers(3, 12))):
        i = data.draw(st.integers(0, len(convs) - 1))
        ns, history = convs[i]
        prompt = history + data.draw(st.lists(st.integers(0, 2), min_size=1, max_size=20))
        if len(prompt) > 150:
            continue
        entry, n = s.cache.lookup(ns, prompt)
        best = max((common_prefix(e.tokens, prompt) for e in s.cache.entries.values()
                    if e.ns == ns), default=0)
        assert n == (best if best >= BLOCK else 0) and (entry is None or entry.ns == ns)
        q = seq(prompt, ns, max_tokens=data.draw(st.integers(1, 12)))
        s.add(q)
        for _ in range(data.draw(st.integers(0, 4))):
            step(s, kv)
            check(s, kv)
        convs[i] = (ns, q.all_tokens)  # the next turn resends the history with the answer so far
    while s.has_work():
        step(s, kv)
        check(s, kv)


class CountingKv(FakeKv):
    def __init__(self) -> None:
        super().__init__()
        self.copies = self.restores = 0

    def copy(self, src: int, dst: int, n: int) -> None:
        self.copies += 1
        super().copy(src, dst, n)

    def restore(self, blob: Blob, seq_id: int) -> bool:
        self.restores += 1
        return super().restore(blob, seq_id)


def test_one_slot_keeps_a_short_shared_prefix_in_place_and_the_rest_goes_to_ram():
    # --parallel 1, distinct prompts after one template prefix shorter than a worthwhile restore
    kv = CountingKv()
    s = sched(n_slots=1, n_seq_ids=1, kv=kv, ram_budget=10_000, min_restore=64)
    template = list(range(24))
    first = run_one(s, kv, seq(template + [100] * 40))
    second = run_one(s, kv, seq(template + [200] * 40))
    assert second.num_cached == 24 and kv.copies == 0 and kv.restores == 0
    (held,) = [e for e in s.cache.entries.values() if e.tokens[24] == 100]
    assert held.tier is Tier.RAM and held.tokens == first.all_tokens[:len(held.tokens)]


def test_a_pool_entry_used_whole_hands_its_id_over_without_a_copy():
    kv = CountingKv()
    s = sched(n_slots=2, n_seq_ids=4, kv=kv, ram_budget=10_000)
    turn1 = run_one(s, kv, seq(list(range(40))))
    turn2 = run_one(s, kv, seq(turn1.all_tokens + [7, 8, 9]))
    assert turn2.num_cached == len(turn1.all_tokens) - 1  # all it computed: not the last token
    assert kv.copies == 0 and kv.restores == 0


def test_a_gap_in_the_running_ids_closes_after_the_patience_and_moved_sequences_decode_on():
    # ids 0-3 run; id 1 finishes and nothing waits for it: after gap_patience steps id 3 moves
    # into it (a batch over separate KV streams is cut at every gap), its cells copied, and the
    # entry id 1 held goes to RAM intact
    kv = FakeKv()
    s = sched(n_slots=4, n_seq_ids=4, kv=kv, ram_budget=100_000, close_gaps=True, gap_patience=3)
    qs = [seq([i * 100 + t for t in range(40)], max_tokens=3 if i == 1 else 30) for i in range(4)]
    for q in qs:
        s.add(q)
    step(s, kv)
    assert [q.slot for q in qs] == [0, 1, 2, 3]
    slots = []
    while s.has_work():
        step(s, kv)
        check(s, kv)
        slots.append(sorted(q.slot for q in s.running))
    assert s.stats.moves == 1 and qs[3].slot is None
    gapped = [x for x in slots if x == [0, 2, 3]]
    assert len(gapped) == 3 and [0, 1, 2] in slots  # three steps with the gap, then none
    (moved,) = [e for e in s.cache.entries.values() if e.tokens[0] == 100]
    assert moved.tier is Tier.RAM
    for q in qs:  # same output as if each had run alone
        alone = list(q.prompt)
        while len(alone) < len(q.prompt) + q.max_tokens:
            alone.append(toy_model(alone))
        assert q.all_tokens == alone


def test_a_gap_is_left_alone_while_a_sequence_waits_or_without_separate_streams():
    for waiting, close in ((True, True), (False, False)):
        kv = FakeKv()
        # a pool of 200 cells: the 150-token prompt waits until the others have finished
        s = sched(n_slots=3, n_seq_ids=4, kv=kv, close_gaps=close, gap_patience=1,
                  pool_cells=200, headroom=1)
        qs = [seq([i * 100 + t for t in range(40)], max_tokens=2 if i == 1 else 20)
              for i in range(3)]
        for q in qs:
            s.add(q)
        step(s, kv)
        if waiting:
            s.add(seq(list(range(1000, 1150))))
        gapped = 0
        while any(q.status is not Status.FINISHED for q in qs):
            step(s, kv)
            check(s, kv)
            gapped += sorted(q.slot for q in s.running) == [0, 2]
        assert gapped > 5 and s.stats.moves == 0
