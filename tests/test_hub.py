"""Models by name through huggingface_hub, against a local stand-in of the Hub (``HF_ENDPOINT``)
that serves the bundled GGUF: download with progress at start-up, the cache (a second start makes
no request), offline starts, one-line exit 2 for bad names, and the load route."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import FerryServer
from hub_standin import HubStandIn

from ferry import hub
from ferry.engine.model import bundled_model_path

GGUF = Path(bundled_model_path())
REPO = "ferry-test/SmolLM2-135M-Instruct-GGUF"
PRIVATE = "ferry-test/private-GGUF"
TOKEN = "hf_test_token_123"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MSG = [{"role": "user", "content": "Say hello"}]


@pytest.fixture(scope="module")
def standin():
    # the Q8_0 entry is listed, never downloaded: it shows that the tag picks the file
    s = HubStandIn({REPO: {FILE: GGUF, "SmolLM2-135M-Instruct.Q8_0.gguf": GGUF,
                           "README.md": Path(__file__)},
                    PRIVATE: {FILE: GGUF}}, private={PRIVATE: TOKEN})
    yield s
    s.close()


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("hf_home")


def hub_env(standin: HubStandIn, home: Path, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": standin.url, "HF_HOME": str(home), "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": "10", **extra}


def serve_exit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run([sys.executable, "-m", "ferry", "serve", "--port", "0", *args],
                          check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def chat_ok(server: FerryServer, model: str) -> None:
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60,
                   json={"model": model, "messages": MSG, "max_tokens": 4})
    assert r.status_code == 200, r.text
    assert r.json()["model"] == model


def test_a_name_downloads_with_progress_then_starts_from_the_cache_and_offline(standin, hf_home):
    env = hub_env(standin, hf_home)
    first = FerryServer("--model", f"{REPO}:Q4_1", "--log-format", "json", env=env)
    try:
        chat_ok(first, f"{REPO}:Q4_1")
        ids = [m["id"] for m in httpx.get(first.url + "/v1/models").json()["data"]]
        assert f"{REPO}:Q4_1" in ids
    finally:
        first.stop()
    lines = [json.loads(x)["message"] for x in first.log().splitlines() if x.strip()]
    assert any(x.startswith(f"downloaded {FILE} from {REPO}") for x in lines)
    # huggingface_hub's progress bar, as log lines off a terminal
    assert any("Q4_1.gguf: 100%" in x for x in lines), lines
    assert f"GET /{REPO}/resolve/main/{FILE}" in standin.requests
    assert not any("Q8_0" in r for r in standin.requests)
    blobs = list((hf_home / "hub").rglob(FILE))
    assert blobs and blobs[0].stat().st_size == GGUF.stat().st_size

    seen = len(standin.requests)
    for extra in ({}, {"HF_HUB_OFFLINE": "1"}):  # cached: no request, online or offline
        again = FerryServer("--model", f"{REPO}:Q4_1", env={**env, **extra})
        try:
            chat_ok(again, f"{REPO}:Q4_1")
        finally:
            again.stop()
        assert len(standin.requests) == seen, standin.requests[seen:]

    url = FerryServer("--model", f"hf://{REPO}/{FILE}", env={**env, "HF_HUB_OFFLINE": "1"})
    try:
        chat_ok(url, f"{REPO}/{FILE.removesuffix('.gguf')}")
    finally:
        url.stop()
    assert len(standin.requests) == seen


@pytest.mark.parametrize(("model", "extra", "says"), [
    ("ferry-test/no-such-repo:Q4_K_M", {}, "no such repository"),
    ("models/my-model", {}, "no such repository (or it is private: set HF_TOKEN); nor a local"),
    (f"{REPO}:Q5_K_S", {}, "no Q5_K_S file; the repository has SmolLM2-135M-Instruct.Q4_1.gguf"),
    (REPO, {}, "several GGUF files"),
    (f"hf://{REPO}/missing.gguf", {}, "no such file in the repository"),
    (f"{REPO}:Q8_0", {"HF_HUB_OFFLINE": "1"}, "not in the Hugging Face cache"),
    ("hf://only-org", {}, "expected hf://ORG/REPO"),
])
def test_a_bad_or_missing_name_is_one_line_and_exit_2(standin, tmp_path, model, extra, says):
    r = serve_exit("--model", model, env=hub_env(standin, tmp_path, **extra))
    assert r.returncode == 2, r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("ferry serve: error: "), r.stderr
    assert says in lines[0]


def test_a_private_repo_needs_hf_token(standin, tmp_path):
    r = serve_exit("--model", f"{PRIVATE}:Q4_1", env=hub_env(standin, tmp_path / "a"))
    assert r.returncode == 2 and "private: set HF_TOKEN" in r.stderr
    s = FerryServer("--model", f"{PRIVATE}:Q4_1",
                    env=hub_env(standin, tmp_path / "b", HF_TOKEN=TOKEN))
    try:
        chat_ok(s, f"{PRIVATE}:Q4_1")
    finally:
        s.stop()


def test_the_default_model_of_a_models_config_downloads_at_start_up(standin, tmp_path):
    cfg = tmp_path / "models.yaml"
    cfg.write_text(f"models:\n  - path: hf://{REPO}/{FILE}\n    kind: chat\n")
    s = FerryServer("--models-config", str(cfg), env=hub_env(standin, tmp_path / "home"))
    try:
        chat_ok(s, f"{REPO}/{FILE.removesuffix('.gguf')}")
    finally:
        s.stop()


def test_a_config_model_is_fetched_by_the_load_route_never_by_a_request(standin, tmp_path):
    cfg = tmp_path / "models.yaml"
    cfg.write_text(f"models:\n  - alias: hubbed\n    path: {REPO}:Q4_1\n    kind: chat\n")
    s = FerryServer("--model", str(GGUF), "--models-config", str(cfg),
                    env=hub_env(standin, tmp_path / "home"))
    try:
        with httpx.Client(base_url=s.url, timeout=120) as c:
            before = len(standin.requests)
            r = c.post("/v1/chat/completions", json={"model": "hubbed", "messages": MSG})
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "model_not_downloaded"
            assert "/v1/models/hubbed/load" in r.json()["error"]["message"]
            assert len(standin.requests) == before  # a request never downloads
            r = c.post("/v1/models/hubbed/load")
            assert r.status_code == 200 and r.json()["state"] == "loaded"
            assert len(standin.requests) > before
            assert c.post("/v1/chat/completions", json={
                "model": "hubbed", "messages": MSG, "max_tokens": 4}).status_code == 200
    finally:
        s.stop()


# --- name parsing and file choice (pure) ----------------------------------------------------

def test_names_parse_into_repo_revision_and_quant_or_file(tmp_path):
    assert hub.parse("org/repo:Q4_K_M") == hub.HubRef("org/repo", quant="Q4_K_M")
    assert hub.parse("org/repo@v1.0:q8_0") == hub.HubRef("org/repo", "v1.0", quant="q8_0")
    assert hub.parse("hf://org/repo/sub/x.gguf") == hub.HubRef("org/repo", filename="sub/x.gguf")
    assert hub.parse("hf://org/repo@abc/x.gguf") == hub.HubRef("org/repo", "abc", "x.gguf")
    assert hub.parse("models/local.gguf") is None  # a path, even if missing
    local = tmp_path / "org"
    (local / "repo").mkdir(parents=True)
    assert hub.parse(str(local / "repo")) is None  # an existing path wins


def test_the_tag_picks_one_file_or_all_parts_of_a_split_model():
    files = ["a-Q4_K_M.gguf", "a-Q4_K.gguf", "a-Q8_0-00001-of-00002.gguf",
             "a-Q8_0-00002-of-00002.gguf", "mmproj-a-Q4_K_M.gguf", "README.md"]
    assert hub._pick(hub.HubRef("o/r", quant="q4_k_m"), files) == ["a-Q4_K_M.gguf"]
    assert hub._pick(hub.HubRef("o/r", quant="Q4_K"), files) == ["a-Q4_K.gguf"]
    assert hub._pick(hub.HubRef("o/r", quant="Q8_0"), files) == [
        "a-Q8_0-00001-of-00002.gguf", "a-Q8_0-00002-of-00002.gguf"]
    assert hub._pick(hub.HubRef("o/r"), files) == ["a-Q4_K_M.gguf"]  # llama.cpp's default tag
    assert hub._pick(hub.HubRef("o/r"), ["only-Q2_K.gguf"]) == ["only-Q2_K.gguf"]
    with pytest.raises(hub.HubError, match="several files match"):
        hub._pick(hub.HubRef("o/r", quant="Q4_0"), ["x/a-Q4_0.gguf", "y/b-Q4_0.gguf"])
