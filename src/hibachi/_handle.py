"""`ResultHandle`: what `FeedforwardBatcher.run` returns to its caller."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Generator
from concurrent.futures import CancelledError
from typing import Any, final

from ._delivery import Failure, LoopChannel
from ._exceptions import Timeout
from ._feedforward_item import Item, Layout

__all__ = ["ResultHandle"]

_PENDING: Any = object()


@final
class ResultHandle(Item):
    """One caller's pending result.

    Made inside an event loop, ``await handle`` gives the result; from any
    thread, ``handle.result(timeout)`` blocks for it. Errors (``ModelError``,
    ``Timeout``, ``BatcherClosed`` …) are raised from either. `cancel`, or the
    cancellation of the task that awaits, drops the item before it reaches the
    model; a result that comes back for a caller who left is discarded.

    The handle is also the request the batcher queues (an `Item`): one object
    per caller.
    """

    __slots__ = ("_cancelled", "_channel", "_event", "_expired", "_future", "_outcome", "_timer")

    def __init__(
        self,
        described: tuple[Any, Layout, int],
        channel: LoopChannel | None,
        arrival: float,
        deadline: float | None = None,
    ) -> None:
        self.leaves, self.layout, self.length = described
        self.arrival = arrival
        self.deadline = deadline
        self.seq = 0
        self._channel = channel
        self._cancelled = False
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None
        self._outcome: Any = _PENDING
        if channel is None:
            self._future: asyncio.Future[Any] | None = None
            self._event: threading.Event | None = threading.Event()
        else:
            self._future = channel.loop.create_future()
            self._event = None

    # -- the caller's side ----------------------------------------------------------

    def __await__(self) -> Generator[Any, None, Any]:
        future = self._future
        if future is None:
            raise TypeError("this handle was made outside an event loop: call .result() instead")
        return future.__await__()

    def result(self, timeout: float | None = None) -> Any:
        """The result, waiting at most ``timeout`` seconds (`hibachi.Timeout` after that).

        Waiting does not cancel the request: call `cancel` for that. In the event
        loop the handle was made in, ``await`` it instead.
        """
        if self._future is not None:
            return self._result_from_loop(timeout)
        assert self._event is not None
        if not self._event.wait(self._wait_seconds(timeout)):
            if self.deadline is not None and time.monotonic() >= self.deadline:
                self._expired = True
            else:
                raise Timeout(f"no result within {timeout} s (the request goes on)")
        return self._unwrap()

    def done(self) -> bool:
        """Whether the result, an error, or a cancellation is in."""
        if self._future is not None:
            return self._future.done()
        return self._cancelled or self._expired or self._outcome is not _PENDING

    def cancel(self) -> bool:
        """Drop the request if it has not been answered; False if it had. Idempotent."""
        if self.done():
            return False
        self._cancelled = True
        future = self._future
        if future is None:
            assert self._event is not None
            self._event.set()
        elif _running_loop() is future.get_loop():
            future.cancel()
        else:
            _call_soon(future.get_loop(), future.cancel)
        return True

    def _wait_seconds(self, timeout: float | None) -> float | None:
        if self.deadline is None:
            return timeout
        left = max(0.0, self.deadline - time.monotonic())
        return left if timeout is None else min(left, timeout)

    def _unwrap(self) -> Any:
        if self._cancelled:
            raise CancelledError()
        if self._expired:
            raise Timeout("the request was not answered within its timeout")
        outcome = self._outcome
        if isinstance(outcome, Failure):
            raise outcome.error
        return outcome

    def _result_from_loop(self, timeout: float | None) -> Any:
        future = self._future
        assert future is not None
        if not future.done():
            loop = future.get_loop()
            if _running_loop() is loop:
                raise RuntimeError("result() would block the event loop it waits for: await it")
            waiting = asyncio.run_coroutine_threadsafe(_settled(future), loop)
            try:
                waiting.result(timeout)
            except TimeoutError:
                waiting.cancel()
                raise Timeout(f"no result within {timeout} s (the request goes on)") from None
        return future.result()

    # -- the engine's side (see `hibachi._feedforward_item.Item`) -----------------------

    def arm(self, seconds: float) -> None:
        """Fail with `Timeout` after ``seconds``, unless answered by then (caller's loop only)."""
        future = self._future
        if future is not None and not future.done():
            self._timer = future.get_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        future = self._future
        if future is not None and not future.done():
            self._expired = True
            future.set_exception(Timeout("the request was not answered within its timeout"))

    @property
    def departed(self) -> bool:
        if self._cancelled or self._expired:
            return True
        future = self._future
        return future is not None and (future.done() or self._channel.dead)  # type: ignore[union-attr]

    @property
    def expired(self) -> bool:
        return self._expired

    def deliver(self, outcome: Any) -> None:
        """Called once, on the engine's thread, with the result or a `Failure`."""
        channel = self._channel
        if channel is not None:
            channel.pending.append((self, outcome))
            return
        self._outcome = outcome
        assert self._event is not None
        self._event.set()

    def receive(self, outcome: Any) -> None:
        """The outcome, in the event loop's thread (see `hibachi._delivery.LoopChannel`)."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        future = self._future
        assert future is not None
        if future.done():
            return
        if isinstance(outcome, Failure):
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome)


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` without cancelling it if this wait is cancelled."""
    await asyncio.wait([future])


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _call_soon(loop: asyncio.AbstractEventLoop, callback: Any) -> None:
    with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the future
        loop.call_soon_threadsafe(callback)
