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
    (("--prefill-chunk-backlog", "7"), "--prefill-chunk-backlog"),
    (("--prefill-chunk-backlog", "many"), "--prefill-chunk-backlog"),
    (("--n-gpu-layers", "-2"), "--n-gpu-layers"),
    (("--main-gpu", "99"), "--main-gpu 99: no such GPU; llama.cpp sees"),
    (("--tensor-split", ",".join(["1"] * 17)), "--tensor-split has 17 shares; llama.cpp sees"),
    (("--tensor-split", "-1"), "--tensor-split: shares must be >= 0"),
    (("--tensor-split", "0,0"), "--tensor-split: shares must be >= 0 and not all 0"),
    (("--tensor-split", "fast"), "--tensor-split"),
    (("--flash-attn", "maybe"), "--flash-attn"),
    (("--cache-type-k", "q5_1"), "--cache-type-k"),
    (("--cache-type-v", "bf16"), "--cache-type-v"),
    (("--cache-type-v", "q8_0", "--flash-attn", "off"), "--cache-type-v q8_0 needs flash attention"),
    (("--ssl-certfile", "/nonexistent/cert.pem", "--ssl-keyfile", "/nonexistent/key.pem"),
     "--ssl-certfile /nonexistent/cert.pem: no such file"),
    (("--ssl-certfile", __file__), "--ssl-certfile and --ssl-keyfile go together"),
    (("--max-connections", "-1"), "--max-connections"),
    (("--model", "/nonexistent/x.gguf"), "--model /nonexistent/x.gguf: no such file"),
    (("--log-format", "xml"), "--log-format"),
    (("--streams-lookup-format", "ollama"), "--streams-lookup-format"),
])
def test_bad_setting_exits_2_with_one_clear_line(args, says):
    r = serve(*args)
    assert r.returncode == 2
    assert says in r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
