"""Every error the server answers, mapped to a status code in one place.

`status_of` maps hibachi's errors (and the server's own `APIError`) to an
HTTP status and an OpenAI-style body; the handlers `install` registers and
the streams' error events both use it::

    APIError(status)   the server's own refusals: unknown model, no chat
                       template, shutting down, a bad field
    InvalidRequest     400   a client's mistake, named
    QueueFull          429   with Retry-After from the current drain rate
    Timeout            504   the request's deadline passed
    BatcherClosed      503   the batcher is closing or closed
    ModelError         500   the model failed (logged; the client gets no traceback)
    ClientGone         499   the client left before its answer (nobody reads it)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from .._exceptions import BatcherClosed, HibachiError, InvalidRequest, QueueFull, Timeout
from ._schemas import ErrorBody, ErrorDetail

__all__ = ["APIError", "ClientGone", "error_body", "install", "status_of"]

logger = logging.getLogger("hibachi.serve")


class APIError(Exception):
    """A refusal with its status, OpenAI ``type``, and the request field it is about."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        kind: str = "invalid_request_error",
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind
        self.code = code
        self.retry_after = retry_after


class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


@dataclass(frozen=True)
class Answer:
    """An error as the client sees it."""

    status: int
    body: ErrorBody
    headers: dict[str, str]


def status_of(exc: BaseException) -> Answer:
    """The status, body and headers that answer ``exc``."""
    if not isinstance(exc, APIError):
        exc = _as_api_error(exc)
    headers = {} if exc.retry_after is None else {"Retry-After": str(exc.retry_after)}
    detail = ErrorDetail(message=exc.message, type=exc.kind, param=exc.param, code=exc.code)
    return Answer(exc.status, ErrorBody(error=detail), headers)


def error_body(exc: BaseException) -> ErrorBody:
    return status_of(exc).body


def _as_api_error(exc: BaseException) -> APIError:
    if isinstance(exc, ClientGone):  # nobody reads the answer: 499, as nginx logs it
        return APIError(499, "the client closed its connection", code="client_gone")
    if isinstance(exc, InvalidRequest):
        return APIError(400, str(exc), param=_param_of(exc))
    if isinstance(exc, QueueFull):
        return APIError(429, str(exc), kind="rate_limit_error", code="queue_full", retry_after=1)
    if isinstance(exc, Timeout):
        return APIError(504, str(exc) or "the request's deadline passed", kind="timeout")
    if isinstance(exc, BatcherClosed):
        return APIError(503, str(exc), kind="server_error", code="unavailable")
    if not isinstance(exc, HibachiError):
        logger.error("unexpected error serving a request", exc_info=exc)
    else:
        logger.error("model error", exc_info=exc)
    return APIError(500, "the model failed on this request", kind="server_error")


def _param_of(exc: InvalidRequest) -> str | None:
    return getattr(exc, "param", None)


def _respond(exc: BaseException) -> JSONResponse:
    answer = status_of(exc)
    return JSONResponse(answer.body.model_dump(), status_code=answer.status, headers=answer.headers)


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return _respond(exc)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return _respond(_validation_error(exc))


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    if not errors:
        return APIError(400, "the request body is not valid")
    first = errors[0]
    location = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = _field_name(location)
    message = str(first.get("msg", "invalid value"))
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{message}", param=param)


def _field_name(location: list[str]) -> str | None:
    """``['prompt', 'list[int]', '0']`` → ``prompt``: the field, without pydantic's union tags."""
    parts = [p for p in location if not any(c in p for c in "[]()-") and p != "function-after"]
    return ".".join(parts) or None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into `status_of`'s answer."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(APIError, _on_error)
    app.add_exception_handler(HibachiError, _on_error)
    app.add_exception_handler(Exception, _on_error)
