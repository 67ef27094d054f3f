"""Which running sequences move where to close gaps in their ids (pure logic)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ferry.engine.gaps import plan_moves, runs


def test_runs_counts_stretches_of_consecutive_ids():
    assert runs([]) == 0 and runs([3]) == 1 and runs([0, 1, 2]) == 1
    assert runs([7, 0, 4, 6]) == 3


def test_one_run_already_needs_no_move():
    assert plan_moves([2, 3, 4], 8) == [] and plan_moves([5], 8) == []


def test_the_fewest_sequences_move_into_the_window_holding_most_of_them():
    assert plan_moves([0, 4, 5, 6, 7], 8) == [(0, 3)]
    assert plan_moves([0, 4, 6, 7], 8) == [(0, 5)]
    assert plan_moves([0, 2, 3, 5, 6, 7], 8) == [(0, 4)]
    assert plan_moves([0, 1, 3, 7], 8) == [(7, 2)]


@given(st.integers(2, 16).flatmap(
    lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), min_size=1))))
def test_after_the_moves_the_ids_are_one_run_and_no_fewer_moves_could_do(case):
    n_ids, ids = case
    moves = plan_moves(sorted(ids), n_ids)
    srcs, dsts = [m[0] for m in moves], [m[1] for m in moves]
    assert set(srcs) <= ids and not set(dsts) & ids and all(0 <= d < n_ids for d in dsts)
    assert len(set(srcs)) == len(srcs) and len(set(dsts)) == len(dsts)
    after = (ids - set(srcs)) | set(dsts)
    assert len(after) == len(ids) and runs(list(after)) == 1
    fewest = min(len(ids) - len(ids & set(range(lo, lo + len(ids))))
                 for lo in range(n_ids - len(ids) + 1))
    assert len(moves) == fewest
