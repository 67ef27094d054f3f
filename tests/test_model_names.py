"""Drop-in model names: ``--alias NAME=MODEL`` and ``--any-model``, so apps that hard-code OpenAI's
model names work with only the base URL changed; without them an unknown name is a 404 that
lists the served ids."""

from __future__ import annotations

import shutil
import subprocess
import sys

import httpx
import openai
import pytest
from conftest import FerryServer, anthropic_client
from openai_spec import validate

MSG = [{"role": "user", "content": "Say hello"}]


def client_for(server: FerryServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0,
                         _strict_response_validation=True, timeout=120)


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> bytes:
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is required: apt-get install -y espeak-ng")
    wav = tmp_path_factory.mktemp("speech") / "hello.wav"
    subprocess.run(["espeak-ng", "-s", "140", "-w", str(wav), "Good morning everyone"],
                   check=True)
    return wav.read_bytes()


@pytest.fixture(scope="module")
def dropin():
    s = FerryServer("--parallel", "2", "--any-model", "--alias", "gpt-4o-mini=default",
                    "--alias", "my-embedder=all-minilm-l6-v2", "--alias", "my-ears=whisper-1")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def strict():
    s = FerryServer("--parallel", "2", "--alias", "gpt-4o-mini=default")
    yield s
    s.stop()


def test_any_model_answers_openai_names_through_the_official_client(dropin, speech_wav):
    client = client_for(dropin)
    chat = client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=8)
    assert chat.choices[0].message.content
    # strict validation runs before the SDK decodes its default base64: ask for floats
    emb = client.embeddings.create(model="text-embedding-3-small", input="hello",
                                   encoding_format="float")
    assert len(emb.data[0].embedding) == 384  # the bundled all-MiniLM-L6-v2
    text = client.audio.transcriptions.create(model="whisper-1", file=("a.wav", speech_wav))
    assert "morning" in text.text.lower()
    other = client.audio.transcriptions.create(model="gpt-4o-transcribe",
                                               file=("a.wav", speech_wav))
    assert other.text == text.text


def test_any_model_streams_and_completions_too(dropin):
    client = client_for(dropin)
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="gpt-4.1", messages=MSG, max_tokens=8, stream=True) if c.choices]
    assert "".join(parts)
    assert client.completions.create(model="gpt-3.5-turbo-instruct", prompt="One, two,",
                                     max_tokens=4).choices[0].text


def test_any_model_serves_the_responses_and_anthropic_apis_under_their_names(dropin):

    r = client_for(dropin).responses.create(model="gpt-4o", input="Say hello",
                                            max_output_tokens=16)
    assert r.status in ("completed", "incomplete") and r.output
    anth = anthropic_client(dropin.url)
    m = anth.messages.create(model="claude-haiku-4-5", max_tokens=8, messages=MSG)
    assert m.content and m.content[0].type == "text"


def test_any_model_keeps_a_known_model_of_another_kind_a_400(dropin):
    r = httpx.post(dropin.url + "/v1/chat/completions", timeout=60,
                   json={"model": "all-minilm-l6-v2", "messages": MSG})
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_supported"


def test_aliases_are_listed_by_models_and_serve_their_model(dropin):
    client = client_for(dropin)
    listed = {m.id: m for m in client.models.list().data}
    assert {"gpt-4o-mini", "my-embedder", "my-ears"} <= set(listed)
    body = httpx.get(dropin.url + "/v1/models").json()
    validate(body, "ListModelsResponse")
    kinds = {m["id"]: m["kind"] for m in body["data"]}
    assert (kinds["gpt-4o-mini"], kinds["my-embedder"], kinds["my-ears"]) == (
        "chat", "embedding", "transcription")
    assert client.models.retrieve("gpt-4o-mini").id == "gpt-4o-mini"
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=4)
    assert client.embeddings.create(model="my-embedder", input="hi",
                                    encoding_format="float").data[0].embedding


def test_without_any_model_an_unknown_name_is_a_404_listing_the_ids(strict):
    client = client_for(strict)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=MSG, max_tokens=4)
    err = e.value.body
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "gpt-4o" in err["message"]
    ids = [m.id for m in client.models.list().data if m.id in err["message"]]
    assert {"SmolLM2-135M-Instruct.Q4_1", "gpt-4o-mini"} <= set(ids)
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert client.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=4)


@pytest.mark.parametrize(("alias", "says"), [
    ("gpt-4o", "--alias gpt-4o: expected NAME=MODEL"),
    ("=default", "expected NAME=MODEL"),
    ("gpt-4o=nope", "--alias gpt-4o=nope: no model 'nope' is served"),
])
def test_a_bad_alias_exits_2_with_one_line(alias, says):
    r = subprocess.run([sys.executable, "-m", "ferry", "serve", "--alias", alias], check=False,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
