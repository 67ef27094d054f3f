"""How long a draft to propose, shared by every drafter (n-gram lookup, draft model).

Invariants:
- ``length`` stays within ``1..max_draft``: it doubles after a fully accepted draft and shrinks to
  what was accepted plus one otherwise.
- Below ``min_rate`` acceptance over a ``window`` of drafted tokens the policy pauses drafting for
  ``cooldown`` steps. Verifying k drafted tokens costs more than one decode (on 2 CPU cores and the
  135M model, a batch of 9 tokens costs ~5.5x a single token; see benchmarks/RESULTS.md), so text
  that does not repeat its input must draft little.

Exactness: a drafter proposes tokens deterministically, so its draft distribution is a point mass.
For a point-mass draft, standard speculative rejection sampling (accept x with probability
min(1, p(x)/q(x)) = p(x), otherwise draw from the residual max(0, p - q) ∝ p without x) is the same
as drawing y ~ p with the request's own sampler and accepting while y equals the draft. The engine
does exactly that, one draw per emitted token in order, so greedy and seeded output keep their
distribution (and, with a seed, their random stream).
"""

from __future__ import annotations


class DraftPolicy:
    def __init__(self, max_draft: int = 8, window: int = 16, min_rate: float = 0.4,
                 cooldown: int = 64, start: int = 2) -> None:
        self.max_draft = max_draft
        self.length = min(start, max_draft)
        self.window, self.min_rate, self.cooldown = window, min_rate, cooldown
        self._drafted = self._accepted = 0
        self._paused = 0
        self.total_drafted = self.total_accepted = 0

    def paused(self) -> bool:
        """True (and counts one step of the pause) while drafting is paused."""
        if self._paused > 0:
            self._paused -= 1
            return True
        return False

    def record(self, drafted: int, accepted: int) -> None:
        if drafted:
            self.length = (min(self.length * 2, self.max_draft) if accepted == drafted
                           else max(1, accepted + 1))
        self._drafted += drafted
        self._accepted += accepted
        self.total_drafted += drafted
        self.total_accepted += accepted
        if self._drafted >= self.window:
            if self._accepted < self.min_rate * self._drafted:
                self._paused = self.cooldown
            self._drafted = self._accepted = 0
