"""The open/close lifecycle shared by every batcher."""

from __future__ import annotations

import asyncio
import enum
import threading
from types import TracebackType
from typing import Protocol, Self

from .._exceptions import BatcherClosed
from .health import Health

__all__ = ["Lifecycle", "Runnable", "State"]


class State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Runnable(Protocol):
    """What a batcher's lifecycle drives: its engine."""

    def start(self) -> None: ...

    def stop(self, *, cancel: bool) -> None: ...

    def join(self, timeout: float | None = None) -> bool: ...

    def finish(self, *, cancel: bool) -> None: ...

    def health(self, state: str) -> Health: ...


class Lifecycle:
    """Context-manager behaviour over an engine: open once, close idempotently.

    ``async with`` / ``with`` open the batcher; leaving the block drains the
    requests in flight, or ends them at once when the block raised.
    """

    _engine: Runnable

    def __init__(self) -> None:
        self._state = State.UNOPENED
        self._state_lock = threading.Lock()

    @property
    def state(self) -> State:
        return self._state

    def health(self) -> Health:
        """Whether the batcher can serve: its state, its engine, how long the model
        call now running has run (see `Health`). Cheap; safe from any thread."""
        return self._engine.health(self._state.value)

    def start(self) -> None:
        """Start serving. Called by ``with`` / ``async with``."""
        with self._state_lock:
            if self._state is not State.UNOPENED:
                raise BatcherClosed(f"the batcher cannot be opened: it is {self._state.value}")
            self._engine.start()
            self._state = State.OPEN

    def _check_open(self) -> None:
        if self._state is not State.OPEN:
            hint = " (use `async with` or `with`)" if self._state is State.UNOPENED else ""
            raise BatcherClosed(f"the batcher is {self._state.value}{hint}")

    def _begin_close(self, cancel: bool) -> bool:
        with self._state_lock:
            if self._state is State.UNOPENED:
                self._state = State.CLOSED
                return False
            if self._state is State.OPEN:
                self._state = State.CLOSING
            self._engine.stop(cancel=cancel)
            return True

    def close(self, *, cancel: bool = False) -> None:
        """Stop accepting requests and wait until every stream has ended.

        By default requests in flight and in the queue run to their end; with
        ``cancel=True`` they end at once with `BatcherClosed`, and `close`
        returns even if the model is stuck in a call (a warning and `health`
        then say the engine thread is still inside the model). Idempotent.
        """
        cancel = bool(cancel)  # a value with no truth raises here, before anything changes
        if self._begin_close(cancel):
            self._engine.finish(cancel=cancel)
        self._state = State.CLOSED

    async def aclose(self, *, cancel: bool = False) -> None:
        """`close` without blocking the event loop."""
        cancel = bool(cancel)
        if self._begin_close(cancel):
            await asyncio.to_thread(self._engine.finish, cancel=cancel)
        self._state = State.CLOSED

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(cancel=exc_type is not None)

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose(cancel=exc_type is not None)
