"""The prompt cache: finished sequences' KV kept for reuse, in the KV pool, then in host RAM.

A finished sequence's llama.cpp sequence id and its cells become a *pool* entry. When the pool needs
the room (or the id), the least recently used pool entry moves to RAM: its cells are saved with
llama.cpp's per-sequence state save (``KvBackend.save``) and removed from the pool. RAM entries are
evicted least recently used first to keep their bytes under ``ram_budget``. A new prompt is matched
against every entry of its namespace by longest common prefix (``PrefixIndex``); a pool hit is a
copy of cells into the new sequence's id (in a unified KV, copying only tags cells) or the entry's
own id handed over trimmed to the prefix (``take``), a RAM hit a state restore followed by a trim
to the common prefix.

Invariants:
- Every entry is exactly one of: in the pool (owns ``seq_id``, whose cells hold ``tokens``), or in
  RAM (``blob`` restores ``tokens``). ``ram_bytes`` (the sum of RAM blobs) never exceeds
  ``ram_budget``; a blob larger than the whole budget is dropped, never kept.
- An entry whose tokens are a prefix of a newer entry's (same namespace) is dropped: the newer
  one serves every prompt the older could.
- Entries of one namespace are never returned for another (the index guarantees it).
- Pure logic over ``KvBackend``; ``Runner`` implements it for llama.cpp, tests with a fake.
"""

from __future__ import annotations

import enum
import itertools
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ferry.engine.cache.index import BLOCK, PrefixIndex


class KvBackend(Protocol):
    bytes_per_cell: int

    def trim(self, seq_id: int, keep: int) -> int:
        """Drop ``seq_id``'s cells from position ``keep`` on; return the cells kept (0 if the
        memory refused a partial removal and cleared the sequence)."""

    def copy(self, src: int, dst: int, n: int) -> None:
        """Give ``dst`` the first ``n`` cells of ``src`` (``dst`` is empty)."""

    def save(self, seq_id: int) -> Any:
        """The state of ``seq_id``'s cells as an opaque blob with ``len(blob)`` bytes."""

    def restore(self, blob: Any, seq_id: int) -> bool:
        """Load a saved blob into ``seq_id`` (empty); False if it did not fit."""


class Tier(enum.Enum):
    POOL = "pool"
    RAM = "ram"


@dataclass(slots=True)
class Entry:
    id: int
    ns: Hashable
    tokens: list[int]
    tier: Tier
    seq_id: int | None = None  # POOL
    blob: Any = None  # RAM
    nbytes: int = 0  # RAM


@dataclass(slots=True)
class CacheStats:
    hits: dict[str, int] = field(default_factory=lambda: {"pool": 0, "ram": 0})
    restored_tokens: dict[str, int] = field(default_factory=lambda: {"pool": 0, "ram": 0})
    evictions: dict[str, int] = field(default_factory=lambda: {"pool": 0, "ram": 0})
    restore_failures: int = 0


_ids = itertools.count()


class PromptCache:
    """See the module docstring. ``min_restore``: fewest tokens worth a RAM restore (below it,
    recomputing is cheaper) and worth saving to RAM at all."""

    def __init__(self, backend: KvBackend, ram_budget: int, min_restore: int = 2 * BLOCK,
                 keep: Callable[[int, int], int] | None = None) -> None:
        self.kv = backend
        # keep(seq_id, n): n if the first n cells of seq_id can be continued from, else fewer
        # (sliding-window layers that dropped cells); None: always n
        self.keep = keep or (lambda seq_id, n: n)
        self.ram_budget = ram_budget
        self.min_restore = max(min_restore, BLOCK)
        self.index: PrefixIndex[int] = PrefixIndex()
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # least recently used first
        self.pool_cells = 0
        self.ram_bytes = 0
        self.stats = CacheStats()

    # ---- reading -----------------------------------------------------------------------------
    def n_pool(self) -> int:
        return sum(e.tier is Tier.POOL for e in self.entries.values())

    def lookup(self, ns: Hashable, tokens: list[int]) -> tuple[Entry | None, int]:
        """The entry sharing the longest prefix with ``tokens`` in ``ns``, and its length."""
        eid, n = self.index.longest(ns, tokens)
        return (None, 0) if eid is None else (self.entries[eid], n)

    # ---- using an entry ----------------------------------------------------------------------
    def materialize(self, entry: Entry, n: int, dst: int) -> tuple[int, list[int]]:
        """Put ``entry``'s first ``n`` cells into the empty sequence ``dst``. Returns the cells
        placed (0 when a RAM restore is not worth it or failed) and the seq ids freed."""
        freed: list[int] = []
        tier = entry.tier.value
        if entry.tier is Tier.POOL:
            assert entry.seq_id is not None
            if self.keep(entry.seq_id, n) < n:
                return 0, freed
            self.kv.copy(entry.seq_id, dst, n)
        else:
            if n < self.min_restore:
                return 0, freed
            if not self.kv.restore(entry.blob, dst):
                self.stats.restore_failures += 1
                return 0, freed
            n = self.kv.trim(dst, n)
        self.stats.hits[tier] += 1
        self.stats.restored_tokens[tier] += n
        if n == len(entry.tokens):  # dst now holds all of it and will cache more
            freed += self._drop(entry)
        else:
            self._touch(entry)
        return n, freed

    def take(self, entry: Entry, n: int) -> tuple[int, int] | None:
        """Hand pool ``entry``'s sequence id, trimmed to its first ``n`` cells, to a new sequence,
        without a copy. An entry used whole just leaves the cache; one used in part moves to RAM
        (or goes) as an eviction would, so call it for the pool's next victim only
        (``next_victim``). Returns (seq id, cells kept), or None when the memory cannot keep
        that prefix (the caller copies or recomputes instead)."""
        assert entry.tier is Tier.POOL and entry.seq_id is not None
        if self.keep(entry.seq_id, n) < n:
            return None
        seq_id = entry.seq_id
        if n == len(entry.tokens):
            self._drop(entry, touch_kv=False)
        else:
            self._to_ram(entry, keep=n)
        n = self.kv.trim(seq_id, n)
        self.stats.hits["pool"] += 1
        self.stats.restored_tokens["pool"] += n
        return seq_id, n

    def next_victim(self, spare: Entry | None = None) -> Entry | None:
        """The pool entry ``evict_pool`` would move out next (least recently used)."""
        return next((e for e in self.entries.values() if e.tier is Tier.POOL and e is not spare),
                    None)

    # ---- adding ------------------------------------------------------------------------------
    def insert(self, ns: Hashable, tokens: list[int], seq_id: int) -> list[int]:
        """Cache the cells of finished sequence ``seq_id`` (holding ``tokens``); the cache owns
        the id from now on. Returns the seq ids freed."""
        if len(tokens) < BLOCK:
            self.kv.trim(seq_id, 0)
            return [seq_id]
        if self.kv.trim(seq_id, len(tokens)) < len(tokens):  # cells past them (drafts) go
            return [seq_id]
        freed: list[int] = []
        for eid in self.index.covered_by(ns, tokens):
            freed += self._drop(self.entries[eid])
        e = Entry(next(_ids), ns, tokens, Tier.POOL, seq_id=seq_id)
        self.entries[e.id] = e
        self.index.add(e.id, ns, tokens)
        self.pool_cells += len(tokens)
        return freed

    # ---- eviction ----------------------------------------------------------------------------
    def evict_pool(self, spare: Entry | None = None) -> list[int]:
        """Move the least recently used pool entry (other than ``spare``) to RAM, or drop it if
        RAM cannot hold it or it is too short to be worth a restore. Returns the seq ids freed
        ([] if there is none to evict)."""
        e = self.next_victim(spare)
        if e is None:
            return []
        return [self._to_ram(e)]

    def evict_id(self, seq_id: int) -> None:
        """Move the pool entry holding ``seq_id`` to RAM (or drop it), as ``evict_pool`` would;
        the id is the caller's afterwards."""
        e = next(e for e in self.entries.values() if e.tier is Tier.POOL and e.seq_id == seq_id)
        self._to_ram(e)

    def _to_ram(self, e: Entry, keep: int = 0) -> int:
        """Save pool entry ``e`` to RAM (or drop it) and clear its sequence id past ``keep``
        cells; returns the id (no longer the cache's)."""
        assert e.seq_id is not None
        seq_id = e.seq_id
        self.stats.evictions["pool"] += 1
        blob = None
        if self.ram_budget > 0 and len(e.tokens) >= self.min_restore:
            blob = self.kv.save(seq_id)
        if blob is None or len(blob) > self.ram_budget:
            self._drop(e, touch_kv=False)
        else:
            while self.ram_bytes + len(blob) > self.ram_budget:
                self._evict_ram()
            self.pool_cells -= len(e.tokens)
            e.tier, e.seq_id, e.blob, e.nbytes = Tier.RAM, None, blob, len(blob)
            self.ram_bytes += e.nbytes
        self.kv.trim(seq_id, keep)
        return seq_id

    def _evict_ram(self) -> None:
        e = next(e for e in self.entries.values() if e.tier is Tier.RAM)
        self.stats.evictions["ram"] += 1
        self._drop(e)

    def clear(self) -> list[int]:
        """Forget every entry (after an engine failure); returns the pool seq ids."""
        freed = [e.seq_id for e in self.entries.values() if e.seq_id is not None]
        for e in list(self.entries.values()):
            self._drop(e, touch_kv=False)
        return freed

    def _drop(self, e: Entry, touch_kv: bool = True) -> list[int]:
        del self.entries[e.id]
        self.index.remove(e.id)
        if e.tier is Tier.RAM:
            self.ram_bytes -= e.nbytes
            e.blob = None
            return []
        self.pool_cells -= len(e.tokens)
        assert e.seq_id is not None
        if touch_kv:
            self.kv.trim(e.seq_id, 0)
        return [e.seq_id]

    def _touch(self, e: Entry) -> None:
        self.entries.move_to_end(e.id)
        self.index.touch(e.id)

    def status(self) -> dict:
        n_pool = self.n_pool()
        return {"entries": {"pool": n_pool, "ram": len(self.entries) - n_pool},
                "bytes": {"pool": self.pool_cells * self.kv.bytes_per_cell, "ram": self.ram_bytes},
                "hits": dict(self.stats.hits),
                "restored_tokens": dict(self.stats.restored_tokens),
                "evictions": dict(self.stats.evictions),
                "restore_failures": self.stats.restore_failures}
