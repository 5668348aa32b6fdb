"""Every error the server answers, mapped to a status code in one place.

`status_of` maps hibachi's errors (and the server's own `APIError`) to an
HTTP status and OpenAI's body, ``{"error": {"message", "type", "param",
"code"}}``; the handlers `install` registers, the front door (`_gate`) and
the streams' error events all use it::

    APIError(status)   the server's own refusals: a bad body or field (400),
                       a missing key (401), an unknown model or route (404),
                       a wrong method (405), a slow body (408), a body too
                       large (413), shutting down (503)
    ValidationError    400   a body that is not what the endpoint takes, the
                             field named as the client sent it (``messages[0].content``)
    InvalidRequest     400   a client's mistake, named
    QueueFull          429   with Retry-After from the current drain rate
    Timeout            504   the request's deadline passed
    BatcherClosed      503   the batcher is closing or closed
    ModelError         500   the model failed (logged; the client gets no traceback)
    anything else      500   logged, as a model error
    ClientGone         499   the client left before its answer (nobody reads it)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException

from .._exceptions import BatcherClosed, HibachiError, InvalidRequest, QueueFull, Timeout
from ._schemas import ErrorBody, ErrorDetail

__all__ = [
    "APIError",
    "ClientGone",
    "error_body",
    "from_validation",
    "install",
    "param_of",
    "status_of",
]

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

    @property
    def retry_after(self) -> bool:
        return "Retry-After" in self.headers


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
    if isinstance(exc, ValidationError):
        return from_validation(exc)
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
    return _respond(from_validation(exc.errors()))


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own refusals (no such route, a wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    message = {
        404: f"no route {request.method} {request.url.path}",
        405: f"{request.url.path} does not take {request.method}",
    }.get(exc.status_code, str(exc.detail))
    error = APIError(exc.status_code, message, code=code)
    answer = status_of(error)
    headers = {**(exc.headers or {}), **answer.headers}
    return JSONResponse(answer.body.model_dump(), status_code=answer.status, headers=headers)


def from_validation(errors: ValidationError | Sequence[Any]) -> APIError:
    """The 400 for a body that failed validation: its first error, the field named."""
    found = errors.errors() if isinstance(errors, ValidationError) else list(errors)
    if not found:
        return APIError(400, "the request body is not valid", code="invalid_value")
    first = found[0]
    kind = str(first.get("type", ""))
    location = [part for part in first.get("loc", ()) if part != "body"]
    if kind == "json_invalid":
        message = f"the request body is not valid JSON: {first.get('msg', '')}"
        return APIError(400, message, code="invalid_json")
    param = param_of(location)
    if kind == "extra_forbidden":
        message = f"unrecognized request argument supplied: {param}"
        return APIError(400, message, param=param, code="unknown_parameter")
    message = str(first.get("msg", "invalid value"))
    if kind == "missing":
        message = "missing (required)"
    code = _CODES.get(kind, "invalid_type" if kind.endswith("_type") else "invalid_value")
    where = f"{param}: " if param else ""
    return APIError(400, f"{where}{message}", param=param, code=code)


_CODES = {"not_served": "unsupported_parameter", "limit_exceeded": "limit_exceeded"}


def param_of(location: list[Any] | tuple[Any, ...]) -> str | None:
    """``('messages', 0, 'content')`` → ``messages[0].content``: the field as the client
    sent it (pydantic's union tags, such as ``list[int]`` or ``str``, left out)."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        elif not (any(c in part for c in "[]()-") or part in _UNION_TAGS):
            text += f".{part}" if text else part
    return text or None


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into `status_of`'s answer.

    An exception no handler takes reaches the front door (`_gate`), which
    answers it as a 500 in the same shape.
    """
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(HTTPException, _on_http)
    app.add_exception_handler(APIError, _on_error)
    app.add_exception_handler(HibachiError, _on_error)
