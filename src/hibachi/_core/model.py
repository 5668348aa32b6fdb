"""Calling the user's model, whatever kind of callable it is."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Coroutine
from typing import Any

from .._exceptions import ConfigurationError, ModelError

__all__ = ["ModelRunner", "describe", "engine_failure", "is_fatal", "model_error"]


class ModelRunner:
    """Calls a sync or async model from the engine thread.

    A coroutine (or any awaitable) the model returns is run to completion on an
    event loop owned by the engine thread, never on a caller's loop.
    """

    def __init__(self, model: Any) -> None:
        if not callable(model):
            raise ConfigurationError(f"the model must be callable, got {type(model).__name__}")
        self.model = model
        self._loop: asyncio.AbstractEventLoop | None = None
        self.busy_since: float | None = None  # time.monotonic() when the call now running began

    def __call__(self, *args: Any) -> Any:
        return self.call(self.model, *args)

    def call(self, function: Any, *args: Any) -> Any:
        """``function(*args)``, sync or async, on the engine thread (a model's other methods)."""
        self.busy_since = time.monotonic()
        try:
            result = function(*args)
            if inspect.isawaitable(result):
                result = self._event_loop().run_until_complete(_awaited(result))
            return result
        finally:
            self.busy_since = None

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
        return self._loop

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
            self._loop = None


def _awaited(awaitable: Any) -> Coroutine[Any, Any, Any]:
    async def wait() -> Any:
        return await awaitable

    return wait()


def model_error(exc: BaseException) -> ModelError:
    """A ModelError that chains the model's own exception."""
    error = ModelError(f"the model raised {describe(exc)}")
    error.__cause__ = exc
    return error


def describe(exc: BaseException) -> str:
    """``"Type: message"`` for ``exc``, even if its own ``__str__`` raises."""
    try:
        text = str(exc)[:1000]
    except Exception:  # an exception whose __str__ raises must not take the engine down
        text = "(its message could not be read)"
    return f"{type(exc).__name__}: {text}"


def engine_failure(exc: BaseException) -> str:
    """What every caller hears when the engine itself failed with ``exc``."""
    return f"hibachi's engine failed: {describe(exc)}"


def is_fatal(exc: BaseException) -> bool:
    """Whether ``exc``, raised inside the model, must stop the engine.

    `KeyboardInterrupt` and `SystemExit` ask the process to stop: the engine
    ends every caller with an error that names them and closes. Any other
    exception, `BaseException`s such as `asyncio.CancelledError` from an async
    model included, is the model failing on its inputs: only the requests of
    that call fail, and the batcher keeps serving.
    """
    return isinstance(exc, KeyboardInterrupt | SystemExit)
