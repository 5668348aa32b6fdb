"""Driving the synchronous `Scheduler` step by step: no threads, no event loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from hibachi._autoregressive.engine import run_step
from hibachi._autoregressive.layout import Layout
from hibachi._autoregressive.request import Request, check_prompt
from hibachi._autoregressive.scheduler import Scheduler, Send
from hibachi._backends import Backend, backend_of
from hibachi._core.queue import WorkQueue
from support.models import to_numpy


class ListSink:
    """A sink that keeps what it is given in a list."""

    lost = False

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.ended = False
        self.error: BaseException | None = None

    def put(self, item: Any) -> None:
        assert not self.ended, "a token after the end of the stream"
        self.items.append(item)

    def end(self, error: BaseException | None = None) -> None:
        assert not self.ended, "a stream ended twice"
        self.ended = True
        self.error = error

    def tokens(self) -> list[Any]:
        return [to_numpy(item).tolist() for item in self.items]


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Driver:
    """A `Scheduler` with a `WorkQueue`, a fake clock and list sinks, stepped by hand.

    ``layout`` builds the scheduler's layout from the backend and the padding
    token (default: the stateless `SequenceBuffer`). ``seen`` holds a NumPy copy
    of the (tokens, mask) of every stateless model call.
    """

    def __init__(
        self,
        model: Callable[[Any, Any], Any],
        *,
        stop: Any,
        pad: Any,
        max_batch_size: int = 4,
        max_queue_size: int | None = None,
        backend: Backend | None = None,
        layout: Callable[[Backend, Any], Layout] | None = None,
        send: Send | None = None,
    ) -> None:
        found = backend or backend_of(pad)
        assert found is not None
        self.backend = found
        self.pad = found.to_storage(pad, pad)
        self.model = model
        self.clock = FakeClock()
        self.queue: WorkQueue[Request] = WorkQueue(max_queue_size)
        self.layout = None if layout is None else layout(found, self.pad)
        self.scheduler = Scheduler(
            found,
            stop_token=found.to_storage(stop, self.pad),
            pad_value=self.pad,
            max_batch_size=max_batch_size,
            queue=self.queue,
            clock=self.clock,
            layout=self.layout,
            send=send,
        )
        self.seen: list[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] = []

    def submit(
        self, prompt: Any, max_new_tokens: int = 8, deadline: float | None = None
    ) -> tuple[Request, ListSink]:
        device = self.backend.device(self.backend.to_user(self.pad))
        storage = check_prompt(self.backend, prompt, self.pad, device)
        sink = ListSink()
        request = Request(storage, max_new_tokens, sink, deadline=deadline)
        self.scheduler.submit(request)
        return request, sink

    def cancel(self, request: Request) -> None:
        request.cancelled = True
        self.scheduler.note_departure()

    def step(self) -> bool:
        """One step as the engine runs it; False if there was nothing to run."""
        scheduler = self.scheduler
        if not scheduler.schedule():
            return False
        run_step(scheduler, self._call)
        return True

    def _call(self, tokens: Any, mask: Any) -> Any:
        self.seen.append((to_numpy(tokens), to_numpy(mask)))
        return self.model(tokens, mask)

    def run_until_idle(self, limit: int = 10_000) -> int:
        """Step until no row is active and nothing waits; the number of steps."""
        for steps in range(limit):
            if not self.step():
                return steps
        raise AssertionError(f"still busy after {limit} steps")

    @property
    def width(self) -> int:
        return self.scheduler.layout.width
