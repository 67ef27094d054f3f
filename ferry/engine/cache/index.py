"""Longest-common-prefix lookup over cached prompts, by hashed token blocks.

An entry's tokens are cut into blocks of ``BLOCK`` tokens; block ``i`` is keyed by a hash chained
over the namespace and blocks ``0..i`` (as in vLLM's automatic prefix caching), and the table maps
each key to the entries holding that whole prefix. A lookup walks the prompt's blocks while some
entry holds them, then measures the exact common prefix against each entry found at the deepest
block.

Invariants:
- ``longest(ns, tokens)`` returns an entry of namespace ``ns`` only, with ``n`` equal to the exact
  common prefix of its tokens and ``tokens`` (measured on the tokens, never trusted from a hash,
  so a hash collision can cost a hit but never yield a wrong prefix).
- Prefixes shorter than one block are not found (not worth a lookup structure).
- Among entries with the same ``n`` the one added or touched last wins (``touch``).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from typing import Generic, TypeVar

BLOCK = 16

K = TypeVar("K", bound=Hashable)  # an entry id


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix, by bisection over slice comparisons (done in C)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo] and a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _block_keys(ns: Hashable, tokens: list[int]) -> Iterator[int]:
    """The key of each whole block of ``tokens``: a hash chained over ``ns`` and every block up
    to it (lazily: a lookup stops at the first key nobody holds)."""
    h = hash(ns)
    for i in range(len(tokens) // BLOCK):
        h = hash((h, tuple(tokens[i * BLOCK:(i + 1) * BLOCK])))
        yield h


class PrefixIndex(Generic[K]):
    """Entries (hashable ids of type ``K``) with their namespace and tokens; see the module
    docstring."""

    def __init__(self) -> None:
        self._table: dict[int, dict[K, None]] = {}  # block key -> entries (ordered)
        self._entries: dict[K, tuple[Hashable, list[int], list[int]]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, entry: K) -> bool:
        return entry in self._entries

    def tokens(self, entry: K) -> list[int]:
        return self._entries[entry][1]

    def add(self, entry: K, ns: Hashable, tokens: list[int]) -> None:
        assert entry not in self._entries, entry
        keys = list(_block_keys(ns, tokens))
        self._entries[entry] = (ns, tokens, keys)
        for k in keys:
            self._table.setdefault(k, {})[entry] = None

    def remove(self, entry: K) -> None:
        _, _, keys = self._entries.pop(entry)
        for k in keys:
            holders = self._table[k]
            del holders[entry]
            if not holders:
                del self._table[k]

    def touch(self, entry: K) -> None:
        """Make ``entry`` the most recent among equals (re-insert at the end of each block)."""
        _, _, keys = self._entries[entry]
        for k in keys:
            holders = self._table[k]
            del holders[entry]
            holders[entry] = None

    def longest(self, ns: Hashable, tokens: list[int]) -> tuple[K | None, int]:
        """The entry of ``ns`` sharing the longest prefix with ``tokens``, and that length."""
        holders: dict[K, None] | None = None
        depth = 0
        for h in _block_keys(ns, tokens):
            nxt = self._table.get(h)
            if not nxt:
                break
            holders, depth = nxt, depth + 1
        if holders is None:
            return None, 0
        # Every holder has the first ``m`` tokens (by hash) and none the next whole block, so
        # the common prefix ends inside that block: compare only it (a shallow walk may find
        # every entry of the namespace holding a shared system prompt), then check the winner
        # on its whole prefix; a hash collision (or a whole next block in common, which only one
        # can explain) falls back to measuring every holder.
        m = depth * BLOCK
        head = tokens[m:m + BLOCK]
        best, best_n = self._best(ns, holders, lambda t: m + common_prefix(t[m:m + BLOCK], head))
        if best is not None and (best_n >= m + BLOCK or self._entries[best][1][:m] != tokens[:m]):
            best, best_n = self._best(ns, holders, lambda t: common_prefix(t, tokens))
        return best, best_n

    def _best(self, ns: Hashable, holders: dict[K, None],
              measure: Callable[[list[int]], int]) -> tuple[K | None, int]:
        best: K | None = None
        best_n = 0
        for entry in reversed(holders):  # newest first: ties keep the newest
            e_ns, e_tokens, _ = self._entries[entry]
            if e_ns != ns:
                continue  # a hash collision across namespaces
            n = measure(e_tokens)
            if n > best_n:
                best, best_n = entry, n
        return best, best_n

    def covered_by(self, ns: Hashable, tokens: list[int]) -> list[K]:
        """Entries of ``ns`` whose tokens are a prefix of ``tokens`` (redundant once ``tokens``
        is cached)."""
        found: list[K] = []
        for i, h in enumerate(_block_keys(ns, tokens)):
            holders = self._table.get(h)
            if not holders:
                break
            for entry in holders:
                e_ns, e_tokens, _ = self._entries[entry]
                if (e_ns == ns and len(e_tokens) < (i + 2) * BLOCK and len(e_tokens) <= len(tokens)
                        and tokens[:len(e_tokens)] == e_tokens):
                    found.append(entry)
        return found
