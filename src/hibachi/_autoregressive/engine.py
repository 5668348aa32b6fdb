"""The engine thread: runs the scheduler's steps, one after another.

It is the only thread that touches the scheduler's rows and buffers. Callers
reach it through the scheduler's queue; results leave through sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.delivery import Channels
from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, engine_failure
from .._exceptions import BatcherClosed, HibachiError
from .courier import Courier, Outlet
from .isolation import attempt, isolate
from .scheduler import Scheduler, copy_error

__all__ = ["Engine", "run_step"]


class Engine(EngineThread):
    """Steps ``scheduler`` with ``runner`` on the engine thread until closed."""

    def __init__(
        self,
        scheduler: Scheduler,
        runner: ModelRunner,
        channels: Channels,
        name: str,
        *,
        courier: Courier | None = None,
    ):
        """``courier``: delivers the tokens beside the next step (``delivery_thread=True``)."""
        super().__init__(scheduler.queue, runner, name)
        self.runner: ModelRunner = runner
        self.scheduler = scheduler
        self.outlet = Outlet(channels, courier)

    def _crash(self, exc: BaseException) -> None:
        error = HibachiError(engine_failure(exc))
        error.__cause__ = exc
        self.scheduler.abort(error)

    def _flush(self) -> None:
        self.outlet.close()

    def _abandon(self, error: BaseException) -> None:
        for request in list(self.scheduler.rows) + self.queue.snapshot():
            request.abandon(copy_error(error))

    def _loop(self) -> None:
        scheduler, queue = self.scheduler, self.scheduler.queue
        self.outlet.start()
        while True:
            if self._abort:
                scheduler.abort(BatcherClosed("the batcher was closed before the request finished"))
                return
            if scheduler.schedule():
                self._step()
                if self.outlet.deliver():
                    scheduler.note_departure()
                continue
            self.outlet.deliver()
            if queue.closed and not len(queue):
                return
            queue.wait()

    def _step(self) -> None:
        run_step(self.scheduler, self.runner)


def run_step(scheduler: Scheduler, call: Callable[..., Any]) -> None:
    """One step after ``schedule()``: the model on this step's inputs, then its output applied.

    When the model raises, or returns something unusable, only the rows that
    fail on their own fail (`hibachi._autoregressive.isolation`); so it is with a
    `BaseException`, unless `is_fatal` (then it propagates and stops the engine).
    """
    inputs = scheduler.model_inputs()
    if inputs is None:  # the model's memory ended every row
        return
    size = scheduler.layout.step_size(len(scheduler.rows))
    column, failed = attempt(scheduler, call, inputs, size)
    if failed is None:
        scheduler.apply(column)
    else:
        isolate(scheduler, call, size, failed)
