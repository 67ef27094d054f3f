from __future__ import annotations

from ferry.engine.ngram import NGramDrafter


def test_proposes_what_followed_the_last_occurrence_of_the_suffix():
    d = NGramDrafter(max_draft=4)
    d.extend([1, 2, 3, 4, 5, 6, 9, 1, 2, 3])
    assert d.propose() == [4, 5]  # starts short
    d.record(2, 2)
    assert d.propose() == [4, 5, 6, 9]  # grows after a fully accepted draft
    d.record(4, 1)
    assert d.propose() == [4, 5]  # shrinks to what was accepted plus one


def test_most_recent_occurrence_wins_and_draft_is_capped():
    d = NGramDrafter(max_draft=2, sizes=(2,))
    d.extend([7, 8, 1, 7, 8, 2, 7, 8])
    assert d.propose() == [2, 7]


def test_no_repeat_no_draft():
    d = NGramDrafter(max_draft=8)
    d.extend([1, 2, 3, 4])
    assert d.propose() == []


def test_low_acceptance_pauses_drafting():
    d = NGramDrafter(max_draft=4, sizes=(2,), window=8, cooldown=3)
    d.extend([1, 2, 3, 1, 2, 3, 1, 2])
    d.record(8, 0)
    assert [d.propose() for _ in range(3)] == [[], [], []]
    assert d.propose() != []


def test_drafting_goes_on_while_it_yields_more_tokens_than_it_costs():
    from ferry.engine.speculative import DraftPolicy

    p = DraftPolicy(max_draft=8, window=16, token_cost=0.5, cooldown=3)
    p.record(8, 6)  # 7 tokens for the cost of 5 decodes
    p.record(8, 2)  # 3 for 5: over the window 10 tokens for 10, not a loss
    assert not p.paused()
    p.record(8, 1)
    p.record(8, 1)  # 4 tokens for 10: a loss, so drafting pauses for 3 steps
    assert [p.paused() for _ in range(4)] == [True, True, True, False]
