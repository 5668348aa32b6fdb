"""The feedforward engine thread: moves arrivals into the core, runs its batches.

It is the only thread that touches the core. Callers reach it through the
`WorkQueue`; results leave through the handles and the loops' inboxes. When
nothing is ready it sleeps on the queue, until an arrival or until the wait
window of the oldest item runs out: an idle batcher uses no CPU.
"""

from __future__ import annotations

from typing import Any

from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, describe, engine_failure, is_fatal, model_error
from .._core.queue import WorkQueue
from .._exceptions import HibachiError, InvalidRequest, ModelError
from .batch import Batch
from .core import FeedforwardCore
from .item import Item
from .loop_inbox import LoopInboxes

__all__ = ["FeedforwardEngine", "deliver", "stacking_error"]


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
        self.runner: ModelRunner = runner
        self.core = core
        self.outbox = outbox
        self._running: Batch | None = None  # the batch between the waiting room and its outcome

    def _crash(self, exc: BaseException) -> None:
        self._admit()
        running, self._running = self._running, None
        message = engine_failure(exc)
        self.core.abort(message, cause=exc, running=running)

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
            answered = self.outbox.flush()
            if batch is None:
                if queue.closed and not len(queue) and not len(core):
                    return
                queue.wait(core.wait_time())
            elif answered and len(core) + len(queue) < core.max_batch_size:
                self.outbox.wait_turns(answered, core.call_price(batch.layout))

    def _admit(self) -> int:
        """Move arrivals into the core; the number of items it then holds."""
        self.core.add(self.queue.drain(hold=True))
        return len(self.core)

    def _run(self, batch: Batch) -> None:
        """One batch through the model. Whatever the model raises fails this batch
        only, except `KeyboardInterrupt` and `SystemExit` (see `is_fatal`), which
        end the loop: `_crash` then ends this batch's callers with the others."""
        self._running = batch
        self._attempt(batch)
        self._running = None

    def _attempt(self, batch: Batch) -> None:
        core = self.core
        with batch.layout.backend.inference_context():
            try:
                inputs = core.inputs(batch)
            except Exception as exc:
                core.fail(batch, stacking_error(exc))
                return
            try:
                output: Any = self.runner(inputs)
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                core.fail(batch, model_error(exc))
                return
        deliver(core, batch, output)


def deliver(core: FeedforwardCore, batch: Batch, output: Any, seconds: float | None = None) -> None:
    """``batch``'s results from the model's ``output``; the batch fails if it is unusable."""
    try:
        core.complete(batch, output, seconds)
    except ModelError as error:
        core.fail(batch, error)
    except BaseException as exc:  # the output's own methods raised while it was split
        if is_fatal(exc):
            raise
        core.fail(batch, model_error(exc))


def stacking_error(exc: Exception) -> HibachiError:
    error = InvalidRequest(f"the input could not be stacked: {describe(exc)}")
    error.__cause__ = exc
    return error
