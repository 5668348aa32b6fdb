"""Carrying results from the engine thread to callers.

A *sink* is where one request's results go. The engine calls ``put`` and
``end`` from its own thread; the caller reads on its side:

- `ThreadSink`: a caller on a plain thread, blocking on a `queue.SimpleQueue`.
- `AsyncSink`: a caller in an event loop. Its items go through the loop's
  `LoopChannel`, which hands a whole step's items to the loop in a single
  ``call_soon_threadsafe``, however many streams of that loop the step fed.

Anything with a ``receive(item)`` method (a `Receiver`) can take items from a
`LoopChannel`; the feedforward batcher's result handles do.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections import deque
from typing import Any, Protocol

__all__ = ["END", "AsyncSink", "Channels", "Failure", "LoopChannel", "Receiver", "ThreadSink"]


class _End:
    __slots__ = ()

    def __repr__(self) -> str:
        return "END"


END: Any = _End()


class Failure:
    """An error to raise in the caller in place of a result."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class ThreadSink:
    """Results for a caller that blocks on a plain thread."""

    __slots__ = ("_queue",)
    lost = False

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def put(self, item: Any) -> None:
        self._queue.put(item)

    def end(self, error: BaseException | None = None) -> None:
        self._queue.put(END if error is None else Failure(error))

    def abandon(self, error: BaseException) -> None:
        """End the caller's wait with ``error`` now, from any thread, past the engine."""
        self._queue.put(Failure(error))

    def get(self, timeout: float | None = None) -> Any:
        """The next item; raises `queue.Empty` after ``timeout`` seconds."""
        return self._queue.get(timeout=timeout)


class Receiver(Protocol):
    """Takes an item from the engine, in its event loop's thread."""

    def receive(self, item: Any) -> None: ...


class LoopChannel:
    """Batches the engine's items for one event loop into one hop per flush."""

    __slots__ = ("dead", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[tuple[Receiver, Any]] = []
        self.dead = False

    def flush(self) -> None:
        if not self.pending or self.dead:
            return
        items, self.pending = self.pending, []
        try:
            self.loop.call_soon_threadsafe(_receive_all, items)
        except RuntimeError:  # the loop is closed: its callers are gone
            self.dead = True


def _receive_all(items: list[tuple[Receiver, Any]]) -> None:
    for sink, item in items:
        sink.receive(item)


class AsyncSink:
    """Results for a caller in an event loop; read with ``await get()``."""

    __slots__ = ("_channel", "_items", "_waiter")

    def __init__(self, channel: LoopChannel) -> None:
        self._channel = channel
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None

    @property
    def lost(self) -> bool:
        return self._channel.dead

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._channel.loop

    def put(self, item: Any) -> None:
        self._channel.pending.append((self, item))

    def abandon(self, error: BaseException) -> None:
        """End the caller's wait with ``error`` now, from any thread, past the engine."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
            self._channel.loop.call_soon_threadsafe(self.receive, Failure(error))

    def end(self, error: BaseException | None = None) -> None:
        self.put(END if error is None else Failure(error))

    def receive(self, item: Any) -> None:
        """Called in the loop's thread with an item from the engine."""
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while not self._items:
            self._waiter = self._channel.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class Channels:
    """The `LoopChannel` of every event loop that has callers, flushed together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_loop: dict[asyncio.AbstractEventLoop, LoopChannel] = {}
        self._all: tuple[LoopChannel, ...] = ()

    def sink_for_current_context(self) -> AsyncSink | ThreadSink:
        """An `AsyncSink` inside a running event loop, else a `ThreadSink`."""
        channel = self.channel_for_current_loop()
        return ThreadSink() if channel is None else AsyncSink(channel)

    def channel_for_current_loop(self) -> LoopChannel | None:
        """The `LoopChannel` of the running event loop; None outside one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        channel = self._by_loop.get(loop)
        if channel is None or channel.dead:
            channel = self._add(loop)
        return channel

    def _add(self, loop: asyncio.AbstractEventLoop) -> LoopChannel:
        with self._lock:
            channel = LoopChannel(loop)
            live = (c for c in self._all if not c.dead and not c.loop.is_closed())
            self._all = (*(c for c in live if c.loop is not loop), channel)
            self._by_loop = {c.loop: c for c in self._all}
            return channel

    def flush(self) -> bool:
        """Send every pending item; True if some loop was found closed."""
        lost = False
        for channel in self._all:
            channel.flush()
            lost = lost or channel.dead
        if lost:
            self._forget_dead()
        return lost

    def _forget_dead(self) -> None:
        with self._lock:
            self._all = tuple(c for c in self._all if not c.dead)
            self._by_loop = {c.loop: c for c in self._all}
