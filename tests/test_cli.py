"""``ferry serve`` refuses bad settings before loading anything: exit 2, one clear line, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferry", "serve", *args], check=False,
                          capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize(("args", "says"), [
    (("--speculative", "draft"), "--speculative draft needs --draft-model"),
    (("--speculative", "draft", "--draft-model", "/nonexistent/draft.gguf"), "no such file"),
    (("--mmproj", "/nonexistent/mmproj.gguf"), "--mmproj /nonexistent/mmproj.gguf: no such file"),
    (("--speculative", "medusa"), "--speculative"),
    (("--draft-max", "0"), "--draft-max"),
    (("--draft-max", "65"), "--draft-max"),
    (("--parallel", "0"), "--parallel"),
    (("--ssl-certfile", "/nonexistent/cert.pem", "--ssl-keyfile", "/nonexistent/key.pem"),
     "--ssl-certfile /nonexistent/cert.pem: no such file"),
    (("--ssl-certfile", __file__), "--ssl-certfile and --ssl-keyfile go together"),
    (("--max-connections", "-1"), "--max-connections"),
    (("--log-format", "xml"), "--log-format"),
    (("--streams-lookup-format", "ollama"), "--streams-lookup-format"),
])
def test_bad_setting_exits_2_with_one_clear_line(args, says):
    r = serve(*args)
    assert r.returncode == 2
    assert says in r.stderr
    assert "Traceback" not in r.stderr
