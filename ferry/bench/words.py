"""Plain words the benchmark builds prompts from, and the words that set each request apart.

Invariant: ``lead_words(i)`` differs from ``lead_words(j)`` in its first word whenever ``i`` and
``j`` are closer than ``len(WORDS)``, and as a whole for any ``i != j`` below ``len(WORDS) ** 3``;
so prompts that start with them share no prefix beyond the chat template.
"""

from __future__ import annotations

WORDS = [
    "river", "harbor", "ferry", "engine", "captain", "island", "morning", "storm", "signal",
    "lantern", "cargo", "ticket", "bridge", "market", "station", "winter", "summer", "valley",
    "forest", "mountain", "village", "garden", "window", "letter", "journey", "silver",
    "copper", "timber", "granite", "meadow", "orchard", "canal", "lighthouse", "compass",
    "anchor", "rope", "sail", "deck", "tide", "current", "whale", "gull", "pier", "dock",
    "crane", "warehouse", "schedule", "passenger", "crew", "harbour", "bell", "mist", "fog",
    "rain", "thunder", "breeze", "sunrise", "sunset", "evening", "midnight", "season",
    "festival", "council", "mayor", "school", "library", "bakery", "mill", "forge", "quarry",
    "railway", "tunnel", "road", "path", "fence", "gate", "tower", "clock",
]  # fmt: skip


def lead_words(index: int) -> str:
    """Three words naming ``index`` in base ``len(WORDS)``, least significant digit first."""
    n = len(WORDS)
    digits = [WORDS[index // n**k % n] for k in range(3)]
    return " ".join(digits).capitalize()
