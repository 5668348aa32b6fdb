"""Dynamic batching through a `Pipeline`: batch k+1 enters stage 1 while batch k is in stage 2.

Up to ``groups`` batches are in flight (by default one per stage), each of at
most ``max_batch_size`` items, and they come out in the order they went in. A
batch that failed is halved and its halves rerun as with a single model
(`FeedforwardCore.fail`), behind the batches already in flight. The engine
thread stays the only one that touches the core.
"""

from __future__ import annotations

import threading
from collections import deque

from .._core.model import engine_failure, is_fatal, model_error
from .._core.pipeline import Job, Stages
from .._core.queue import WorkQueue
from .batch import Batch
from .core import FeedforwardCore
from .engine import FeedforwardEngine, deliver, stacking_error
from .item import Item
from .loop_inbox import LoopInboxes

__all__ = ["PipelinedFeedforwardEngine"]


class PipelinedFeedforwardEngine(FeedforwardEngine):
    """Feeds ``core``'s batches through ``stages``, several in flight at once."""

    def __init__(
        self,
        core: FeedforwardCore,
        queue: WorkQueue[Item],
        stages: Stages,
        outbox: LoopInboxes,
        name: str,
    ) -> None:
        super().__init__(core, queue, stages, outbox, name)  # type: ignore[arg-type]
        self.stages = stages
        self._flight: deque[tuple[Batch, Job]] = deque()
        self._out = threading.Event()  # a job came out of the last stage

    def on_own_thread(self) -> bool:
        return super().on_own_thread() or self.stages.on_own_thread()

    def _crash(self, exc: BaseException) -> None:
        super()._crash(exc)
        message = engine_failure(exc)
        while self._flight:
            self.core.abort(message, cause=exc, running=self._flight.popleft()[0])

    def _abandon(self, error: BaseException) -> None:
        super()._abandon(error)
        for batch, _ in list(self._flight):
            for item in batch.items:
                item._abandon(error)

    def _loop(self) -> None:
        self.stages.start()
        core, queue = self.core, self.queue
        while True:
            if self._abort:
                self._complete(wait=True)
                self._admit()
                core.abort("the batcher was closed before the request was answered")
                return
            self._out.clear()
            moved = self._complete(wait=False)
            held = self._admit()
            moved = self._submit(closing=queue.closed) or moved
            queue.release(held - len(core))
            self.outbox.flush()
            if moved:
                continue
            if not self._flight:
                if queue.closed and not len(queue) and not len(core):
                    return
                queue.wait(core.wait_time())
            elif len(self._flight) < self.stages.groups and not queue.closed:
                queue.wait(core.wait_time())  # an arrival may make a batch; a job out wakes it
            else:
                self._out.wait()

    def _submit(self, *, closing: bool) -> bool:
        """Send batches into the stages while fewer than ``groups`` are in flight."""
        sent = False
        while len(self._flight) < self.stages.groups:
            batch = self.core.next_batch(closing=closing)
            if batch is None:
                break
            try:
                inputs = self.core.inputs(batch)
            except Exception as exc:
                self.core.fail(batch, stacking_error(exc))
                continue
            context = batch.layout.backend.inference_context
            self._flight.append((batch, self.stages.submit((inputs,), context, self._wake)))
            sent = True
        return sent

    def _complete(self, *, wait: bool) -> bool:
        """Deliver the batches out of the stages, in order (with ``wait``: all in flight)."""
        done = False
        while self._flight and (wait or self._flight[0][1].done):
            batch, job = self._flight.popleft()
            self._running = batch
            try:
                output = job.result()
            except BaseException as exc:
                if is_fatal(exc):
                    raise
                self.core.fail(batch, model_error(exc))
            else:
                deliver(self.core, batch, output, max(job.seconds, default=0.0))
            self._running = None
            done = True
        return done

    def _wake(self) -> None:
        self._out.set()
        self.queue.wake()
