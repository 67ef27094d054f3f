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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FerryServer:
    """A real `python -m ferry serve` process."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = ["--port", str(self.port), "--threads", "2", *args]
        self.log_path = Path(os.environ.get("FERRY_TEST_LOGS", "/tmp")) / f"ferry-{self.port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "ferry", "serve", *self.args],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={"OMP_WAIT_POLICY": "passive", **os.environ, **(env or {})},
                                     cwd=ROOT)
        self.wait_ready()

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ferry exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"ferry not ready: {self.log_path.read_text()[-3000:]}")

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


@pytest.fixture(scope="session")
def aclient(server: FerryServer):
    import openai

    return openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                              _strict_response_validation=True, timeout=120)


@pytest.fixture
def http(server: FerryServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c
