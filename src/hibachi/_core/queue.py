"""A bounded, thread-safe FIFO of waiting work, with a close state.

Callers on any thread `put`; the engine thread `take`s without blocking and
`wait`s only when it has nothing else to do.
"""

from __future__ import annotations

import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

from .._exceptions import BatcherClosed, QueueFull

__all__ = ["WorkQueue"]

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """FIFO bounded by ``maxsize`` (None: unbounded) that can be closed to new work."""

    def __init__(self, maxsize: int | None) -> None:
        self.maxsize = maxsize
        self._limit = sys.maxsize if maxsize is None else maxsize
        self._items: deque[T] = deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._closed = False
        self._wakeup = False
        self._held = 0
        self._sleeping = False  # the consumer waits and nobody has woken it yet

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, *, wake: bool = True) -> None:
        """Append ``item``; raise QueueFull or BatcherClosed instead of waiting.

        ``wake=False`` leaves a sleeping consumer asleep: the producer calls
        `wake_sleeper` once it has put everything it has at hand.
        """
        with self._lock:  # the condition's own lock, without its Python-level __enter__
            if self._closed:
                raise BatcherClosed("the batcher is closed and accepts no new requests")
            if len(self._items) + self._held >= self._limit:
                waiting = len(self._items) + self._held
                raise QueueFull(f"{waiting} requests are already waiting (max_queue_size)")
            self._items.append(item)
            if wake:
                self._notify_sleeper()

    def push_front(self, item: T) -> None:
        """Put ``item``, taken from this queue earlier, back at the front (consumer thread).

        It was counted when first put, so neither ``maxsize`` nor a close
        refuses it: work already accepted is never lost.
        """
        with self._lock:
            self._items.appendleft(item)

    def take(self, limit: int, keep: Callable[[T], bool] | None = None) -> list[T]:
        """Remove and return up to ``limit`` items from the front.

        Items for which ``keep`` is False are skipped over and left queued.
        """
        if not self._items or limit <= 0:
            return []
        with self._cond:
            if keep is None:
                count = min(limit, len(self._items))
                return [self._items.popleft() for _ in range(count)]
            return self._take_matching(limit, keep)

    def _take_matching(self, limit: int, keep: Callable[[T], bool]) -> list[T]:
        taken: list[T] = []
        left: deque[T] = deque()
        while self._items and len(taken) < limit:
            item = self._items.popleft()
            (taken if keep(item) else left).append(item)
        left.extend(self._items)
        self._items = left
        return taken

    def drain(self, *, hold: bool = False) -> list[T]:
        """Remove and return everything queued; called by the one consumer thread.

        With ``hold``, the items keep counting toward ``maxsize`` until they are
        `release`d: for an engine that keeps its own waiting room.

        It takes no lock: each ``popleft`` is atomic, and only the consumer
        writes the held count. (A producer preempted by the GIL while inside
        `put`'s lock would otherwise make the consumer block on that lock and
        the two threads trade the GIL at every drain.) The held count grows
        before the items leave, so `put` may briefly count them twice, never
        zero times.
        """
        items = self._items
        count = len(items)
        if hold:
            self._held += count
        return [items.popleft() for _ in range(count)]

    def snapshot(self) -> list[T]:
        """A copy of what is queued, from any thread, leaving it queued."""
        with self._lock:
            return list(self._items)

    def release(self, count: int) -> None:
        """``count`` held items have left the waiting room (consumer thread only)."""
        self._held -= count

    def wait(self, timeout: float | None = None) -> None:
        """Block until an item is queued, the queue is closed, `wake` is called, or timeout."""
        with self._cond:
            if not self._items and not self._closed and not self._wakeup:
                self._sleeping = True
                try:
                    self._cond.wait(_waitable(timeout))
                finally:
                    self._sleeping = False
            self._wakeup = False

    def wake_sleeper(self) -> None:
        """Wake the consumer if it sleeps in `wait` (after a ``put(..., wake=False)``)."""
        with self._lock:
            self._notify_sleeper()

    def _notify_sleeper(self) -> None:
        # Under the lock. Wakes the consumer once, not at every put until it runs.
        if self._sleeping:
            self._sleeping = False
            self._cond.notify()

    def wake(self) -> None:
        """Make the current or next `wait` return at once."""
        with self._cond:
            self._wakeup = True
            self._cond.notify_all()

    def close(self) -> None:
        """Refuse new items from now on; queued items stay."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _waitable(timeout: float | None) -> float | None:
    """``timeout`` as the platform can wait it: None (for ever) past `threading.TIMEOUT_MAX`."""
    return None if timeout is None or timeout >= threading.TIMEOUT_MAX else timeout
