"""Routes: POST /v1/audio/transcriptions and /v1/audio/translations (OpenAI's multipart API).

Invariants:
- Every client mistake is a typed ``FerryError`` (400/404/413), never FastAPI's 422 or a 500: the
  form fields are taken as strings and validated here, naming the parameter.
- An oversize upload is refused without buffering it: a declared Content-Length over the limit is
  refused before the body is read, a chunked body is counted as it arrives, and the file part is
  read in chunks and refused as soon as it passes ``max_audio_bytes``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive

from ferry.audio.formats import (
    RESPONSE_FORMATS,
    TIMESTAMP_GRANULARITIES,
    delta_event,
    done_event,
    render,
)
from ferry.audio.transcriber import Segment, Transcriber
from ferry.errors import InvalidRequest, PayloadTooLarge
from ferry.services.resumable import encoded
from ferry.sse import Event, EventStreamResponse

log = logging.getLogger(__name__)

FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries, headers and the small text fields
READ_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class AudioRequest:
    """The validated form fields shared by both routes."""

    model: str
    response_format: str
    temperature: float
    language: str | None
    prompt: str | None
    stream: bool
    granularities: set[str]

    @classmethod
    def parse(
        cls,
        model: str | None,
        response_format: str | None,
        temperature: str | None,
        language: str | None = None,
        prompt: str | None = None,
        stream: str | None = None,
        granularities: list[str] | None = None,
    ) -> AudioRequest:
        if not model:
            raise InvalidRequest("you must provide a model parameter", param="model")
        fmt = response_format or "json"
        if fmt not in RESPONSE_FORMATS:
            raise InvalidRequest(
                f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {fmt!r}",
                param="response_format",
            )
        grains = set(granularities or ())
        if unknown := grains - set(TIMESTAMP_GRANULARITIES):
            raise InvalidRequest(
                f"timestamp_granularities must be 'word' or 'segment'; got {sorted(unknown)}",
                param="timestamp_granularities",
            )
        if grains and fmt != "verbose_json":
            raise InvalidRequest(
                "timestamp_granularities requires response_format=verbose_json",
                param="timestamp_granularities",
            )
        streaming = _parse_bool(stream, "stream")
        if streaming and fmt not in ("json", "text"):
            raise InvalidRequest(
                "stream=true answers with transcript.text events; use response_format json",
                param="stream",
            )
        temp = _parse_temperature(temperature)
        return cls(model, fmt, temp, language or None, prompt or None, streaming, grains)


def make_router(get_transcriber: Callable[[str], Awaitable[Transcriber]], max_audio_bytes: int,
                *, ping_interval: float, send_timeout: float) -> APIRouter:
    """The audio routes. ``await get_transcriber(model)`` loads the model on first use and raises
    ModelNotFound for unknown models. Streams go through ``ferry.sse`` with ``ping_interval`` and
    ``send_timeout`` (``--sse-ping-interval``, ``--send-timeout``)."""
    router = APIRouter(route_class=_limited_route(max_audio_bytes + FORM_OVERHEAD_BYTES))

    @router.post("/v1/audio/transcriptions")
    async def create_transcription(
        file: Annotated[UploadFile | str | None, File()] = None,
        model: Annotated[str | None, Form()] = None,
        language: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str | None, Form()] = None,
        temperature: Annotated[str | None, Form()] = None,
        stream: Annotated[str | None, Form()] = None,
        grains: Annotated[list[str] | None, Form(alias="timestamp_granularities[]")] = None,
        grains_plain: Annotated[list[str] | None, Form(alias="timestamp_granularities")] = None,
    ) -> Response:
        grains = (grains or []) + (grains_plain or [])
        req = AudioRequest.parse(
            model, response_format, temperature, language, prompt, stream, grains
        )
        transcriber = await get_transcriber(req.model)
        data = await _read_upload(file, max_audio_bytes)
        opts: dict[str, Any] = {
            "language": req.language,
            "prompt": req.prompt,
            "temperature": req.temperature,
        }
        if req.stream:
            return EventStreamResponse(encoded(_events(await transcriber.stream(data, **opts))),
                                       ping_interval=ping_interval, send_timeout=send_timeout)
        transcript = await transcriber.transcribe(
            data, word_timestamps="word" in req.granularities, **opts
        )
        log.info("transcribed %.1fs of audio with %s", transcript.duration, req.model)
        rendered = render(transcript, req.response_format, req.granularities)
        return Response(rendered.body, media_type=rendered.media_type)

    @router.post("/v1/audio/translations")
    async def create_translation(
        file: Annotated[UploadFile | str | None, File()] = None,
        model: Annotated[str | None, Form()] = None,
        prompt: Annotated[str | None, Form()] = None,
        response_format: Annotated[str | None, Form()] = None,
        temperature: Annotated[str | None, Form()] = None,
    ) -> Response:
        req = AudioRequest.parse(model, response_format, temperature, prompt=prompt)
        transcriber = await get_transcriber(req.model)
        data = await _read_upload(file, max_audio_bytes)
        transcript = await transcriber.transcribe(
            data, prompt=req.prompt, temperature=req.temperature, task="translate"
        )
        rendered = render(transcript, req.response_format, req.granularities)
        return Response(rendered.body, media_type=rendered.media_type)

    return router


async def _read_upload(file: UploadFile | str | None, limit: int) -> bytes:
    if file is None:
        raise InvalidRequest("you must provide an audio file in the 'file' field", param="file")
    if isinstance(file, str):
        raise InvalidRequest("'file' must be a file upload, not a text field", param="file")
    chunks: list[bytes] = []
    size = 0
    while chunk := await file.read(READ_CHUNK_BYTES):
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


async def _events(segments: AsyncGenerator[Segment, None]) -> AsyncIterator[Event]:
    """``transcript.text.delta`` per segment, then ``transcript.text.done`` (OpenAI's stream)."""
    text = ""
    async with aclosing(segments):  # a client that hangs up stops the model promptly
        async for segment in segments:
            delta = segment.text if text else segment.text.lstrip()
            text += delta
            yield Event(delta_event(delta))
    yield Event(done_event(text.strip()))


def _parse_temperature(value: str | None) -> float:
    if value is None or value == "":
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        raise InvalidRequest(f"temperature must be a number; got {value!r}",
                             param="temperature") from None
    if not 0.0 <= temperature <= 1.0:  # also rejects nan
        raise InvalidRequest("temperature must be between 0 and 1", param="temperature")
    return temperature


def _parse_bool(value: str | None, param: str) -> bool:
    if value is None or value == "":
        return False
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise InvalidRequest(f"{param} must be true or false; got {value!r}", param=param)


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the audio file is larger than the limit of {limit} bytes", param="file"
    )


def _limited_route(max_body_bytes: int) -> type[APIRoute]:
    """An APIRoute that refuses request bodies over ``max_body_bytes`` before buffering them."""

    class LimitedBodyRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def limited(request: Request) -> Response:
                declared = request.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > max_body_bytes:
                    raise _too_large(max_body_bytes - FORM_OVERHEAD_BYTES)
                counted = Request(request.scope, _counting(request.receive, max_body_bytes))
                try:
                    return await handler(counted)
                except HTTPException as exc:  # FastAPI wraps body-parsing failures in a 400
                    cause = exc.__cause__ or exc.__context__
                    if isinstance(cause, PayloadTooLarge):
                        raise cause from None
                    raise

            return limited

    return LimitedBodyRoute


def _counting(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise _too_large(limit - FORM_OVERHEAD_BYTES)
        return message

    return counted
