"""`TokenStream`: what a caller of ``AutoregressiveBatcher.run`` iterates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, final

from .._core.delivery import END, AsyncSink, Failure, ThreadSink
from .request import Request

__all__ = ["TokenStream"]


@final
class TokenStream:
    """The tokens generated for one request, in order, ending with the stop token.

    Iterate it with ``async for`` when it was created inside an event loop, or
    with ``for`` when it was created on a plain thread. Leaving the loop early,
    calling `cancel`, or cancelling the task that iterates frees the request's
    row at the batcher's next step. Errors (``ModelError``, ``Timeout``,
    ``BatcherClosed``) are raised from the iteration.
    """

    __slots__ = ("_done", "_notify", "_request", "_sink")

    def __init__(
        self, request: Request, sink: AsyncSink | ThreadSink, notify: Callable[[], None]
    ) -> None:
        self._request = request
        self._sink = sink
        self._notify = notify
        self._done = False

    @property
    def id(self) -> int:
        """A number unique to this request within the process."""
        return self._request.id

    @property
    def finished(self) -> bool:
        """Whether the stream has ended (normally, with an error, or cancelled)."""
        return self._done

    def cancel(self) -> None:
        """Stop generating for this request; the stream ends. Idempotent."""
        if not self._done:
            self._done = True
            self._request.cancelled = True
            self._notify()

    def __del__(self) -> None:
        # An abandoned stream (``break`` out of its loop, a dropped reference)
        # must not keep its row: cancelling only sets flags, safe from any thread.
        if not getattr(self, "_done", True):
            self.cancel()

    # -- asyncio ------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Any]:
        return _Loop(self)

    async def __anext__(self) -> Any:
        if self._done:
            raise StopAsyncIteration
        sink = self._sink
        if not isinstance(sink, AsyncSink):
            raise TypeError("this stream was created outside an event loop: iterate it with `for`")
        try:
            item = await sink.get()
        except asyncio.CancelledError:
            self.cancel()
            raise
        return self._unwrap(item, StopAsyncIteration)

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
        if self._done:
            raise StopIteration
        sink = self._sink
        if not isinstance(sink, ThreadSink):
            raise TypeError("this stream was created in an event loop: iterate it with `async for`")
        return self._unwrap(sink.get(), StopIteration)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()

    def _unwrap(self, item: Any, stop: type[Exception]) -> Any:
        if item is END:
            self._done = True
            raise stop
        if isinstance(item, Failure):
            self._done = True
            raise item.error
        self._request.taken += 1
        return item


class _Loop:
    """One ``for`` or ``async for`` over a stream.

    The loop holds the only reference to it, so leaving the loop early (``break``,
    ``return``, an exception) drops it, and that cancels the stream at once, even
    while the caller still holds the stream itself. After the stream ended,
    cancelling does nothing.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: TokenStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        return self._stream.__next__()

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    def __anext__(self) -> Awaitable[Any]:
        return self._stream.__anext__()

    def __del__(self) -> None:
        self._stream.cancel()
