"""A request's deadline, kept on the caller's side of its stream.

The engine drops a row whose deadline passed at its next step; while a model
step is stuck, there is no next step. So the caller's side keeps the deadline
too: a thread waits on its stream at most until the deadline, and a stream in
an event loop gets a timer of that loop. Either way the caller gets `Timeout`
on time, and the request is marked expired, so that the engine drops its row
when the step returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from .._core.delivery import AsyncSink, Failure
from .._exceptions import Timeout
from .request import Request

__all__ = ["arm", "disarm", "expire", "seconds_left"]

MESSAGE = "the request was not finished before its deadline"
_FOREVER = 1e9  # seconds (31 years): a deadline further away is no deadline to wait for


def seconds_left(request: Request) -> float | None:
    """How long a thread may wait for the request's next token; None: no deadline."""
    deadline = request.deadline
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    return None if left >= _FOREVER else max(0.0, left)


def expire(request: Request, notify: Callable[[], None]) -> Timeout:
    """Mark ``request`` expired (its row goes at the engine's next step); the caller's error."""
    request.expired = True
    notify()
    return Timeout(MESSAGE)


def arm(
    request: Request, sink: AsyncSink, notify: Callable[[], None]
) -> asyncio.TimerHandle | None:
    """A timer of the sink's loop that ends the stream with `Timeout` at the deadline."""
    delay = seconds_left(request)
    if delay is None:
        return None
    loop = sink.loop
    return loop.call_at(loop.time() + delay, _fire, request, sink, notify)


def disarm(timer: asyncio.TimerHandle, sink: AsyncSink) -> None:
    """Cancel ``timer`` (from any thread: a stream may be dropped on another one)."""
    loop = sink.loop
    if _running_loop() is loop:
        timer.cancel()
    else:
        with contextlib.suppress(RuntimeError):  # a closed loop runs no timers
            loop.call_soon_threadsafe(timer.cancel)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _fire(request: Request, sink: AsyncSink, notify: Callable[[], None]) -> None:
    if not request.ended and not request.departed:
        sink.receive(Failure(expire(request, notify)))
