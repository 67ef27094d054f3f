"""The runner as the prompt cache's KV backend, on the real model: what a copy or a RAM restore
puts in a sequence is the same KV as the original, byte for byte."""

from __future__ import annotations

import pytest

from ferry.engine.model import Model, bundled_model_path
from ferry.engine.runner import Runner, RunnerConfig
from ferry.engine.scheduler import StepPlan, Work
from ferry.engine.sequence import SamplingParams, Sequence


@pytest.fixture(scope="module")
def model():
    m = Model(bundled_model_path())
    yield m
    m.close()


@pytest.fixture(scope="module", params=[True, False], ids=["unified", "streams"])
def runner(model, request):
    r = Runner(model, RunnerConfig(512 if request.param else 1024, 2, 2, 256, n_seq_max=4,
                                   kv_unified=request.param))
    yield r
    r.close()


def prefill(r: Runner, slot: int, tokens: list[int]) -> None:
    s = Sequence(tokens, SamplingParams(), 1, lambda o: None)
    s.slot = slot
    r.run(StepPlan(work=[Work(s, tokens, 0, True)]))


def test_restore_and_copy_hold_the_saved_kv_byte_for_byte(runner):
    tokens = runner.model.tokenize("The ferry leaves the harbour at dawn. " * 6)
    prefill(runner, 0, tokens)
    prefill(runner, 1, tokens[:20])  # another sequence's cells around
    saved = bytes(runner.save(0))
    assert len(saved) >= runner.bytes_per_cell * len(tokens)
    runner.clear_slot(0)
    assert runner.restore(bytearray_blob(saved), 3)
    runner.copy(3, 2, len(tokens))
    runner.clear_slot(1)
    prefill(runner, 1, tokens[:2])  # a decode: streams copy at the next one
    for slot in (3, 2):  # back under id 0, the state reads the same as the original's
        blob = runner.save(slot)
        runner.clear_slot(0)
        assert runner.restore(blob, 0)
        assert bytes(runner.save(0)) == saved
    assert runner.trim(2, 10) == 10 and runner.trim(2, 0) == 0


def test_a_copy_survives_a_restore_into_its_source_before_the_next_decode(runner):
    # one admission pass copies a cached entry's cells to a new sequence, frees the entry's slot
    # and restores another entry from RAM into it; the copy must hold the first entry's cells
    a = runner.model.tokenize("The ferry leaves the harbour at dawn. " * 6)
    b = runner.model.tokenize("Gulls circle the quay while the rain comes. " * 6)
    for slot in range(4):
        runner.clear_slot(slot)
    prefill(runner, 1, b)
    other = runner.save(1)
    runner.clear_slot(1)
    prefill(runner, 0, a)
    original = bytes(runner.save(0))
    runner.copy(0, 2, len(a))
    runner.clear_slot(0)
    assert runner.restore(other, 0)
    prefill(runner, 3, a[:2])  # the next decode
    blob = runner.save(2)
    runner.clear_slot(0)
    assert runner.restore(blob, 0)
    assert bytes(runner.save(0)) == original


def test_a_restore_without_room_fails_cleanly(model):
    # unified KV only: a stream always has room for what it held
    runner = Runner(model, RunnerConfig(512, 2, 2, 256, n_seq_max=4, kv_unified=True))
    try:
        _restore_without_room(runner)
    finally:
        runner.close()


def _restore_without_room(runner: Runner) -> None:
    tokens = runner.model.tokenize("word " * 300)[:240]
    for slot in range(4):
        runner.clear_slot(slot)
    prefill(runner, 0, tokens)
    blob = runner.save(0)
    prefill(runner, 1, tokens)  # the blob's 240 cells and these 440 exceed the pool's 512
    runner.clear_slot(0)
    prefill(runner, 2, tokens[:200])
    assert not runner.restore(blob, 3)


def bytearray_blob(data: bytes):
    import numpy as np

    return np.frombuffer(data, np.uint8).copy()  # the runner's blob type, a fresh buffer


def test_a_step_decodes_its_sequences_in_id_order_whatever_the_plan_order(runner):
    # llama.cpp cuts a batch over separate streams into ubatches of consecutive ids, so admission
    # order in the batch would cost several graphs per step (benchmarks/batch_order.py)
    tokens = runner.model.tokenize("The ferry leaves the harbour at dawn.")
    for slot in range(4):
        runner.clear_slot(slot)
    seqs = []
    for slot in (3, 1, 2, 0):
        s = Sequence(tokens, SamplingParams(), 1, lambda o: None)
        s.slot = slot
        seqs.append(s)
    rows = runner.run(StepPlan(work=[Work(s, tokens[:2 + s.slot], 0, True) for s in seqs]))
    b = runner.batch
    ids = [b.seq_id[i][0] for i in range(b.n_tokens)]
    assert ids == sorted(ids) and set(ids) == {0, 1, 2, 3}
    for s in seqs:  # each sequence's logits row is its own last token
        assert ids[rows[s.id]] == s.slot and b.pos[rows[s.id]] == 1 + s.slot
        assert rows[s.id] == b.n_tokens - 1 or ids[rows[s.id] + 1] != s.slot
    for slot in range(4):
        runner.clear_slot(slot)


def test_a_last_chunk_beside_decodes_joins_them_by_one_token_with_the_same_logits(runner):
    # the chunk but its last token goes ahead, so the decode that reads logits holds one token
    # per sequence (one ubatch over separate streams; benchmarks/mixed_step.py --last)
    a = runner.model.tokenize("The ferry leaves the harbour at dawn. " * 3)
    b = runner.model.tokenize("Gulls circle the quay while the rain comes in. " * 3)
    s0, s1 = (Sequence(t, SamplingParams(), 1, lambda o: None) for t in (a, b))
    s0.slot, s1.slot = 0, 1

    def last_chunk_logits(beside_decode: bool):
        for slot in range(4):
            runner.clear_slot(slot)
        runner.run(StepPlan(work=[Work(s0, a, 0, True), Work(s1, b[:10], 0, False)]))
        work = [Work(s1, b[10:], 10, True)]
        if beside_decode:
            work.insert(0, Work(s0, [a[-1]], len(a), True))
        rows = runner.run(StepPlan(work=work))
        n_tokens = runner.batch.n_tokens
        return runner.logits(rows[s1.id]).copy(), n_tokens

    alone, _ = last_chunk_logits(False)
    beside, n_tokens = last_chunk_logits(True)
    assert n_tokens == 2  # the decode's token and the chunk's last
    assert int(beside.argmax()) == int(alone.argmax())
    assert abs(beside - alone).max() < 0.05, abs(beside - alone).max()
    for slot in range(4):
        runner.clear_slot(slot)


def test_a_prompt_token_beside_decodes_gets_a_logits_row_too_and_the_decodes_logits_hold(runner):
    # llama.cpp decodes 8 one-token items slower with 7 logits rows than with 8
    # (benchmarks/mixed_step.py --outputs), so such a call asks for every row
    a = runner.model.tokenize("The ferry leaves the harbour at dawn. " * 3)
    b = runner.model.tokenize("Gulls circle the quay while the rain comes in. " * 3)
    s0, s1 = (Sequence(t, SamplingParams(), 1, lambda o: None) for t in (a, b))
    s0.slot, s1.slot = 0, 1

    def decode_logits(beside: bool):
        for slot in range(4):
            runner.clear_slot(slot)
        runner.run(StepPlan(work=[Work(s0, a[:-1], 0, False), Work(s1, b[:10], 0, False)]))
        work = [Work(s0, [a[-1]], len(a) - 1, True)]
        if beside:
            work.append(Work(s1, [b[10]], 10, False))  # s1's next prompt token
        rows = runner.run(StepPlan(work=work))
        flags = [runner.batch.logits[i] for i in range(runner.batch.n_tokens)]
        return runner.logits(rows[s0.id]).copy(), rows, flags

    alone, _, _ = decode_logits(False)
    beside, rows, flags = decode_logits(True)
    assert flags == [1, 1] and set(rows) == {s0.id}  # the spare row is asked for, never read
    assert int(beside.argmax()) == int(alone.argmax())
    assert abs(beside - alone).max() < 0.05, abs(beside - alone).max()
    for slot in range(4):
        runner.clear_slot(slot)
