"""Token constraints that force generated text to match a JSON schema (structured outputs).

The engine drives a constraint per sequence, each decode step::

    constraint.apply(logits)   # logits: float32 [n_vocab], disallowed tokens set to -inf in place
    tok = sample(...)          # the sequence's own sampler chain
    constraint.accept(tok)     # advance the grammar
    if constraint.is_complete(): finish with "stop"

Invariants:
- ``apply`` leaves at least one token finite while the constraint is not complete; end-of-generation
  tokens (``vocab.eos_ids``) are allowed only where the output so far is a complete match.
- ``accept`` never raises for a token the last ``apply`` allowed; a disallowed token is a caller
  bug and raises ``RuntimeError``.
- ``is_complete()`` is true once nothing but EOS may follow (e.g. after the closing ``}``) or after
  an EOS was accepted in an accepting state.
- Every schema keyword is either enforced or rejected with ``Unsupported`` naming it; nothing is
  silently left unenforced. Annotations (title, description, default, examples, ``x-*``...) are ignored.
- Whitespace is fixed: separators are ``", "`` and ``": "``, nothing else, so a small model cannot
  wander into endless whitespace.
- Compiled grammars are cached per (vocab, schema) so a repeated schema costs one ``deep_copy``.

Backend choice (measured on this shared 2-core CPU, SmolLM2-135M Q4_1, vocab 49152, batch of
one; ``python benchmarks/structured.py --runs 3 --max-tokens 64``, see benchmarks/RESULTS.md):
- llguidance 1.9.1 (Rust, no dependencies, 3 MB wheel, works offline): apply ≈ 180-210 µs p50
  (the native mask ≈ 160-190 µs + ≈ 20 µs to turn the bitmask into a -inf bias with one numpy
  gather), accept ≈ 7 µs; 0.97-0.98× the free decode rate (≈ 150 tok/s) on a quiet machine.
  Schema compile 1-150 ms on first use, 0.05 ms cached.
- llama.cpp's grammar sampler (``llama_sampler_init_grammar`` fed by llama-cpp-python's
  ``json_schema_to_gbnf``) first in the sampler chain: 0.49-0.57× the free rate, i.e. ≈ 5-7 ms
  extra per token, because it checks all 49152 candidates against the grammar stacks every step;
  and its converter silently drops keywords it cannot enforce (uniqueItems, multipleOf).
- xgrammar 0.2.8: not used; it hard-requires torch, transformers and triton (> 1 GB) for a CPU
  server that otherwise needs none of them.
Chosen: llguidance, which also validates schemas and reports unimplemented keywords.
"""

from __future__ import annotations

import ctypes
import json
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import llama_cpp
import llguidance
import numpy as np

from ferry.errors import InvalidRequest, Unsupported
from ferry.structured.schema_check import check_schema
from ferry.structured.vocab import TokenVocab

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions  # declared in the stub only

# The only whitespace a constrained output contains: one space after ',' and ':'.
_JSON_OPTIONS: JsonCompileOptions = {
    "whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
_CACHE_SIZE = 128
# Additive bias per mask byte: _BYTE_BIAS[b, k] is 0.0 if bit k of b is set, else -inf.
_BYTE_BIAS = np.where(
    np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little") == 1,
    np.float32(0.0),
    np.float32(-np.inf),
).astype(np.float32)


class TokenConstraint(Protocol):
    def apply(self, logits: np.ndarray) -> None: ...

    def accept(self, token: int) -> None: ...

    def is_complete(self) -> bool: ...


ConstraintFactory = Callable[[], TokenConstraint]


class LlgConstraint:
    """One sequence's position in a compiled grammar; not shared between sequences."""

    __slots__ = ("_mask", "_matcher", "_n_vocab")

    def __init__(self, matcher: llguidance.LLMatcher, n_vocab: int) -> None:
        self._matcher = matcher
        self._n_vocab = n_vocab
        self._mask = np.zeros((n_vocab + 31) // 32, dtype=np.int32)  # 1 bit per token

    def apply(self, logits: np.ndarray) -> None:
        # logits: float32 [n_vocab]; the backend fills the bitmask natively (GIL released)
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        # one gather of 8 floats per mask byte (~20 µs; unpackbits + putmask took ~190 µs)
        bias = _BYTE_BIAS.take(self._mask.view(np.uint8), axis=0).reshape(-1)[: self._n_vocab]
        np.add(logits, bias, out=logits)  # bias: [n_vocab], 0 or -inf

    def accept(self, token: int) -> None:
        if not self._matcher.consume_token(int(token)):
            raise RuntimeError(f"constraint rejected token {token}: {self._matcher.get_error()}")

    def is_complete(self) -> bool:
        return self._matcher.is_stopped() and not self._matcher.is_error()

    def is_error(self) -> bool:
        return self._matcher.is_error()


class _Compiled:
    """A validated grammar and a pristine matcher to copy for each new sequence."""

    def __init__(self, template: llguidance.LLMatcher, n_vocab: int) -> None:
        self._template = template
        self._n_vocab = n_vocab

    def __call__(self) -> LlgConstraint:
        return LlgConstraint(self._template.deep_copy(), self._n_vocab)


_tokenizers: dict[int, tuple[TokenVocab, llguidance.LLTokenizer]] = {}
_compiled: OrderedDict[tuple[int, str], _Compiled] = OrderedDict()
_lock = threading.Lock()


def _llg_tokenizer(vocab: TokenVocab) -> llguidance.LLTokenizer:
    with _lock:
        hit = _tokenizers.get(id(vocab))
        if hit is not None and hit[0] is vocab:
            return hit[1]
    if vocab.vocab_ptr is None:
        raise ValueError("TokenVocab needs vocab_ptr (use TokenVocab.from_gguf_vocab)")
    # llguidance marks special tokens with a 0xff prefix so grammar text never matches them
    tokens = [b"\xff" + p if i in vocab.special_ids else p for i, p in enumerate(vocab.pieces)]
    # the tokenizer callback is llama.cpp's own llama_tokenize, called natively
    fptr = ctypes.cast(llama_cpp.llama_cpp._lib.llama_tokenize, ctypes.c_void_p).value
    tok = llguidance.LLTokenizer.from_llamacpp(  # type: ignore[attr-defined]
        tokens=tokens,
        vocab_ptr=vocab.vocab_ptr,
        tokenize_fptr=fptr,
        eos_token=sorted(vocab.eos_ids),
        slices=llguidance.LLTokenizer.json_slices(),
    )
    with _lock:
        _tokenizers[id(vocab)] = (vocab, tok)
    return tok


def compile_json_schema(
    schema: dict | None, vocab: TokenVocab, *, param: str = "response_format"
) -> ConstraintFactory:
    """Compile ``schema`` (None: any JSON object) into a factory of fresh constraints.

    Raises Unsupported (naming the keyword) or InvalidRequest (invalid schema), with ``param``.
    """
    if schema is None:
        schema = {"type": "object"}
    if not isinstance(schema, dict):
        raise InvalidRequest("JSON schema must be an object", param=param)
    check_schema(schema, param=param)
    key = (id(vocab), json.dumps(schema, sort_keys=True))
    with _lock:
        hit = _compiled.get(key)
        if hit is not None:
            _compiled.move_to_end(key)
            return hit
    tokenizer = _llg_tokenizer(vocab)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(_bound_integers(schema),
                                                                 overrides=_JSON_OPTIONS)
    except ValueError as e:
        raise InvalidRequest(f"invalid JSON schema: {e}", param=param) from e
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer)
    if is_error:
        _raise_schema_error(messages[0], param)
    matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
    if matcher.is_error():
        _raise_schema_error(matcher.get_error(), param)
    compiled = _Compiled(matcher, vocab.n_vocab)
    with _lock:
        _compiled[key] = compiled
        while len(_compiled) > _CACHE_SIZE:
            _compiled.popitem(last=False)
    return compiled


# Unbounded integers let a small model write digits until max_tokens (greedy SmolLM2 writes
# "1111…" for a pydantic `int`); integers without bounds are held to ±(2**53 - 1),
# beyond which JSON consumers (JavaScript, many parsers) lose precision anyway.
_INT_BOUND = 2**53 - 1  # the JSON-safe integer range


def _bound_integers(node: Any) -> Any:
    if isinstance(node, dict):
        out = {k: _bound_integers(v) for k, v in node.items()}
        types = out.get("type")
        if types == "integer" or (isinstance(types, list) and "integer" in types):
            if "maximum" not in out and "exclusiveMaximum" not in out:
                out["maximum"] = _INT_BOUND
            if "minimum" not in out and "exclusiveMinimum" not in out:
                out["minimum"] = -_INT_BOUND
        return out
    if isinstance(node, list):
        return [_bound_integers(v) for v in node]
    return node


def _raise_schema_error(message: str, param: str) -> None:
    # check_schema already rejects unknown keywords; this is the backend's second opinion
    if "Unimplemented" in message or "Unknown format" in message:
        raise Unsupported(f"JSON schema feature not supported: {message}", param=param)
    raise InvalidRequest(f"invalid JSON schema: {message}", param=param)


_RF_TYPES = ("text", "json_object", "json_schema")


def constraint_for_response_format(rf: Any, vocab: TokenVocab) -> ConstraintFactory | None:
    """Validate an OpenAI ``response_format`` and compile it; None means free text."""
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise InvalidRequest("response_format must be an object", param="response_format")
    kind = rf.get("type")
    if kind not in _RF_TYPES:
        raise InvalidRequest(
            f"response_format.type must be one of {', '.join(_RF_TYPES)}, got {kind!r}",
            param="response_format",
        )
    if kind == "text":
        return None
    if kind == "json_object":
        return compile_json_schema(None, vocab)
    spec = rf.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest(
            "response_format.json_schema must be an object when type is json_schema",
            param="response_format",
        )
    _check_json_schema_spec(spec)
    return compile_json_schema(spec.get("schema"), vocab)


def _check_json_schema_spec(spec: dict) -> None:
    name = spec.get("name")
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not _is_identifier(name):
        raise InvalidRequest(
            "response_format.json_schema.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
            param="response_format",
        )
    if "description" in spec and not isinstance(spec["description"], str):
        raise InvalidRequest(
            "response_format.json_schema.description must be a string", param="response_format"
        )
    if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
        raise InvalidRequest(
            "response_format.json_schema.strict must be a boolean", param="response_format"
        )
    schema = spec.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise InvalidRequest(
            "response_format.json_schema.schema must be an object", param="response_format"
        )


def _is_identifier(name: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
