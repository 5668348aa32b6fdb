"""Delivery beside the model (``delivery_thread=True``): a courier thread hands out tokens.

Without it, the engine thread delivers a step's tokens itself between two model
calls: it splits the step's column into one token per row (``unbind``), puts
each in its caller's sink, ends the streams that finished, and wakes the
callers' event loops (`Channels.flush`). With it, the engine thread only
decides (which row gets which token, which rows end, back-pressure) and records
what to deliver; after the step it posts that record to the courier and goes on
to the next step, while the courier does the delivering.

Order is kept: every write the engine makes to a sink goes through the
courier's one inbox (a `CourierSink` wraps each request's sink), in the order
the engine made it, so a stream's end always follows its tokens. The engine
thread is still the only one that touches the schedulers; the courier touches
sinks and channels only. Closing the engine closes the courier after a last
post and waits for it (`close`), so nothing posted is lost.

Whether it pays depends on how much of the model call leaves the GIL free:
the courier's Python runs only while the engine thread waits outside the GIL
(docs/autoregressive.md, docs/benchmarks.md).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from .._backends import Backend
from .._core.delivery import Channels
from .request import Sink

__all__ = ["Courier", "CourierSink", "Outlet", "send_tokens"]

_log = logging.getLogger("hibachi")

Op = tuple[Callable[..., None], tuple[Any, ...]]


def send_tokens(backend: Backend, sinks: Sequence[tuple[Sink, int]], column: Any) -> None:
    """Put row ``i`` of ``column`` (one token per row, storage) in each ``(sink, i)``'s sink
    (a `CourierSink`'s own sink: this runs on the courier's thread)."""
    tokens = backend.unbind(backend.to_user(column))
    for sink, i in sinks:
        (sink.sink if isinstance(sink, CourierSink) else sink).put(tokens[i])


class Courier:
    """A thread that runs, in order, the deliveries the engine thread posts to it.

    `send`, `put`, `end`, `post` and `close` are called on the engine thread only.
    """

    def __init__(
        self, backend: Backend, channels: Channels, on_lost: Callable[[], None], name: str
    ) -> None:
        """``on_lost``: called (on the courier's thread) when a caller's event loop is found
        closed, so the engine looks for departed rows."""
        self._backend = backend
        self._channels = channels
        self._on_lost = on_lost
        self._batch: list[Op] = []
        self._inbox: queue.SimpleQueue[list[Op] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def send(self, sinks: Sequence[tuple[Sink, int]], column: Any) -> None:
        """Deliver row ``i`` of the step's ``column`` to each ``(sink, i)`` (`send_tokens`);
        the engine no longer writes ``column``, which the callers' tokens are views of."""
        self._batch.append((send_tokens, (self._backend, sinks, column)))

    def put(self, sink: Sink, item: Any) -> None:
        self._batch.append((sink.put, (item,)))

    def end(self, sink: Sink, error: BaseException | None) -> None:
        self._batch.append((sink.end, (error,)))

    def post(self) -> None:
        """Hand what was recorded since the last post to the courier's thread."""
        if self._batch:
            batch, self._batch = self._batch, []
            self._inbox.put(batch)

    def close(self) -> None:
        """Post what is left, then wait until the courier has delivered everything."""
        self.post()
        if self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join()
        else:  # never started, or gone: deliver here
            while not self._inbox.empty():
                batch = self._inbox.get()
                if batch is not None:
                    self._run(batch)
            self._flush()

    def _main(self) -> None:
        while (batch := self._inbox.get()) is not None:
            self._run(batch)
            if self._inbox.empty():  # the loops are woken once for all that is posted
                self._flush()
        self._flush()

    def _run(self, batch: list[Op]) -> None:
        for action, args in batch:
            try:
                action(*args)
            except Exception:  # a sink that fails must not stop the others' deliveries
                _log.exception("hibachi's courier could not deliver an item")

    def _flush(self) -> None:
        try:
            lost = self._channels.flush()
        except Exception:
            _log.exception("hibachi's courier could not wake an event loop")
            return
        if lost:
            self._on_lost()


class Outlet:
    """Where an engine thread sends each step's results: to the callers' event loops
    itself (``courier`` None), or through ``courier``."""

    __slots__ = ("channels", "courier")

    def __init__(self, channels: Channels, courier: Courier | None) -> None:
        self.channels = channels
        self.courier = courier

    def start(self) -> None:
        if self.courier is not None:
            self.courier.start()

    def deliver(self) -> bool:
        """Send the step's results on; True if some caller's event loop was found closed
        (known at once only without a courier: the courier reports it through ``on_lost``)."""
        if self.courier is None:
            return self.channels.flush()
        self.courier.post()
        return False

    def close(self) -> None:
        """Deliver what is left, on the engine thread's way out."""
        if self.courier is not None:
            self.courier.close()
        self.channels.flush()


class CourierSink:
    """A request's sink seen from the engine thread: its writes go through the courier."""

    __slots__ = ("_courier", "sink")

    def __init__(self, sink: Sink, courier: Courier) -> None:
        self.sink = sink
        self._courier = courier

    @property
    def lost(self) -> bool:
        return self.sink.lost

    def put(self, item: Any) -> None:
        self._courier.put(self.sink, item)

    def end(self, error: BaseException | None = None) -> None:
        self._courier.end(self.sink, error)

    def abandon(self, error: BaseException) -> None:
        """From another thread, past the engine and the courier (see `Request.abandon`)."""
        self.sink.abandon(error)
