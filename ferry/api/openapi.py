"""The OpenAPI document: FastAPI's, completed so every response is described.

``install(app)`` replaces ``app.openapi`` with a generator that (1) drops FastAPI's 422 responses
(Ferry answers validation errors with 400 and the OpenAI error envelope), (2) gives every
operation a ``default`` response with that envelope, and (3) fills in the 200 responses of routes
that return plain dicts or streams (chat/completions, tokenizer, resumable streams, audio) from
the response models below. It also serves the same document as ``GET /openapi.yaml``.

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


class ResponseObject(BaseModel):
    """The Responses API's response object (the spec's ``Response``)."""

    id: str
    object: Literal["response"]
    created_at: int
    status: Literal["completed", "failed", "in_progress", "cancelled", "queued", "incomplete"]
    model: str
    output: list[dict[str, Any]]
    error: dict[str, Any] | None
    incomplete_details: dict[str, Any] | None
    usage: dict[str, Any] | None = None


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response.deleted"]
    deleted: bool


class ResponseItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    has_more: bool
    first_id: str
    last_id: str


class InputTokenCount(BaseModel):
    object: Literal["response.input_tokens"]
    input_tokens: int


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
    ("post", "/v1/streams/lookup"): _json(StreamLookupResponse),
    ("post", "/v1/audio/transcriptions"): {**AUDIO, **SSE},
    ("post", "/v1/audio/translations"): AUDIO,
    ("post", "/v1/responses"): {**_json(ResponseObject), **SSE},
    ("get", "/v1/responses/{response_id}"): {**_json(ResponseObject), **SSE},
    ("delete", "/v1/responses/{response_id}"): _json(DeletedResponse),
    ("post", "/v1/responses/{response_id}/cancel"): _json(ResponseObject),
    ("get", "/v1/responses/{response_id}/input_items"): _json(ResponseItemList),
    ("post", "/v1/responses/input_tokens"): _json(InputTokenCount),
}
MODELS = (ErrorResponse, ChatCompletion, Completion, TokenizeResponse, DetokenizeResponse,
          StreamLookupResponse, ResponseObject, DeletedResponse, ResponseItemList,
          InputTokenCount)


def build(app: FastAPI) -> dict:
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for m in MODELS:
        s = m.model_json_schema(ref_template="#/components/schemas/{model}", mode="serialization")
        schemas.update(s.pop("$defs", {}))
        schemas[m.__name__] = s
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            if (method, path) in OK:
                responses["200"] = {"description": "Successful Response",
                                    "content": OK[(method, path)]}
            responses["default"] = {"description": "OpenAI error envelope",
                                    "content": _json(ErrorResponse)}
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
