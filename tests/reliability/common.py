"""Shared helpers of the reliability tests: scenario sizes, server probes, one-line summaries.

Every scenario runs in two variants: ``ci`` (bounded: the whole directory in a few minutes on a
2-core box) and ``long`` (marked ``pytest.mark.long``; ``make test-long``). Setting
``FERRY_RELIABILITY_SCALE=long`` gives the ``ci`` variant the long sizes too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
import pytest

SIZES: dict[str, dict[str, Any]] = {
    "ci": {"storm_clients": 40, "soak_seconds": 45.0, "fuzz_rounds": 1, "slowloris": 16,
           "crash_rounds": 1, "overload_waves": 3, "prompt_repeats": 1},
    "long": {"storm_clients": 200, "soak_seconds": 600.0, "fuzz_rounds": 5, "slowloris": 64,
             "crash_rounds": 4, "overload_waves": 15, "prompt_repeats": 5},
}

SCALES = ["ci", pytest.param("long", marks=pytest.mark.long)]


def sizes(scale: str) -> dict[str, Any]:
    if os.environ.get("FERRY_RELIABILITY_SCALE") == "long":
        scale = "long"
    return SIZES[scale]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def busy(url: str) -> int:
    """Sequences running or waiting, over all models (GET /health)."""
    h = httpx.get(url + "/health", timeout=10).json()
    return sum((m["running"] or 0) + (m["waiting"] or 0) for m in h["models"].values())


def wait_idle(url: str, timeout: float) -> float:
    """Seconds until no sequence runs or waits; raises AssertionError after ``timeout``."""
    t0 = time.monotonic()
    while (n := busy(url)) and time.monotonic() - t0 < timeout:
        time.sleep(0.1)
    assert n == 0, f"{n} sequences still running/waiting after {timeout}s"
    return time.monotonic() - t0


def settle_rss(pid: int, seconds: float = 2.0) -> int:
    """RSS after letting the allocator settle (min over a short window, in KiB)."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(rss_kib(pid))
        time.sleep(0.2)
    return min(samples)


def summary(name: str, **numbers: Any) -> None:
    """The one-line result of a scenario (pytest -s shows it)."""
    parts = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in numbers.items())
    print(f"\n[reliability] {name}: {parts}", flush=True)
