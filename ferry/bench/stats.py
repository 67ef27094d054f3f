"""Pure statistics for the benchmark: per-request measurements in, per-level summary out.

Invariants:
- Times are in seconds everywhere in this module; only ``report`` converts to milliseconds.
- A failed request contributes to ``errors`` and nothing else (no tokens, no latencies).
- Throughput is total output tokens of successful requests divided by the level's wall time
  (first request sent to last request finished), so it is the rate a server sustains under that
  concurrency, not a sum of per-request rates.
- ITL percentiles are taken over every gap between consecutive content chunks of every
  successful request pooled together, not averaged per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class RequestResult:
    """One streamed request. ``error`` is None when the stream completed with ``[DONE]``."""

    error: str | None = None
    ttft_s: float | None = None  # send -> first content chunk
    gaps_s: list[float] = field(default_factory=list)  # between consecutive content chunks
    output_tokens: int = 0  # from usage, else the number of content chunks
    e2e_s: float | None = None  # send -> end of stream
    finish_reason: str | None = None
    text: str = ""  # the streamed content (multi-turn runs send it back as history)
    turn: int = 0  # multi-turn runs: 0 for a conversation's first request

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class LevelSummary:
    """One target at one concurrency level."""

    concurrency: int
    requests: int
    errors: int
    short: int  # successful streams with fewer output tokens than max_tokens
    wall_s: float
    output_tokens: int
    output_tok_s: float
    requests_s: float
    ttft_p50_s: float | None
    ttft_p99_s: float | None
    itl_p50_s: float | None
    itl_p99_s: float | None
    e2e_p50_s: float | None
    first_error: str | None
    # multi-turn runs: TTFT of first turns and of follow-up turns, separately
    first_ttft_p50_s: float | None = None
    first_ttft_p99_s: float | None = None
    follow_ttft_p50_s: float | None = None
    follow_ttft_p99_s: float | None = None


def percentile(values: list[float], p: float) -> float | None:
    """Linear-interpolation percentile (numpy's default method); None for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {p}")
    if not values:
        return None
    ordered = sorted(values)
    rank = p / 100 * (len(ordered) - 1)
    lo, hi = math.floor(rank), math.ceil(rank)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (rank - lo)


def tokens_per_second(tokens: int, wall_s: float) -> float:
    """Output tokens per second of wall time; 0 when nothing was timed."""
    return tokens / wall_s if wall_s > 0 else 0.0


def summarize(
    results: list[RequestResult], *, concurrency: int, wall_s: float, max_tokens: int
) -> LevelSummary:
    """Fold one level's request results into its summary."""
    ok = [r for r in results if r.ok]
    failed = [r for r in results if not r.ok]
    ttfts = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    e2es = [r.e2e_s for r in ok if r.e2e_s is not None]
    tokens = sum(r.output_tokens for r in ok)
    first = [r.ttft_s for r in ok if r.ttft_s is not None and r.turn == 0]
    follow = [r.ttft_s for r in ok if r.ttft_s is not None and r.turn > 0]
    multi_turn = any(r.turn for r in results)  # columns stay even if every follow-up failed
    by_turn = {
        "first_ttft_p50_s": percentile(first, 50), "first_ttft_p99_s": percentile(first, 99),
        "follow_ttft_p50_s": percentile(follow, 50), "follow_ttft_p99_s": percentile(follow, 99),
    } if multi_turn else {}  # fmt: skip
    return LevelSummary(
        concurrency=concurrency,
        requests=len(results),
        errors=len(failed),
        short=sum(1 for r in ok if r.output_tokens < max_tokens),
        wall_s=wall_s,
        output_tokens=tokens,
        output_tok_s=tokens_per_second(tokens, wall_s),
        requests_s=len(ok) / wall_s if wall_s > 0 else 0.0,
        ttft_p50_s=percentile(ttfts, 50),
        ttft_p99_s=percentile(ttfts, 99),
        itl_p50_s=percentile(gaps, 50),
        itl_p99_s=percentile(gaps, 99),
        e2e_p50_s=percentile(e2es, 50),
        first_error=failed[0].error if failed else None,
        **by_turn,
    )
