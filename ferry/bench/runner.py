"""Drives a benchmark run: for each concurrency level, each target in turn (interleaved).

Invariants:
- Order is level-major: level 1 runs every target, then level 8 runs every target, ... so a ratio
  between targets compares runs made minutes apart, never a whole run apart.
- With ``rounds`` > 1 each level is measured that many times, the target order reversed every
  other round (A B, B A, A B, ...), so a machine that slows down or speeds up during a level
  favours no target; ratios are taken within a round.
- A managed target is started for its level and stopped before the next target starts, so two
  servers never share the two cores during a measurement.
- Warm-up requests are sent after the server is healthy and are not measured.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

from ferry.bench.client import RequestSpec, discover_model, run_level
from ferry.bench.conversations import run_conversations
from ferry.bench.peers import ServerSettings, Target
from ferry.bench.report import Row
from ferry.bench.stats import summarize

MIN_REQUESTS = 8


@dataclass(frozen=True)
class BenchConfig:
    targets: list[Target]
    concurrencies: list[int]
    requests: int | None  # per level; None means max(MIN_REQUESTS, 2 * concurrency)
    spec: RequestSpec  # spec.model == "" means: ask each target's /v1/models
    warmup: int
    settings: ServerSettings | None  # None when no target is managed
    log_dir: Path
    rounds: int = 1
    turns: int = 0  # > 0: multi-turn scenario, levels are numbers of conversations
    parallel: int | None = None  # slots of started servers; None = the level

    def requests_for(self, concurrency: int) -> int:
        if self.turns:
            return concurrency * self.turns
        return self.requests if self.requests is not None else max(MIN_REQUESTS, 2 * concurrency)


class Progress:
    """One self-overwriting line on stderr, only when stderr is a terminal."""

    def __init__(self) -> None:
        self.enabled = sys.stderr.isatty()

    def show(self, label: str, done: int, total: int) -> None:
        if self.enabled:
            filled = 20 * done // max(total, 1)
            sys.stderr.write(f"\r{label:<28} [{'#' * filled:<20}] {done}/{total}")
            sys.stderr.flush()

    def clear(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()


async def _measure(
    target: Target, concurrency: int, config: BenchConfig, progress: Progress, round_: int = 0
) -> Row:
    """Serve ``target`` for this level (if managed), warm it up, measure it. Each round sends
    its own distinct prompts and conversations (indices after the previous round's), so a
    server that stays up across rounds (``--url``) has none of them cached."""
    total = config.requests_for(concurrency)
    first = round_ * (total + config.warmup)
    label = f"{target.name} c={concurrency}"
    progress.show(label + " (starting)", 0, total)
    slots = config.parallel or concurrency
    async with target.serving(slots, config.settings, config.log_dir) as url:
        spec = config.spec
        if target.endpoint is not None:
            spec = dataclasses.replace(spec, endpoint=target.endpoint)
        if not spec.model:
            spec = dataclasses.replace(spec, model=await discover_model(url, spec.api_key))
        if config.warmup:
            warm = dataclasses.replace(spec, max_tokens=min(spec.max_tokens, 8))
            # indices after the measured ones: a distinct warm-up prompt warms no measured one
            await run_level(url, warm, concurrency=1, n_requests=config.warmup,
                            first_index=first + total)

        def on_done(done: int) -> None:
            progress.show(label, done, total)

        if config.turns:
            results, wall_s = await run_conversations(
                url, spec, conversations=concurrency, turns=config.turns, first_index=first,
                on_done=on_done)
        else:
            results, wall_s = await run_level(
                url, spec, concurrency=concurrency, n_requests=total, first_index=first,
                on_done=on_done)
    progress.clear()
    summary = summarize(results, concurrency=concurrency, wall_s=wall_s, max_tokens=spec.max_tokens)
    return Row(target=target.name, url=url, summary=summary)


async def run_benchmark(config: BenchConfig, progress: Progress | None = None) -> list[Row]:
    """Measure every target at every level, interleaved; rows come out in run order."""
    progress = progress or Progress()
    rows: list[Row] = []
    try:
        for concurrency in config.concurrencies:
            for r in range(config.rounds):
                order = config.targets if r % 2 == 0 else config.targets[::-1]
                for target in order:
                    row = await _measure(target, concurrency, config, progress, r)
                    row.round = r
                    rows.append(row)
    finally:
        progress.clear()
    return rows
