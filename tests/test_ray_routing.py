"""The replica choice of a Ray deployment (pure logic; the end-to-end tests are test_ray_deploy)."""

from __future__ import annotations

import random

from ferry.deploy.routing import BLOCK_CHARS, RouteHint, RouteTable, block_hashes

DOC = "You are a helpful assistant. " * 20  # ~560 chars: 8 blocks
R = ["a", "b", "c"]


def test_block_hashes_name_whole_prefixes():
    h = block_hashes(DOC)
    assert len(h) == len(DOC) // BLOCK_CHARS
    assert block_hashes(DOC + "more text")[: len(h)] == h
    assert block_hashes("X" + DOC[1:])[0] != h[0]
    assert block_hashes("short") == []


def test_without_a_hint_every_replica_is_one_rank_for_least_loaded():
    assert RouteTable().rank(R, None) == [R]
    assert RouteTable().rank(R, RouteHint(text="short")) == [R]


def test_a_conversation_stays_on_its_replica_while_it_lives():
    t = RouteTable()
    t.routed("b", RouteHint(key="conv-1", text="hi"))
    assert t.rank(R, RouteHint(key="conv-1", text="hi again")) == [["b"], ["a", "c"]]
    t.forget("b")  # died
    assert t.rank(["a", "c"], RouteHint(key="conv-1", text="hi again")) == [["a", "c"]]
    t.routed("c", RouteHint(key="conv-1", text="x"))
    assert t.rank(["a", "c"], RouteHint(key="conv-1"))[0] == ["c"]


def test_the_replica_of_a_previous_response_is_preferred_while_it_lives():
    t = RouteTable()
    t.routed("a", RouteHint(text=DOC))
    assert t.rank(R, RouteHint(text=DOC, prefer="c")) == [["c"], ["a", "b"]]
    assert t.rank(R, RouteHint(text=DOC, prefer="gone"))[0] == ["a"]


def test_the_longest_cached_prefix_wins():
    t = RouteTable()
    t.routed("a", RouteHint(text=DOC[:200]))
    t.routed("c", RouteHint(text=DOC + "first question"))
    assert t.rank(R, RouteHint(text=DOC + "second question")) == [["c"], ["a", "b"]]
    assert t.matched_blocks("c", block_hashes(DOC)) == len(DOC) // BLOCK_CHARS


def test_a_short_match_or_a_busy_replica_falls_back_to_least_loaded():
    t = RouteTable(min_match=0.5, imbalance=4)
    t.routed("a", RouteHint(text=DOC[:128]))
    assert t.rank(R, RouteHint(text=DOC)) == [R]  # 2 of 8 blocks
    t.routed("b", RouteHint(text=DOC))
    assert t.rank(R, RouteHint(text=DOC), load={"b": 3})[0] == ["b"]
    assert t.rank(R, RouteHint(text=DOC), load={"b": 9, "a": 1}) == [R]


def test_random_policy_ignores_the_cache():
    t = RouteTable(rng=random.Random(0))
    t.routed("a", RouteHint(key="k", text=DOC))
    hint = RouteHint(key="k", text=DOC, policy="random")
    picks = {t.rank(R, hint)[0][0] for _ in range(50)}
    assert picks == set(R)
    t.routed("b", hint)  # not remembered
    assert t.rank(R, RouteHint(key="k"))[0] == ["a"]


def test_a_targeted_hint_goes_to_its_replica_or_nowhere():
    t = RouteTable()
    assert t.rank(R, RouteHint(replica="b", policy="random")) == [["b"]]
    assert t.rank(R, RouteHint(replica="gone")) == []


def test_memory_is_bounded():
    t = RouteTable(max_keys=10, max_blocks=50)
    for i in range(100):
        t.routed("a", RouteHint(key=f"k{i}", text=f"{i:04d}" + DOC))
    assert len(t._pins) == 10 and len(t._blocks["a"]) == 50
    assert t.rank(R, RouteHint(key="k99"))[0] == ["a"]



def test_plain_ferry_serve_never_imports_ray():
    import subprocess
    import sys

    code = ("import sys, ferry.cli, ferry.server, ferry.app; "
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_only_the_server_reaches_ferry_deploy():
    from test_layers import ROOT, imports_of, module_name

    users = {module_name(p) for p in ROOT.rglob("*.py")
             if not module_name(p).startswith("ferry.deploy")
             and any(m.startswith("ferry.deploy") for m in imports_of(p))}
    assert users == {"ferry.server"}
