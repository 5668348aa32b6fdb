"""`ResultHandle`: what `FeedforwardBatcher.run` returns to its caller.

A handle is also the request the batcher queues (an `Item`): one object per
caller, since much of what a batcher adds per caller is garbage-collector
work on the objects each caller keeps alive. It comes in two kinds, picked by
`make_handle`:

- made in an event loop, it holds an asyncio future of that loop. The engine
  sets its outcome and drops it in the loop's `LoopInbox`, which the loop
  empties in as few hops as it can. (The handle is not itself a future
  subclass: the Task machinery takes its fast paths only for exact futures.)
- made on a plain thread, it holds a `threading.Event`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Generator
from concurrent.futures import CancelledError
from typing import Any, final

from .._core.delivery import Failure
from .._core.settings import warn_renamed
from .._core.time_limits import check_wait
from .._exceptions import Timeout
from .item import Layout
from .loop_inbox import LoopInbox

__all__ = ["ResultHandle", "make_handle"]

_Future = asyncio.Future  # what loop.create_future() makes, without its Python frame
_get_running_loop = asyncio._get_running_loop  # the C function, without get_running_loop's raise
_PENDING: Any = object()
_TIMED_OUT = "the request was not answered within its timeout"
_ITEM_SLOTS = ("_arrival", "_deadline", "_layout", "_leaves", "_length", "_seq")


class ResultHandle:
    """One caller's pending result, returned by `FeedforwardBatcher.run`.

    Made inside an event loop, ``await handle`` gives the result; from any
    thread, ``handle.result(timeout)`` blocks for it. Errors (``ModelError``,
    ``Timeout``, ``BatcherClosed`` …) are raised from either. `cancel`, or the
    cancellation of the task that awaits, drops the item before it reaches the
    model; a result that comes back for a caller who left is discarded.
    """

    __slots__ = ("_cancelled", "_expired", "_outcome", *_ITEM_SLOTS)
    _leaves: Any
    _layout: Layout
    _length: int
    _arrival: float
    _deadline: float | None
    _seq: int
    _cancelled: bool
    _expired: bool
    _outcome: Any

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("this handle was made outside an event loop: call .result() instead")

    def result(self, timeout: float | None = None) -> Any:
        """The result, waiting at most ``timeout`` seconds (`hibachi.Timeout` after that).

        Waiting does not cancel the request: call `cancel` for that. In the
        event loop the handle was made in, ``await`` it instead.
        """
        raise NotImplementedError

    def done(self) -> bool:
        """Whether the result, an error, or a cancellation is in."""
        raise NotImplementedError

    def cancel(self) -> bool:
        """Drop the request if it has not been answered; False if it had. Idempotent."""
        raise NotImplementedError

    # -- the batcher's side: private ----------------------------------------------------

    def _arm(self, seconds: float) -> None:
        """Fail with `Timeout` after ``seconds`` unless answered by then.

        A thread's handle needs no timer: `result` waits until the deadline.
        """

    def _abandon(self, error: BaseException) -> None:
        """Fail with ``error`` now, from any thread (the engine is stuck in the model)."""
        raise NotImplementedError

    @property
    def _departed(self) -> bool:
        """As an `Item`, on the engine's thread: the caller no longer waits."""
        raise NotImplementedError

    def _deliver(self, outcome: Any) -> None:
        """As an `Item`, on the engine's thread: the outcome, once."""
        raise NotImplementedError

    # -- the old public names of the private members: deprecated ------------------------

    def arm(self, seconds: float) -> None:
        """Deprecated: arming the timeout is the batcher's (``run(timeout=)``)."""
        warn_renamed("ResultHandle.arm()", "run(timeout=)")
        self._arm(seconds)

    def abandon(self, error: BaseException) -> None:
        """Deprecated: failing a handle is the batcher's; a caller calls `cancel`."""
        warn_renamed("ResultHandle.abandon()", "cancel()")
        self._abandon(error)

    def deliver(self, outcome: Any) -> None:
        """Deprecated: delivering the outcome is the batcher's."""
        warn_renamed("ResultHandle.deliver()", "nothing: delivering is the batcher's")
        self._deliver(outcome)

    @property
    def departed(self) -> bool:
        """Deprecated: `done` says whether the handle is settled."""
        warn_renamed("ResultHandle.departed", "done()")
        return self._departed

    @property
    def expired(self) -> bool:
        """Deprecated: a handle whose timeout passed raises `hibachi.Timeout`."""
        warn_renamed("ResultHandle.expired", "done() and the Timeout it raises")
        return self._expired


def make_handle(
    described: tuple[Any, Layout, int],
    inbox: LoopInbox | None,
    arrival: float,
    deadline: float | None,
) -> ResultHandle:
    """A handle for the current context: of ``inbox``'s loop, or of a plain thread."""
    if inbox is None:
        return _ThreadHandle(described, arrival, deadline)
    return _LoopHandle(described, inbox, arrival, deadline)


@final
class _LoopHandle(ResultHandle):
    """A handle awaited in an event loop, through an asyncio future of that loop."""

    __slots__ = ("_future", "_inbox", "_timer")

    def __init__(
        self,
        described: tuple[Any, Layout, int],
        inbox: LoopInbox,
        arrival: float,
        deadline: float | None,
    ) -> None:
        self._leaves, self._layout, self._length = described
        self._arrival = arrival
        self._deadline = deadline
        self._inbox = inbox
        self._future: asyncio.Future[Any] = _Future(loop=inbox.channel.loop)
        self._cancelled = False
        self._expired = False
        self._timer: asyncio.TimerHandle | None = None

    @property
    def __await__(self) -> Any:
        """``await handle`` goes straight to the future's own iterator, once the
        running loop is known to be the future's: a future awaited from another
        loop is refused by that loop's task only after it is marked as awaited,
        and a later ``await`` in its own loop would then fail."""
        future = self._future
        if _get_running_loop() is not future.get_loop():
            return _refuse_other_loop  # raising here would reach the caller as AttributeError
        return future.__await__

    def result(self, timeout: float | None = None) -> Any:
        future = self._future
        if not future.done():
            loop = future.get_loop()
            if _running_loop() is loop:
                raise RuntimeError("result() would block the event loop it waits for: await it")
            if not loop.is_running():  # nothing would ever settle the future: do not wait
                raise RuntimeError(
                    "the event loop this handle was made in is not running: its result "
                    "arrives only through that loop (await the handle there)"
                )
            seconds = check_wait(timeout)
            waiting = asyncio.run_coroutine_threadsafe(_settled(future), loop)
            try:
                waiting.result(seconds)
            except TimeoutError:
                waiting.cancel()
                raise Timeout(f"no result within {timeout} s (the request goes on)") from None
        return future.result()

    def done(self) -> bool:
        return self._future.done()

    def cancel(self) -> bool:
        future = self._future
        if future.done():
            return False
        self._cancelled = True
        loop = future.get_loop()
        if _running_loop() is loop:
            future.cancel()
        else:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the future
                loop.call_soon_threadsafe(future.cancel)
        return True

    def _arm(self, seconds: float) -> None:
        if not self._future.done():
            self._timer = self._future.get_loop().call_later(seconds, self._expire)

    def _expire(self) -> None:
        if not self._future.done():
            self._expired = True
            self._future.set_exception(Timeout(_TIMED_OUT))

    def _abandon(self, error: BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody awaits the future
            self._future.get_loop().call_soon_threadsafe(self._fail, error)

    def _fail(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)

    # -- as an `Item`, on the engine's thread -------------------------------------------

    @property
    def _departed(self) -> bool:
        return self._cancelled or self._future.done() or self._inbox.channel.dead

    def _deliver(self, outcome: Any) -> None:
        self._outcome = outcome
        self._inbox.handles.append(self)  # the engine posts the inbox after the batch

    def settle(self) -> None:
        """Hand the outcome to the future, in the loop's thread."""
        timer = self._timer
        if timer is not None:
            timer.cancel()
            self._timer = None
        outcome, self._outcome = self._outcome, None
        future = self._future
        if future.done():
            return
        if type(outcome) is Failure:
            future.set_exception(outcome.error)
        else:
            future.set_result(outcome)


@final
class _ThreadHandle(ResultHandle):
    """A handle waited for on a plain thread, through a `threading.Event`."""

    __slots__ = ("_event",)

    def __init__(
        self, described: tuple[Any, Layout, int], arrival: float, deadline: float | None
    ) -> None:
        self._leaves, self._layout, self._length = described
        self._arrival = arrival
        self._deadline = deadline
        self._event = threading.Event()
        self._outcome: Any = _PENDING
        self._cancelled = False
        self._expired = False

    def result(self, timeout: float | None = None) -> Any:
        if not self._event.wait(self._wait_seconds(check_wait(timeout))):
            if self._deadline is None or time.monotonic() < self._deadline:
                raise Timeout(f"no result within {timeout} s (the request goes on)")
            self._expired = True
        if self._cancelled:
            raise CancelledError()
        if self._expired:
            raise Timeout(_TIMED_OUT)
        outcome = self._outcome
        if type(outcome) is Failure:
            raise outcome.error
        return outcome

    def _wait_seconds(self, timeout: float | None) -> float | None:
        if self._deadline is None:
            return timeout
        left = max(0.0, self._deadline - time.monotonic())
        return left if timeout is None else min(left, timeout)

    def done(self) -> bool:
        return self._cancelled or self._expired or self._outcome is not _PENDING

    def cancel(self) -> bool:
        if self.done():
            return False
        self._cancelled = True
        self._event.set()
        return True

    def _abandon(self, error: BaseException) -> None:
        if not self.done():
            self._outcome = Failure(error)
            self._event.set()

    # -- as an `Item`, on the engine's thread -------------------------------------------

    @property
    def _departed(self) -> bool:
        return self._cancelled or self._expired

    def _deliver(self, outcome: Any) -> None:
        self._outcome = outcome
        self._event.set()


def _refuse_other_loop() -> Generator[Any, None, Any]:
    raise RuntimeError(
        "this handle belongs to another event loop: await it in the loop that "
        "called run(), or call .result() from another thread"
    )


async def _settled(future: asyncio.Future[Any]) -> None:
    """Wait for ``future`` without cancelling it if this wait is cancelled."""
    await asyncio.wait([future])


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
