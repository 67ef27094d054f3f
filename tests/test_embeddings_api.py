"""POST /v1/embeddings end to end: the official openai client (strict), raw responses validated
against the OpenAI spec, and sentence-transformers reference vectors."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
from openai_spec import validate

MODEL = "all-minilm-l6-v2"
REF = json.loads((Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text())


def cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# the reference's last sentence is "": OpenAI (and Ferry) answer 400 for an empty input
TEXTS = [t for t in REF["sentences"] if t]


@pytest.fixture(scope="module")
def api_vectors(client) -> np.ndarray:
    r = client.embeddings.create(model=MODEL, input=TEXTS, encoding_format="float")
    return np.array([d.embedding for d in r.data])


def test_vectors_match_sentence_transformers(api_vectors):
    assert len(api_vectors) == len(TEXTS) >= 10
    for got, want in zip(api_vectors, REF["vectors"], strict=False):
        assert cos(got, want) >= 0.999


def test_paraphrases_are_closer_than_unrelated_sentences(api_vectors):
    para = [cos(api_vectors[i], api_vectors[j]) for i, j in REF["paraphrase_pairs"]]
    unrel = [cos(api_vectors[i], api_vectors[j]) for i, j in REF["unrelated_pairs"]]
    assert min(para) > max(unrel) + 0.2


def test_base64_default_equals_float_vectors(client, server):
    import openai

    # The client asks for base64 by default and decodes it in a post-parser that runs after
    # validation, so strict mode rejects any base64 body (OpenAI's own included: `embedding`
    # is typed list[float]); the default call is made with the SDK in its default mode.
    lax = openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0)
    texts = REF["sentences"][:3]
    b64 = lax.embeddings.create(model=MODEL, input=texts)
    flt = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    for a, b in zip(b64.data, flt.data, strict=True):
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=0, atol=1e-6)
    assert b64.usage.prompt_tokens == flt.usage.prompt_tokens


def test_base64_is_little_endian_float32_of_the_float_vector(http):
    body = {"model": MODEL, "input": "hello"}
    raw = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    flt = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    b64 = raw["data"][0]["embedding"]
    assert isinstance(b64, str)
    got = np.frombuffer(base64.b64decode(b64), dtype="<f4")
    assert got.tolist() == flt["data"][0]["embedding"]


def test_batch_keeps_order_and_indexes(client):
    texts = ["first sentence", "a second, longer sentence here", "third"]
    r = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2]
    assert r.model == MODEL and r.object == "list"
    singles = [client.embeddings.create(model=MODEL, input=t, encoding_format="float")
               for t in texts]
    for d, s in zip(r.data, singles, strict=True):
        assert cos(d.embedding, s.data[0].embedding) > 0.9999
    assert r.usage.prompt_tokens == sum(s.usage.prompt_tokens for s in singles)
    assert r.usage.total_tokens == r.usage.prompt_tokens


def test_token_input_equals_string_input(client, http):
    text = "The cat sat on the mat."
    # WordPiece ids of the text without [CLS]/[SEP], from the string request's own token count
    s = client.embeddings.create(model=MODEL, input=text, encoding_format="float")
    from ferry.embeddings import EmbeddingModel  # tokenizer only; the vectors come from the API

    ids = EmbeddingModel.bundled().tokenize(text)
    one = client.embeddings.create(model=MODEL, input=ids, encoding_format="float")
    many = client.embeddings.create(model=MODEL, input=[ids, ids], encoding_format="float")
    assert cos(one.data[0].embedding, s.data[0].embedding) > 0.9999
    assert len(many.data) == 2 and one.usage.prompt_tokens == s.usage.prompt_tokens == len(ids) + 2


def test_usage_is_exact(client):
    r = client.embeddings.create(model=MODEL, input=["hello world", "hi"], encoding_format="float")
    # [CLS] hello world [SEP] + [CLS] hi [SEP]
    assert r.usage.prompt_tokens == r.usage.total_tokens == 4 + 3


def test_raw_response_validates_against_the_spec(http):
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": ["a", "b"]})
    assert r.status_code == 200
    body = r.json()
    validate(body, "CreateEmbeddingResponse")
    assert len(body["data"][0]["embedding"]) == 384


@pytest.mark.parametrize(("body", "param"), [
    ({"model": MODEL, "input": ""}, "input"),
    ({"model": MODEL, "input": []}, "input"),
    ({"model": MODEL, "input": ["ok", ""]}, "input"),
    ({"model": MODEL, "input": [[]]}, "input"),
    ({"model": MODEL, "input": [1.5]}, "input"),
    ({"model": MODEL, "input": [True]}, "input"),
    ({"model": MODEL, "input": 7}, "input"),
    ({"model": MODEL, "input": [[1, 2], "x"]}, "input"),
    ({"model": MODEL, "input": [999999]}, "input"),
    ({"model": MODEL, "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ({"model": MODEL, "input": "x", "dimensions": 0}, "dimensions"),
    ({"model": MODEL, "input": "x", "dimensions": 128}, "dimensions"),
    ({"model": MODEL, "input": "word " * 600}, "input"),
    ({"input": "x"}, "model"),
    ({"model": 5, "input": "x"}, "model"),
])
def test_bad_input_is_400_naming_the_parameter(http, body, param):
    r = http.post("/v1/embeddings", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param, err


def test_dimensions_equal_to_the_model_width_is_accepted(http):
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 384})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384


def test_chat_model_on_embeddings_is_a_clear_400(http):
    r = http.post("/v1/embeddings", json={"model": "default", "input": "x"})
    assert r.status_code == 400
    assert "chat model" in r.json()["error"]["message"]


def test_unknown_embedding_model_is_404(http):
    r = http.post("/v1/embeddings", json={"model": "text-embedding-9", "input": "x"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
