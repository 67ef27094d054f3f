"""The OpenAPI document: FastAPI's, completed so every response is described.

``install(app)`` replaces ``app.openapi`` with a generator that (1) drops FastAPI's 422 responses
(Ferry answers validation errors with 400 and the OpenAI error envelope), (2) gives every
operation a ``default`` response with that envelope (Anthropic's on ``/v1/messages``), and (3)
fills in the 200 responses of routes that return plain dicts or streams (chat/completions,
tokenizer, resumable streams, audio) from the response models below. It also serves the same
document as ``GET /openapi.yaml``.

Invariant: a schema here describes what the route really sends. Objects stay open
(``additionalProperties`` allowed) so new fields never contradict the document; fields that are
declared are typed as the server writes them.
"""

from __future__ import annotations

from typing import Any, Literal

import yaml
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from pydantic import BaseModel

from ferry.api.errors import is_anthropic
from ferry.protocol import anthropic, responses

# one server-sent event: `data:` is a JSON chunk (or `[DONE]`); resumable streams add `id:`
SSE = {"text/event-stream": {"schema": {
    "type": "object", "description": "Each event: `data: {json chunk}`; the last: `data: [DONE]`",
    "properties": {"data": {"type": "string"}, "event": {"type": "string"},
                   "id": {"type": "string"}, "retry": {"type": "integer"}},
    "required": ["data"]}}}


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None = None
    annotations: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] | None = None


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[CompletionChoice]
    usage: Usage


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeResponse(BaseModel):
    content: str


class StreamInfo(BaseModel):
    conversation_id: str
    is_done: bool
    total_bytes: int
    started_at: float | None
    completed_at: float | None


class StreamLookupResponse(BaseModel):
    object: Literal["list"]
    data: list[StreamInfo]


class LlamaStreamInfo(BaseModel):
    """One entry of ``?format=llama-server``'s bare array (integer seconds, 0 = running)."""

    conversation_id: str
    is_done: bool
    total_bytes: int
    started_at: int
    completed_at: int


def _json(model: type[BaseModel]) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}


AUDIO = {"application/json": {"schema": {"type": "object"}},
         "text/plain": {"schema": {"type": "string"}},
         "application/x-subrip": {"schema": {"type": "string"}},
         "text/vtt": {"schema": {"type": "string"}}}

# (method, path) -> 200 response content; the others come from the routes' response_models
OK: dict[tuple[str, str], dict] = {
    ("post", "/v1/chat/completions"): {**_json(ChatCompletion), **SSE},
    ("post", "/v1/completions"): {**_json(Completion), **SSE},
    ("post", "/tokenize"): _json(TokenizeResponse),
    ("post", "/v1/tokenize"): _json(TokenizeResponse),
    ("post", "/detokenize"): _json(DetokenizeResponse),
    ("post", "/v1/detokenize"): _json(DetokenizeResponse),
    ("get", "/v1/stream/{conv_id}"): SSE,
    ("get", "/v1/stream"): SSE,
    ("post", "/v1/streams/lookup"): {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/StreamLookupResponse"},
        {"type": "array", "items": {"$ref": "#/components/schemas/LlamaStreamInfo"}}]}}},
    ("post", "/v1/audio/transcriptions"): {**AUDIO, **SSE},
    ("post", "/v1/audio/translations"): AUDIO,
    ("post", "/v1/messages"): {**_json(anthropic.AnthropicMessage), **SSE},
    ("post", "/v1/messages/count_tokens"): _json(anthropic.AnthropicTokenCount),
    ("post", "/v1/responses"): {**_json(responses.ResponseObject), **SSE},
    ("get", "/v1/responses/{response_id}"): {**_json(responses.ResponseObject), **SSE},
    ("delete", "/v1/responses/{response_id}"): _json(responses.DeletedResponse),
    ("post", "/v1/responses/{response_id}/cancel"): _json(responses.ResponseObject),
    ("get", "/v1/responses/{response_id}/input_items"): _json(responses.ResponseItemList),
    ("post", "/v1/responses/input_tokens"): _json(responses.InputTokenCount),
}
MODELS = (ErrorResponse, ChatCompletion, Completion, TokenizeResponse, DetokenizeResponse,
          StreamLookupResponse, LlamaStreamInfo, anthropic.AnthropicMessage,
          anthropic.AnthropicTokenCount, anthropic.AnthropicErrorResponse,
          responses.ResponseObject, responses.DeletedResponse, responses.ResponseItemList,
          responses.InputTokenCount)


def build(app: FastAPI) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for m in MODELS:
        s = m.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        for name, sub in {**s.pop("$defs", {}), m.__name__: s}.items():
            if schemas.setdefault(name, sub) != sub:  # two APIs' models with one name
                raise ValueError(f"two different schemas are named {name!r}")
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if (method, path) in OK:
                responses["200"] = {"description": "Successful Response",
                                    "content": OK[(method, path)]}
            responses["default"] = (
                {"description": "Anthropic error envelope",
                 "content": _json(anthropic.AnthropicErrorResponse)} if is_anthropic(path)
                else {"description": "OpenAI error envelope", "content": _json(ErrorResponse)})
    return doc


def install(app: FastAPI) -> None:
    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = build(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/openapi.yaml", include_in_schema=False)
    async def openapi_yaml() -> Response:
        return Response(yaml.safe_dump(openapi(), sort_keys=False, allow_unicode=True),
                        media_type="application/yaml")
