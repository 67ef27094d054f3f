"""The one exception handler: every error leaves as the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}`` (on Anthropic's routes, ``/v1/messages``,
as Anthropic's ``{"type": "error", "error": {"type", "message"}}``); no stack trace ever reaches
a client."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferry.errors import FerryError, InternalError, InvalidRequest, MethodNotAllowed, NotFound
from ferry.protocol import anthropic

log = logging.getLogger(__name__)


ANTHROPIC_PATHS = "/v1/messages"  # routes that answer in Anthropic's envelope


def is_anthropic(path: str) -> bool:
    return path == ANTHROPIC_PATHS or path.startswith(ANTHROPIC_PATHS + "/")


def error_content(exc: FerryError, path: str, request_id: str | None = None) -> tuple[int, dict]:
    """Status and body of ``exc`` in the envelope of the API that owns ``path``."""
    if is_anthropic(path):
        return anthropic.error_body(exc, request_id)
    return exc.status, exc.to_body()


def error_response(exc: FerryError, request: Request | None = None) -> JSONResponse:
    path = request.url.path if request is not None else ""
    rid = request.scope.get("state", {}).get("request_id") if request is not None else None
    status, body = error_content(exc, path, rid)
    return JSONResponse(body, status_code=status, headers=exc.headers)


def _param(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def validation_error(exc: RequestValidationError) -> FerryError:
    errs = exc.errors()
    if not errs:
        return InvalidRequest("invalid request")
    e = errs[0]
    if e.get("type") == "json_invalid":
        return InvalidRequest("We could not parse the JSON body of your request: "
                              f"{e.get('ctx', {}).get('error', 'invalid JSON')}")
    param = _param(tuple(e.get("loc", ())))
    msg = e.get("msg", "invalid value")
    if e.get("type") == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    if e.get("type") == "model_attributes_type":
        return InvalidRequest("The request body must be a JSON object.")
    return InvalidRequest(f"Invalid value for '{param}': {msg}", param=param,
                          code="invalid_value")


def anthropic_validation_error(exc: RequestValidationError) -> FerryError:
    """Anthropic words a bad field as ``<path>: <problem>`` (``max_tokens: Field required``)."""
    e = (exc.errors() or [{}])[0]
    if e.get("type") in ("json_invalid", "model_attributes_type"):
        return validation_error(exc)
    param = _param(tuple(e.get("loc", ())))
    return InvalidRequest(f"{param}: {e.get('msg', 'invalid value')}" if param
                          else e.get("msg", "invalid request"), param=param)


def install(app: FastAPI) -> None:
    @app.exception_handler(FerryError)
    async def _ferry(request: Request, exc: FerryError) -> JSONResponse:
        return error_response(exc, request)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = (anthropic_validation_error(exc) if is_anthropic(request.url.path)
               else validation_error(exc))
        return error_response(err, request)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err: FerryError = NotFound(f"Unknown route: {request.method} {request.url.path}")
        elif exc.status_code == 405:
            err = MethodNotAllowed(f"Method {request.method} is not allowed on "
                                   f"{request.url.path}")
        else:
            err = FerryError(str(exc.detail))
            err.status = exc.status_code
            err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(err, request)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(InternalError("The server had an error while processing your "
                                            "request."), request)
