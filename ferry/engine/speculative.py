"""How long a draft to propose, shared by every drafter (n-gram lookup, draft model).

Invariants:
- ``length`` stays within ``1..max_draft``: it doubles after a fully accepted draft and shrinks to
  what was accepted plus one otherwise.
- Drafting pauses for ``cooldown`` steps when, over a ``window`` of drafted tokens, it yielded
  fewer tokens than it cost: a step that verifies k drafted tokens and keeps a of them yields 1 + a
  tokens for a cost of 1 + ``token_cost`` * k single-token decodes. On CPU, verification is not
  free: with 2 cores and the 135M model every extra token in a decode costs ~0.65 of a one-token
  decode (benchmarks/RESULTS.md "Speculative decoding"), so drafting pays only above ~85-90%
  acceptance, and text that does not repeat its input must stop drafting quickly. (On a GPU the
  marginal cost is near 0: lower ``token_cost``.)

Exactness: a drafter proposes tokens deterministically, so its draft distribution is a point mass.
For a point-mass draft, standard speculative rejection sampling (accept x with probability
min(1, p(x)/q(x)) = p(x), otherwise draw from the residual max(0, p - q) ∝ p without x) is the same
as drawing y ~ p with the request's own sampler and accepting while y equals the draft. The engine
does exactly that, one draw per emitted token in order, so greedy and seeded output keep their
distribution (and, with a seed, their random stream).
"""

from __future__ import annotations

from typing import Protocol


class Drafter(Protocol):
    """What a speculating sequence holds (``Sequence.drafter``): n-gram lookup or a draft model.
    The scheduler asks it for a draft, the engine tells it the history and the verdicts."""

    policy: DraftPolicy

    def extend(self, tokens: list[int]) -> None:
        """Tokens appended to the sequence's history (the prompt, then each emitted token)."""

    def propose(self) -> list[int]:
        """The next draft (possibly empty), at most ``policy.length`` tokens."""
        ...

    def record(self, drafted: int, accepted: int) -> None:
        """How many of the last ``drafted`` tokens the target model accepted."""


class DraftPolicy:
    def __init__(self, max_draft: int, window: int = 16, token_cost: float = 0.65,
                 cooldown: int = 64, start: int = 2) -> None:
        self.max_draft = max_draft
        self.length = min(start, max_draft)
        self.window, self.token_cost, self.cooldown = window, token_cost, cooldown
        self._drafted = 0
        self._yield = self._cost = 0.0
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
        self._yield += 1 + accepted
        self._cost += 1 + self.token_cost * drafted
        self.total_drafted += drafted
        self.total_accepted += accepted
        if self._drafted >= self.window:
            if self._yield < self._cost:
                self._paused = self.cooldown
            self._drafted = 0
            self._yield = self._cost = 0.0
