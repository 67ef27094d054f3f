"""Which engine replica should take a request: conversation affinity, then longest cached prefix,
then least loaded. Pure logic (no Ray), driven by ``ferry.deploy.router`` and unit-tested alone.

Invariants:
- A request carrying a conversation key (``X-Conversation-Id``, ``previous_response_id``) goes
  first to the replica that last served that key, while that replica is alive; a dead or
  forgotten replica's keys fall through to prefix matching and are re-pinned where they land.
- Prefix matching works on the request's prompt *text* cut into ``BLOCK_CHARS`` blocks, each
  identified by the hash of the whole prefix up to its end (so equal hashes mean equal
  prefixes, as in vLLM's hashed KV blocks). A replica's match is the number of leading blocks
  it has seen; the longest wins if it reaches ``min_match`` of the text and its load is within
  ``imbalance`` ongoing requests of the least loaded replica.
- Preferences are ranks: the preferred replica first, then every other replica in one rank, from
  which Ray Serve's router takes the one with the shortest queue (least loaded). A full
  preferred replica therefore never blocks a request.
- ``RouteHint.prefer`` (the replica that created a ``previous_response_id``, from the replica
  registry in Redis, so any front door knows it) counts like a pin.
- The policy is the front door's (``RouteHint.policy``): ``random`` ignores everything above.
- A hint naming a ``replica`` goes to that replica or nowhere (the caller times out).
- Memory is bounded: at most ``max_keys`` conversation pins and ``max_blocks`` block hashes per
  replica, least recently used dropped first. The view is this router's own (each front door
  learns from what it routed), like Ray Serve LLM's prefix tree but without a shared actor.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

BLOCK_CHARS = 64  # ~16 tokens of English per block: coarse enough to be cheap, fine enough to hit
MAX_TEXT_CHARS = 64 * 1024  # prefixes longer than this are matched on their first 64 KiB


@dataclass(frozen=True, slots=True)
class RouteHint:
    """What the front door tells the router about a request (plain data: it crosses Ray)."""

    key: str | None = None  # conversation key: X-Conversation-Id or previous_response_id
    text: str = ""  # the prompt as text, for prefix matching
    replica: str | None = None  # only this replica (a front door asking each for its status)
    prefer: str | None = None  # the replica that created the previous_response_id, if known
    policy: str = "cache"  # the front door's --ray-routing: "cache" or "random"


def block_hashes(text: str) -> list[int]:
    """Chained hashes of the text's whole blocks: ``h[i]`` names ``text[:(i+1)*BLOCK_CHARS]``."""
    text = text[:MAX_TEXT_CHARS]
    out: list[int] = []
    h = 0
    for i in range(0, len(text) - BLOCK_CHARS + 1, BLOCK_CHARS):
        h = hash((h, text[i:i + BLOCK_CHARS]))
        out.append(h)
    return out


class RouteTable:
    def __init__(self, *, min_match: float = 0.1, imbalance: int = 8, max_keys: int = 100_000,
                 max_blocks: int = 200_000, rng: random.Random | None = None) -> None:
        self.min_match = min_match
        self.imbalance = imbalance
        self.max_keys = max_keys
        self.max_blocks = max_blocks
        self._rng = rng or random.Random()
        self._pins: OrderedDict[str, str] = OrderedDict()  # conversation key -> replica
        self._blocks: dict[str, OrderedDict[int, None]] = {}  # replica -> seen block hashes

    def rank(self, replicas: Sequence[str], hint: RouteHint | None,
             load: dict[str, int] | None = None) -> list[list[str]]:
        """Ranks of replica ids, most preferred first (see the module invariants)."""
        if hint is not None and hint.replica is not None:
            return [[hint.replica]] if hint.replica in replicas else []
        if not replicas:
            return []
        if hint is not None and hint.policy == "random":
            return [[self._rng.choice(list(replicas))]]
        preferred = self._preferred(replicas, hint, load or {})
        if preferred is None:
            return [list(replicas)]
        return [[preferred], [r for r in replicas if r != preferred]]

    def _preferred(self, replicas: Sequence[str], hint: RouteHint | None,
                   load: dict[str, int]) -> str | None:
        if hint is None:
            return None
        if hint.prefer in replicas:
            return hint.prefer
        if hint.key is not None:
            pinned = self._pins.get(hint.key)
            if pinned in replicas:
                self._pins.move_to_end(hint.key)
                return pinned
        hashes = block_hashes(hint.text)
        if not hashes:
            return None
        best, best_n = None, 0
        for r in replicas:
            n = self.matched_blocks(r, hashes)
            if n > best_n:
                best, best_n = r, n
        if best is None or best_n < self.min_match * len(hashes):
            return None
        least = min((load.get(r, 0) for r in replicas), default=0)
        if load.get(best, 0) - least > self.imbalance:
            return None
        return best

    def matched_blocks(self, replica: str, hashes: list[int]) -> int:
        seen = self._blocks.get(replica)
        if not seen:
            return 0
        n = 0
        for h in hashes:
            if h not in seen:
                break
            n += 1
        return n

    def routed(self, replica: str, hint: RouteHint | None) -> None:
        """Remember that ``replica`` took this request (its prompt is now cached there)."""
        if hint is None or hint.replica is not None or hint.policy == "random":
            return
        if hint.key is not None:
            self._pins[hint.key] = replica
            self._pins.move_to_end(hint.key)
            while len(self._pins) > self.max_keys:
                self._pins.popitem(last=False)
        seen = self._blocks.setdefault(replica, OrderedDict())
        for h in block_hashes(hint.text):
            seen[h] = None
            seen.move_to_end(h)
        while len(seen) > self.max_blocks:
            seen.popitem(last=False)

    def forget(self, replica: str) -> None:
        """A replica died or was removed: drop what it had; its pins fall through."""
        self._blocks.pop(replica, None)
        for key in [k for k, r in self._pins.items() if r == replica]:
            del self._pins[key]

    def keep_only(self, alive: Sequence[str]) -> None:
        for r in [r for r in self._blocks if r not in alive]:
            self.forget(r)
