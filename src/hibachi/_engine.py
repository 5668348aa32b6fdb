"""The engine thread: runs the scheduler's steps, one after another.

It is the only thread that touches the scheduler's rows and buffers. Callers
reach it through the scheduler's queue; results leave through sinks.
"""

from __future__ import annotations

import threading
from typing import Any

from ._delivery import Channels
from ._exceptions import BatcherClosed, HibachiError, ModelError
from ._model import ModelRunner, model_error
from ._scheduler import Scheduler

__all__ = ["Engine"]


class Engine:
    """Owns the thread that steps ``scheduler`` with ``runner`` until closed."""

    def __init__(self, scheduler: Scheduler, runner: ModelRunner, channels: Channels, name: str):
        self.scheduler = scheduler
        self.runner = runner
        self.channels = channels
        self._abort = False
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.stopped = threading.Event()

    def start(self) -> None:
        self._thread.start()

    def stop(self, *, cancel: bool) -> None:
        """Refuse new requests; finish (or, with ``cancel``, end) the rest, then exit."""
        if cancel:
            self._abort = True
        self.scheduler.queue.close()
        self.scheduler.queue.wake()

    def join(self, timeout: float | None = None) -> bool:
        return self.stopped.wait(timeout)

    def _main(self) -> None:
        try:
            self._loop()
        except BaseException as exc:
            error = HibachiError(f"hibachi's engine failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            self.scheduler.queue.close()
            self.scheduler.abort(error)
            raise
        finally:
            self.channels.flush()
            self.runner.close()
            self.stopped.set()

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
        scheduler = self.scheduler
        inputs = scheduler.model_inputs()
        try:
            with scheduler.backend.inference_context():
                output: Any = self.runner(*inputs)
        except Exception as exc:
            scheduler.fail(model_error(exc))
            return
        try:
            scheduler.complete(output)
        except ModelError as error:
            scheduler.fail(error)
