"""The feedforward engine thread: moves arrivals into the core, runs its batches.

It is the only thread that touches the core. Callers reach it through the
`WorkQueue`; results leave through the handles and the loops' inboxes. When
nothing is ready it sleeps on the queue, until an arrival or until the wait
window of the oldest item runs out: an idle batcher uses no CPU.

Where stacking a batch costs something (`FeedforwardCore.next_batch_ahead`),
the next batch is stacked on a helper thread while the model runs the
current one; the helper only reads the items' inputs. It starts the first
time it is needed, and ends with the engine.
"""

from __future__ import annotations

from typing import Any

from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, describe, engine_failure, is_fatal, model_error
from .._core.pipeline import Job, Pipeline, Stages
from .._core.queue import WorkQueue
from .._exceptions import HibachiError, InvalidRequest, ModelError
from .batch import Batch, assemble
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
        self._ahead: tuple[Batch, Job] | None = None  # the next batch, being stacked meanwhile
        self._stacker: Stages | None = None  # the helper thread that stacks it, once needed
        self._name = name

    def _crash(self, exc: BaseException) -> None:
        self._admit()
        running, self._running = self._running, None
        message = engine_failure(exc)
        self.core.abort(message, cause=exc, running=running)
        self._drop_ahead(message, exc)

    def _flush(self) -> None:
        self.outbox.flush()

    def _abandon(self, error: BaseException) -> None:
        running, ahead = self._running, self._ahead
        items = (running.items if running is not None else []) + self.core.waiting()
        items += ahead[0].items if ahead is not None else []
        for item in items + self.queue.snapshot():
            item._abandon(error)

    def _loop(self) -> None:
        try:
            self._serve()
        finally:
            if self._stacker is not None:
                self._stacker.close()

    def _serve(self) -> None:
        core, queue = self.core, self.queue
        while True:
            if self._abort:
                self._admit()
                message = "the batcher was closed before the request was answered"
                core.abort(message)
                self._drop_ahead(message)
                return
            held = self._admit()
            ahead, self._ahead = self._ahead, None
            batch = core.next_batch(closing=queue.closed) if ahead is None else ahead[0]
            queue.release(held - len(core))
            if batch is not None:
                self._run(batch, None if ahead is None else ahead[1])
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

    def _run(self, batch: Batch, stacking: Job | None = None) -> None:
        """One batch through the model (``stacking``: its inputs, being stacked on the
        helper thread). Whatever the model raises fails this batch only, except
        `KeyboardInterrupt` and `SystemExit` (see `is_fatal`), which end the loop:
        `_crash` then ends this batch's callers with the others."""
        self._running = batch
        self._attempt(batch, stacking)
        self._running = None

    def _attempt(self, batch: Batch, stacking: Job | None) -> None:
        core = self.core
        with batch.layout.backend.inference_context():
            try:
                if stacking is None:
                    inputs = core.inputs(batch)
                else:
                    inputs = core.adopt(batch, stacking.result(), sum(stacking.seconds))
            except Exception as exc:
                core.fail(batch, stacking_error(exc))
                return
            self._stack_ahead()
            try:
                output: Any = self.runner(inputs)
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                core.fail(batch, model_error(exc))
                return
        deliver(core, batch, output)

    def _stack_ahead(self) -> None:
        """Start stacking the next batch on the helper thread, if that is worth it."""
        if self.core.stack_ahead_min is None:
            return
        held = self._admit()
        batch = self.core.next_batch_ahead()
        self.queue.release(held - len(self.core))
        if batch is None:
            return
        if self._stacker is None:
            self._stacker = Stages(Pipeline(assemble), f"{self._name}-stack", 1)
            self._stacker.start()
        job = self._stacker.submit((batch,), batch.layout.backend.inference_context, _nothing)
        self._ahead = (batch, job)

    def _drop_ahead(self, message: str, cause: BaseException | None = None) -> None:
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            self.core.abort(message, cause=cause, running=ahead[0])


def _nothing() -> None:
    pass


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
