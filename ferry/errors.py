"""Typed errors raised by services; one handler (ferry.api.errors) turns them into the OpenAI envelope.

Every error a client can cause is one of these classes, so no client input yields a 500.
The envelope is always ``{"error": {"message", "type", "param", "code"}}`` with all four keys.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base class: ``status`` is the HTTP status, ``type``/``code`` follow OpenAI's vocabulary."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(FerryError):
    status = 400
    type = "invalid_request_error"


class ContextTooLong(InvalidRequest):
    code = "context_length_exceeded"


class Unsupported(InvalidRequest):
    """A valid OpenAI request that this model or server cannot honour (e.g. a schema feature)."""

    code = "unsupported"


class AuthenticationError(FerryError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class NotFound(FerryError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class MethodNotAllowed(FerryError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(FerryError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class Overloaded(FerryError):
    """Queue full: 429 with Retry-After."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"


class QueueTimeout(FerryError):
    status = 503
    type = "server_error"
    code = "queue_timeout"


class ServiceUnavailable(FerryError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class InternalError(FerryError):
    status = 500
    type = "server_error"
    code = "internal_error"
