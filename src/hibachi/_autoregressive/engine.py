"""The engine thread: runs the scheduler's steps, one after another.

It is the only thread that touches the scheduler's rows and buffers. Callers
reach it through the scheduler's queue; results leave through sinks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .._core.delivery import Channels
from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, is_fatal, model_error
from .._exceptions import BatcherClosed, HibachiError, ModelError
from .scheduler import Scheduler

__all__ = ["Engine", "run_step"]


class Engine(EngineThread):
    """Steps ``scheduler`` with ``runner`` on the engine thread until closed."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner, channels: Channels, name: str):
        super().__init__(scheduler.queue, runner, name)
        self.scheduler = scheduler
        self.channels = channels

    def _crash(self, exc: BaseException) -> None:
        error = HibachiError(f"hibachi's engine failed: {type(exc).__name__}: {exc}")
        error.__cause__ = exc
        self.scheduler.abort(error)

    def _flush(self) -> None:
        self.channels.flush()

    def _loop(self) -> None:
        scheduler, queue = self.scheduler, self.scheduler.queue
        while True:
            if self._abort:
                scheduler.abort(BatcherClosed("the batcher was closed before the request finished"))
                return
            if scheduler.schedule():
                self._step()
                if self.channels.flush():
                    scheduler.note_departure()
                continue
            self.channels.flush()
            if queue.closed and not len(queue):
                return
            queue.wait()

    def _step(self) -> None:
        run_step(self.scheduler, self.runner)


def run_step(scheduler: Scheduler, call: Callable[..., Any]) -> None:
    """One step after ``schedule()``: the model on this step's inputs, then its output applied.

    A model that raises, or returns something unusable, fails only this step's rows;
    so does a `BaseException` unless `is_fatal` (then it propagates and stops the engine).
    """
    inputs = scheduler.model_inputs()
    try:
        with scheduler.backend.inference_context():
            output: Any = call(*inputs)
    except BaseException as exc:
        if is_fatal(exc):
            raise
        scheduler.fail(model_error(exc))
        return
    try:
        scheduler.complete(output)
    except ModelError as error:
        scheduler.fail(error)
