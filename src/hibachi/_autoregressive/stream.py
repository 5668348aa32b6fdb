"""`TokenStream`: what a caller of ``AutoregressiveBatcher.run`` iterates."""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, final

from .._core.delivery import END, AsyncSink, Failure, ThreadSink
from .._core.settings import warn_renamed
from . import caller_deadline
from .request import Request

__all__ = ["TokenStream"]

_claiming = threading.Lock()  # makes a thread's check-and-set of ``_reading`` atomic


@final
class TokenStream:
    """The tokens generated for one request, in order, ending with the stop token.

    Iterate it with ``async for`` when it was created inside an event loop, or
    with ``for`` when it was created on a plain thread. Leaving the loop early,
    calling `cancel`, or cancelling the task that iterates frees the request's
    row at the batcher's next step. Errors (``ModelError``, ``Timeout``,
    ``BatcherClosed``) are raised from the iteration.

    A stream has one reader at a time: reading it from a second task or thread
    while a first waits on it, or waiting for it in an event loop other than
    the one it was created in, raises `RuntimeError` at once. A stream cannot be copied or
    pickled (`TypeError`): it is one caller's handle on one request.
    """

    __slots__ = ("_done", "_notify", "_reading", "_request", "_sink", "_timer")

    def __init__(
        self, request: Request, sink: AsyncSink | ThreadSink, notify: Callable[[], None]
    ) -> None:
        self._request = request
        self._sink = sink
        self._notify = notify
        self._done = False
        self._reading = False  # a reader is waiting for an item
        # the deadline, kept on this side too: it fires even while the model is stuck
        self._timer = (
            caller_deadline.arm(request, sink, notify) if isinstance(sink, AsyncSink) else None
        )

    @property
    def id(self) -> int:
        """A number unique to this request within the process."""
        return self._request.id

    def done(self) -> bool:
        """Whether the stream has ended (normally, with an error, or cancelled)."""
        return self._done

    @property
    def finished(self) -> bool:
        """Deprecated: `done`, as `ResultHandle.done` and ``asyncio.Future.done``."""
        warn_renamed("TokenStream.finished", "done()")
        return self._done

    def cancel(self) -> None:
        """Stop generating for this request; the stream ends. Idempotent."""
        if not self._done:
            self._end()
            self._request.cancelled = True
            self._notify()

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("a TokenStream cannot be copied or pickled: it is one caller's handle")

    def __del__(self) -> None:
        # An abandoned stream (``break`` out of its loop, a dropped reference)
        # must not keep its row: cancelling only sets flags, safe from any thread.
        if not getattr(self, "_done", True):
            self.cancel()

    # -- asyncio ------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Any]:
        return _Loop(self)

    def __anext__(self) -> Awaitable[Any]:
        return self._anext(None)

    async def _anext(self, loop: _Loop | None) -> Any:
        if self._done:
            raise StopAsyncIteration
        sink = self._sink
        if not isinstance(sink, AsyncSink):
            raise TypeError("this stream was created outside an event loop: iterate it with `for`")
        if sink._items:  # delivered already: no waiting, so nothing to check
            item = sink._items.popleft()
        else:
            item = await self._wait(sink)
        if loop is not None:
            loop.armed = True
        return self._unwrap(item, StopAsyncIteration)

    async def _wait(self, sink: AsyncSink) -> Any:
        """The next item, for the one task that may wait for it: in the stream's own loop."""
        if asyncio.get_running_loop() is not sink._channel.loop:
            raise RuntimeError(
                "this stream belongs to the event loop it was created in: read it there"
            )
        if self._reading:
            raise RuntimeError("another task is already reading this stream")
        self._reading = True
        try:
            return await sink.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        finally:
            self._reading = False

    async def collect(self) -> list[Any]:
        """All remaining tokens, as a list."""
        return [token async for token in self]

    async def __aenter__(self) -> TokenStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.cancel()

    # -- threads ------------------------------------------------------------------

    def __iter__(self) -> Iterator[Any]:
        return _Loop(self)

    def __next__(self) -> Any:
        return self._next(None)

    def _next(self, loop: _Loop | None) -> Any:
        if self._done:
            raise StopIteration
        sink = self._sink
        if not isinstance(sink, ThreadSink):
            raise TypeError("this stream was created in an event loop: iterate it with `async for`")
        with _claiming:
            if self._reading:
                raise RuntimeError("another thread is already reading this stream")
            self._reading = True
        try:
            item = sink.get(caller_deadline.seconds_left(self._request))
        except queue.Empty:
            self._done = True
            raise caller_deadline.expire(self._request, self._notify) from None
        finally:
            self._reading = False
        if loop is not None:
            loop.armed = True
        return self._unwrap(item, StopIteration)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def _unwrap(self, item: Any, stop: type[Exception]) -> Any:
        if item is END:
            self._end()
            raise stop
        if isinstance(item, Failure):
            self._end()
            raise item.error
        self._request.taken += 1
        return item

    def _end(self) -> None:
        self._done = True
        timer, self._timer = self._timer, None
        if timer is not None and isinstance(self._sink, AsyncSink):
            caller_deadline.disarm(timer, self._sink)


class _Loop:
    """One ``for`` or ``async for`` over a stream.

    The loop holds the only reference to it, so leaving the loop early (``break``,
    ``return``, an exception) drops it, and that cancels the stream at once, even
    while the caller still holds the stream itself. A loop whose reads were all
    refused (another reader, the wrong kind of loop) never read, so dropping it
    cancels nothing. After the stream ended, cancelling does nothing.
    """

    __slots__ = ("_stream", "armed")

    def __init__(self, stream: TokenStream) -> None:
        self._stream = stream
        self.armed = False  # set once a read of this loop got past the checks

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self._stream._next(self)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._stream._anext(self)

    def __del__(self) -> None:
        if self.armed:
            self._stream.cancel()
