"""Helpers for the feedforward tests.

`Recorded` is an item that keeps its outcome; `Driver` does what the engine
thread does (arrivals in, one batch through the model, outcomes out) with a
clock the test moves by hand: the core without threads or event loops.
`Gate` holds a real batcher's model calls until the test lets them through.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from hibachi._core.delivery import Failure
from hibachi._core.model import model_error
from hibachi._exceptions import InvalidRequest, ModelError
from hibachi._feedforward.core import FeedforwardCore
from hibachi._feedforward.item import InputChecker, Layout

T = TypeVar("T")


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorded:
    """An `Item` that records its one outcome; ``cancelled`` makes it depart."""

    def __init__(
        self,
        described: tuple[Any, Layout, int],
        arrival: float,
        deadline: float | None = None,
        tag: Any = None,
    ) -> None:
        self._leaves, self._layout, self._length = described
        self._arrival = arrival
        self._deadline = deadline
        self._seq = 0
        self.tag = tag
        self.cancelled = False
        self._expired = False
        self.outcomes: list[Any] = []

    @property
    def _departed(self) -> bool:
        return self.cancelled

    def _deliver(self, outcome: Any) -> None:
        assert not self.outcomes, "an item was answered twice"
        self.outcomes.append(outcome)

    @property
    def answered(self) -> bool:
        return bool(self.outcomes)

    @property
    def result(self) -> Any:
        (outcome,) = self.outcomes
        assert not isinstance(outcome, Failure), f"failed with {outcome.error!r}"
        return outcome

    @property
    def error(self) -> BaseException:
        (outcome,) = self.outcomes
        assert isinstance(outcome, Failure), f"answered with {outcome!r}"
        return outcome.error


class Driver:
    """A core, its input checks and a model, stepped by hand."""

    def __init__(
        self,
        model: Callable[[Any], Any],
        *,
        max_batch_size: int = 4,
        max_wait: float = 0.0,
        pad_value: Any = None,
        trim_output: bool = False,
        max_batch_tokens: int | None = None,
    ) -> None:
        self.model = model
        self.clock = FakeClock()
        self.checker = InputChecker(pad_value)
        self.core = FeedforwardCore(
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            max_batch_tokens=max_batch_tokens,
            trim_output=trim_output,
            clock=self.clock,
        )
        self.calls: list[Any] = []

    def submit(self, x: Any, *, timeout: float | None = None, tag: Any = None) -> Recorded:
        now = self.clock()
        deadline = None if timeout is None else now + timeout
        item = Recorded(self.checker.describe(x), now, deadline, tag)
        self.core.add([item])
        return item

    def round(self, *, closing: bool = False) -> int | None:
        """Run the next batch, as the engine would; its size, or None if none was ready."""
        batch = self.core.next_batch(closing=closing)
        if batch is None:
            return None
        try:
            inputs = self.core.inputs(batch)
        except Exception as exc:
            self.core.fail(batch, InvalidRequest(str(exc)))
            return len(batch)
        self.calls.append(inputs)
        try:
            output = self.model(inputs)
        except Exception as exc:
            self.core.fail(batch, model_error(exc))
            return len(batch)
        try:
            self.core.complete(batch, output)
        except ModelError as error:
            self.core.fail(batch, error)
        return len(batch)

    def drain(self, *, closing: bool = False) -> list[int]:
        """Rounds until nothing is ready; the size of each."""
        sizes = []
        while (size := self.round(closing=closing)) is not None:
            sizes.append(size)
        return sizes


TIMEOUT = 10.0


class Gate:
    """Wraps a one-argument model so that each call waits for the test's permission.

    Each call records its batch on ``arrivals`` (and ``seen``), then blocks
    until `release` or `open`.
    """

    def __init__(self, model: Callable[[Any], Any] = lambda batch: batch) -> None:
        self.model = model
        self.arrivals: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        self._permits = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, batch: Any) -> Any:
        self.seen.append(batch)
        self.arrivals.put(batch)
        if not self._open.is_set() and not self._permits.acquire(timeout=TIMEOUT):
            raise RuntimeError("the test never released this call")
        return self.model(batch)

    def next_batch(self) -> Any:
        """What the next model call was given (waits for it)."""
        return self.arrivals.get(timeout=TIMEOUT)

    async def arrival(self) -> Any:
        """`next_batch` without blocking the event loop."""
        return await asyncio.to_thread(self.next_batch)

    def release(self, calls: int = 1) -> None:
        for _ in range(calls):
            self._permits.release()

    def open(self) -> None:
        """Let every call, present and future, through."""
        self._open.set()
        self._permits.release()


def run_async(main: Coroutine[Any, Any, T], timeout: float = 2 * TIMEOUT) -> T:
    """Run ``main`` in a fresh event loop; fail instead of hanging."""
    return asyncio.run(asyncio.wait_for(main, timeout))
