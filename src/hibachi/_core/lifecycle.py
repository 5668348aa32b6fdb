"""The open/close lifecycle shared by every batcher."""

from __future__ import annotations

import asyncio
import enum
import threading
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, Protocol, Self

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

    def on_own_thread(self) -> bool: ...

    def finish(self, *, cancel: bool, wait: bool = True) -> None: ...

    def health(self, state: str) -> Health: ...


class Lifecycle:
    """Context-manager behaviour over an engine: open once, close idempotently.

    ``async with`` / ``with`` open the batcher; leaving the block drains the
    requests in flight, or ends them at once when the block raised, and in
    both cases returns only once the batcher's threads have ended.
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

    def close(self, *, cancel: bool = False, wait: bool = True) -> None:
        """Stop accepting requests; return once every stream has ended and the
        batcher's threads with them.

        By default requests in flight and in the queue run to their end; with
        ``cancel=True`` they end at once with `BatcherClosed` (within a tenth
        of a second, even while the model is inside a call), and `close` then
        waits for the model call to return, so that no thread of the batcher
        outlives it (a warning every few seconds says how long that call has
        run). With ``wait=False`` it returns without waiting for the threads:
        ``close(cancel=True, wait=False)`` ends every caller and returns even
        if the model is stuck in a call (a warning and `health` then say the
        engine thread is still inside the model; it ends by itself once the
        call returns), and ``close(wait=False)`` returns at once while the
        requests left run to their end. Idempotent; leaving ``with`` /
        ``async with`` calls it with ``cancel`` set when the block raised.

        Called from the engine's own thread (inside the model, say), it begins
        the close and returns without waiting: the engine cannot wait for
        itself. It finishes closing once the model call returns.
        """
        cancel, wait = bool(cancel), bool(wait)  # a value with no truth raises here
        if self._begin_close(cancel):
            if self._engine.on_own_thread():
                return
            self._engine.finish(cancel=cancel, wait=wait)
        self._state = State.CLOSED

    async def aclose(self, *, cancel: bool = False, wait: bool = True) -> None:
        """`close` without blocking the event loop.

        If the task awaiting it is cancelled, it still waits for the close to
        end (the threads to end, with ``wait``), then raises `CancelledError`.
        """
        cancel, wait = bool(cancel), bool(wait)
        if self._begin_close(cancel):
            if self._engine.on_own_thread():
                return
            await _uncancellable(asyncio.to_thread(self._engine.finish, cancel=cancel, wait=wait))
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


async def _uncancellable(work: Coroutine[Any, Any, None]) -> None:
    """Await ``work`` to its end even if the awaiting task is cancelled meanwhile;
    then re-raise the cancellation."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            if task.cancelled():
                raise
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    task.result()
