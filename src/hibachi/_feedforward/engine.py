"""The feedforward engine thread: moves arrivals into the core, runs its batches.

It is the only thread that touches the core. Callers reach it through the
`WorkQueue`; results leave through the handles and the loops' inboxes. When
nothing is ready it sleeps on the queue, until an arrival or until the wait
window of the oldest item runs out: an idle batcher uses no CPU.
"""

from __future__ import annotations

from typing import Any

from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, model_error
from .._core.queue import WorkQueue
from .._exceptions import HibachiError, InvalidRequest, ModelError
from .batch import Batch
from .core import FeedforwardCore
from .item import Item
from .loop_inbox import LoopInboxes

__all__ = ["FeedforwardEngine"]


class FeedforwardEngine(EngineThread):
    """Owns the thread that feeds ``core`` from ``queue`` and calls the model until closed."""

    def __init__(
        self,
        core: FeedforwardCore,
        queue: WorkQueue[Item],
        runner: ModelRunner,
        outbox: LoopInboxes,
        name: str,
    ) -> None:
        super().__init__(queue, runner, name)
        self.queue: WorkQueue[Item] = queue
        self.core = core
        self.outbox = outbox
        self._running: Batch | None = None  # the batch in the model now

    def _crash(self, exc: BaseException) -> None:
        self._admit()
        self.core.abort(f"hibachi's engine failed: {type(exc).__name__}: {exc}")

    def _flush(self) -> None:
        self.outbox.flush()

    def _abandon(self, error: BaseException) -> None:
        running = self._running
        items = (running.items if running is not None else []) + self.core.waiting()
        for item in items + self.queue.snapshot():
            item.abandon(error)

    def _loop(self) -> None:
        core, queue = self.core, self.queue
        while True:
            if self._abort:
                self._admit()
                core.abort("the batcher was closed before the request was answered")
                return
            held = self._admit()
            batch = core.next_batch(closing=queue.closed)
            queue.release(held - len(core))
            if batch is not None:
                self._run(batch)
            self.outbox.flush()
            if batch is None:
                if queue.closed and not len(queue) and not len(core):
                    return
                queue.wait(core.wait_time())

    def _admit(self) -> int:
        """Move arrivals into the core; the number of items it then holds."""
        self.core.add(self.queue.drain(hold=True))
        return len(self.core)

    def _run(self, batch: Batch) -> None:
        core = self.core
        with batch.layout.backend.inference_context():
            try:
                inputs = core.inputs(batch)
            except Exception as exc:
                core.fail(batch, _stacking_error(exc))
                return
            self._running = batch
            try:
                output: Any = self.runner(inputs)
            except Exception as exc:
                core.fail(batch, model_error(exc))
                return
            finally:
                self._running = None
        try:
            core.complete(batch, output)
        except ModelError as error:
            core.fail(batch, error)


def _stacking_error(exc: Exception) -> HibachiError:
    error = InvalidRequest(f"the input could not be stacked: {type(exc).__name__}: {exc}")
    error.__cause__ = exc
    return error
