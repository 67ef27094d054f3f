"""The one exception handler: every error leaves as the OpenAI envelope
``{"error": {"message", "type", "param", "code"}}``; no stack trace ever reaches a client."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ferry.errors import FerryError, InternalError, InvalidRequest, MethodNotAllowed, NotFound

log = logging.getLogger(__name__)


def error_response(exc: FerryError) -> JSONResponse:
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=exc.headers)


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


def install(app: FastAPI) -> None:
    @app.exception_handler(FerryError)
    async def _ferry(_: Request, exc: FerryError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(validation_error(exc))

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
        return error_response(err)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(InternalError("The server had an error while processing your "
                                            "request."))
