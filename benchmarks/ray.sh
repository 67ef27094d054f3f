#!/usr/bin/env bash
# Ferry on Ray Serve vs plain `ferry serve`, measured side by side (RESULTS.md, "Ray Serve"):
#   1. overhead of the Ray path (front door -> deployment handle -> 1 engine replica) at c=1 and
#      c=8, `ferry bench --rounds` alternating the two targets;
#   2. the multi-turn scenario with 2 engine replicas, routing on (the deployment's own front
#      door, --ray-routing cache) vs off (a second front door, --ray-routing random), both on the
#      same replicas (benchmarks/multiturn.py, alternating rounds).
#
#   bash benchmarks/ray.sh overhead      # part 1
#   bash benchmarks/ray.sh multiturn     # part 2
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REDIS_PORT=${REDIS_PORT:-6392}
WORK=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait || true; rm -rf "$WORK"; }
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --dir "$WORK" >/dev/null &
pids+=($!)
STORE=redis://127.0.0.1:$REDIS_PORT/0

healthy() {  # URL: wait until /health answers 200
  for _ in $(seq 1 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -m 30 "$1/health")" = 200 ] && return 0
    sleep 1
  done
  echo "not healthy: $1" >&2; return 1
}

case "${1:-overhead}" in
overhead)
  $PY -m ferry serve --port 18200 --parallel 8 --threads 2 >"$WORK/plain.log" 2>&1 &
  pids+=($!)
  $PY -m ferry serve --ray --replicas 1 --replica-cpus 1 --parallel 8 --threads 2 \
      --stream-store "$STORE" --port 18201 >"$WORK/ray.log" 2>&1 &
  pids+=($!)
  healthy http://127.0.0.1:18200 && healthy http://127.0.0.1:18201
  $PY -m ferry bench --url http://127.0.0.1:18200 --url http://127.0.0.1:18201 \
      --concurrency 1,8 --rounds "${ROUNDS:-3}" --max-tokens 128 --warmup 2 "${@:2}"
  ;;
multiturn)
  common=(--parallel 4 --threads 1 --stream-store "$STORE")
  $PY -m ferry serve --ray --replicas 2 --replica-cpus 0.5 "${common[@]}" --port 18300 \
      >"$WORK/ray.log" 2>&1 &
  pids+=($!)
  healthy http://127.0.0.1:18300
  $PY -m ferry serve --front-door-only --ray-routing random "${common[@]}" --port 18301 \
      >"$WORK/random.log" 2>&1 &
  pids+=($!)
  healthy http://127.0.0.1:18301
  $PY benchmarks/multiturn.py --url http://127.0.0.1:18300 --url http://127.0.0.1:18301 \
      --conversations "${CONVERSATIONS:-8}" --turns 4 --rounds "${ROUNDS:-3}" "${@:2}"
  ;;
*) echo "usage: $0 overhead|multiturn [extra args]" >&2; exit 2 ;;
esac
