"""Rendering of benchmark rows: a fixed-width table for people, a JSON document for machines.

Ratios compare each target with the first target at the same concurrency level (first = 1.00);
they are computed here only, from one interleaved run.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass
from typing import Any

from ferry.bench.stats import LevelSummary


@dataclass
class Row:
    target: str
    url: str
    summary: LevelSummary
    round: int = 0


def _first_values(rows: list[Row], value) -> list[float | None]:
    """For each row, ``value`` of the first target's summary at the same concurrency and round."""
    base: dict[tuple[int, int], float] = {}
    for row in rows:
        if row.target == rows[0].target:
            base.setdefault((row.summary.concurrency, row.round), value(row.summary))
    return [base.get((row.summary.concurrency, row.round)) for row in rows]


def ratios(rows: list[Row]) -> list[float | None]:
    """Output tok/s of each row over the first target's at the same concurrency and round."""
    firsts = _first_values(rows, lambda s: s.output_tok_s)
    return [row.summary.output_tok_s / b if b else None for row, b in zip(rows, firsts)]


def ttft_ratios(rows: list[Row]) -> list[float | None]:
    """The first target's TTFT p50 over each row's, at the same concurrency and round: how many
    times faster a row reaches its first token (prefill speed when prompts are long)."""
    firsts = _first_values(rows, lambda s: s.ttft_p50_s)
    return [b / row.summary.ttft_p50_s if b and row.summary.ttft_p50_s else None
            for row, b in zip(rows, firsts)]


def round_summary(rows: list[Row]) -> str:
    """With several rounds: each target's tok/s ratio and TTFT speed ratio per round, and their
    medians, per level."""
    if len({r.round for r in rows}) < 2:
        return ""
    per: dict[tuple[int, str], list[float]] = {}
    fast: dict[tuple[int, str], list[float]] = {}
    for row, ratio, speed in zip(rows, ratios(rows), ttft_ratios(rows), strict=True):
        if ratio is not None:
            per.setdefault((row.summary.concurrency, row.target), []).append(ratio)
        if speed is not None:
            fast.setdefault((row.summary.concurrency, row.target), []).append(speed)
    lines: list[str] = []
    for title, groups in (("x first by round (median):", per),
                          ("TTFT p50 speed, first's TTFT / target's, by round (median):", fast)):
        lines += ["", title]
        for (conc, target), rs in groups.items():
            lines.append(f"  c={conc:<3} {target:<16} {statistics.median(rs):.3f}  "
                         f"[{', '.join(f'{r:.2f}' for r in rs)}]")
    return "\n".join(lines)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


COLUMNS = (
    "target", "conc", "reqs", "err", "short", "tok/s", "x first", "req/s",
    "TTFT p50", "TTFT p99", "ITL p50", "ITL p99",
)  # fmt: skip


TURN_COLUMNS = ("1st TTFT p50", "1st TTFT p99", "follow TTFT p50", "follow TTFT p99")


def table(rows: list[Row]) -> str:
    """Fixed-width table; latencies in milliseconds; a ``round`` column when there are rounds,
    first-turn and follow-up TTFT columns for multi-turn runs."""
    rounds = len({r.round for r in rows}) > 1
    turns = any(s.first_ttft_p50_s is not None or s.follow_ttft_p50_s is not None
                for s in (r.summary for r in rows))
    columns = (list(COLUMNS[:1]) + ["round"] * rounds + list(COLUMNS[1:])
               + list(TURN_COLUMNS) * turns)
    lines = [columns]
    for row, ratio in zip(rows, ratios(rows), strict=True):
        s = row.summary
        lines.append([row.target] + [str(row.round)] * rounds + [
            str(s.concurrency), str(s.requests), str(s.errors), str(s.short),
            f"{s.output_tok_s:.1f}", "-" if ratio is None else f"{ratio:.2f}", f"{s.requests_s:.2f}",
            _ms(s.ttft_p50_s), _ms(s.ttft_p99_s), _ms(s.itl_p50_s), _ms(s.itl_p99_s),
        ] + [_ms(s.first_ttft_p50_s), _ms(s.first_ttft_p99_s), _ms(s.follow_ttft_p50_s),
             _ms(s.follow_ttft_p99_s)] * turns)  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    text = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(line, widths))
        )
        for line in lines
    ]
    text.insert(1, "-" * len(text[0]))
    errors = [f"{r.target} c={r.summary.concurrency}: {r.summary.first_error}" for r in rows
              if r.summary.first_error]  # fmt: skip
    footer = ["", "latencies in ms; x first = tok/s relative to the first target at that level"
              + (" and round" if rounds else "")]
    return "\n".join(text + footer + [f"first error: {e}" for e in errors]) + round_summary(rows)


def document(rows: list[Row], config: dict[str, Any]) -> str:
    """JSON: the run's configuration and one object per (target, concurrency)."""
    results = [
        {"target": r.target, "url": r.url, "round": r.round, **asdict(r.summary),
         "ratio_tok_s": ratio}
        for r, ratio in zip(rows, ratios(rows), strict=True)
    ]
    return json.dumps({"config": config, "results": results}, indent=2)
