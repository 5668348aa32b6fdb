"""Continuous batching through a `Pipeline`: groups of rows in flight, one step each.

The rows are split into disjoint groups, each a `Scheduler` of its own over
one shared queue. A group's next step starts as soon as its previous tokens
are out, so while the last stage computes group A's step, the first computes
group B's. ``max_batch_size`` bounds the rows of all groups together (it is
the memory a batcher is given); each group holds an equal share of it.

The engine thread is still the only one that touches the schedulers: stage
threads see only a step's arguments, which stay untouched (the group does
not move) until the step is out.

An `IncrementalModel` whose ``pipeline()`` gives stages runs the same way,
each group over a `SlotLayout` of its own range of slots (`slot_ranges`):
a group's rows never share a slot with another group's, so the model's
``release`` of one group's slot (on this thread) cannot touch the state a
stage is using for another group's step.
"""

from __future__ import annotations

import threading

from .._core.delivery import Channels
from .._core.engine_thread import EngineThread
from .._core.model import ModelRunner, engine_failure
from .._core.pipeline import Job, Stages
from .._exceptions import BatcherClosed, HibachiError
from .courier import Courier, Outlet
from .isolation import attempt, isolate
from .scheduler import Counters, Scheduler, copy_error

__all__ = ["PipelinedEngine", "group_sizes", "merged_counters", "slot_ranges"]


def group_sizes(max_batch_size: int, groups: int) -> list[int]:
    """``max_batch_size`` rows shared as evenly as can be among at most ``groups`` groups."""
    count = min(groups, max_batch_size)
    return [max_batch_size // count + (i < max_batch_size % count) for i in range(count)]


def slot_ranges(max_batch_size: int, groups: int) -> list[range]:
    """The slots each group of an `IncrementalModel`'s pipeline owns: contiguous, in order."""
    ranges, start = [], 0
    for size in group_sizes(max_batch_size, groups):
        ranges.append(range(start, start + size))
        start += size
    return ranges


def merged_counters(schedulers: list[Scheduler]) -> Counters:
    """The counters of every group, added up."""
    total = Counters()
    for scheduler in schedulers:
        for name, value in vars(scheduler.counters).items():
            setattr(total, name, getattr(total, name) + value)
    return total


class _Group:
    __slots__ = ("job", "scheduler", "size")

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.job: Job | None = None
        self.size = 0  # rows in the step in flight


class PipelinedEngine(EngineThread):
    """Steps each group of ``schedulers`` through ``stages``, every group in flight at once."""

    def __init__(
        self,
        schedulers: list[Scheduler],
        stages: Stages,
        channels: Channels,
        name: str,
        *,
        release: ModelRunner | None = None,
        courier: Courier | None = None,
    ) -> None:
        """``release``: the runner of an `IncrementalModel`'s release, closed with the engine;
        ``courier``: delivers the tokens on a thread of its own (``delivery_thread=True``)."""
        super().__init__(schedulers[0].queue, stages, name)
        self.stages = stages
        self._release = release
        self.outlet = Outlet(channels, courier)
        self.groups = [_Group(scheduler) for scheduler in schedulers]
        self._out = threading.Event()  # a job came out of the last stage

    def on_own_thread(self) -> bool:
        return super().on_own_thread() or self.stages.on_own_thread()

    def _crash(self, exc: BaseException) -> None:
        error = HibachiError(engine_failure(exc))
        error.__cause__ = exc
        for group in self.groups:
            group.scheduler.abort(error)

    def _flush(self) -> None:
        self.outlet.close()

    def _finish(self) -> None:
        if self._release is not None:
            self._release.close()
        super()._finish()

    def _abandon(self, error: BaseException) -> None:
        rows = [request for group in self.groups for request in list(group.scheduler.rows)]
        for request in rows + self.queue.snapshot():
            request.abandon(copy_error(error))

    def _loop(self) -> None:
        self.stages.start()
        self.outlet.start()
        while True:
            if self._abort:
                self._drain_jobs()
                for group in self.groups:
                    group.scheduler.abort(
                        BatcherClosed("the batcher was closed before the request finished")
                    )
                return
            self._out.clear()
            moved = self._complete_done()
            moved = self._start_idle() or moved
            self.outlet.deliver()
            if moved:
                continue
            if not self._in_flight() and self.queue.closed and not len(self.queue):
                return
            self._sleep()

    def _in_flight(self) -> bool:
        return any(group.job is not None for group in self.groups)

    def _sleep(self) -> None:
        """Until a job is out, or (with a group idle) a request arrives or the batcher closes."""
        idle = any(group.job is None for group in self.groups)
        if not self._in_flight() or (idle and not self.queue.closed and not len(self.queue)):
            self.queue.wait()
        else:
            self._out.wait()

    def _wake(self) -> None:
        self._out.set()
        self.queue.wake()

    def _complete_done(self) -> bool:
        done = [group for group in self.groups if group.job is not None and group.job.done]
        for group in done:
            self._complete(group)
        return bool(done)

    def _drain_jobs(self) -> None:
        """Wait for the jobs in flight (closing with ``cancel``): their outputs go unused."""
        for group in self.groups:
            if group.job is not None:
                group.job.wait()
                group.job = None

    def _complete(self, group: _Group) -> None:
        """Apply the step that came out for ``group``; a failed one is retried per `isolate`."""
        job, group.job = group.job, None
        assert job is not None
        scheduler = group.scheduler
        column, failed = attempt(scheduler, lambda: job.result(), (), group.size)
        if failed is None:
            scheduler.apply(column)
        else:
            call = self.stages.caller(scheduler.backend.inference_context)
            isolate(scheduler, call, group.size, failed)

    def _start_idle(self) -> bool:
        """Start the next step of every group not in flight that has rows (after admitting)."""
        started = False
        for group in self.groups:
            if group.job is None and self._schedule(group.scheduler):
                scheduler = group.scheduler
                inputs = scheduler.model_inputs()  # fixes the step's rows (a SlotLayout's subset)
                if inputs is None:  # the model's memory ended every row of the group
                    started = True
                    continue
                group.size = scheduler.layout.step_size(len(scheduler.rows))
                context = scheduler.backend.inference_context
                group.job = self.stages.submit(inputs, context, self._wake)
                started = True
        return started

    def _schedule(self, scheduler: Scheduler) -> bool:
        # A request's deadline is watched by the first group only (it took the
        # request at ``run``), whichever group its row is in: every group looks
        # for departed rows before each step, which costs a pass over its rows.
        scheduler.note_departure()
        return scheduler.schedule(admit=self._share(scheduler))

    def _share(self, scheduler: Scheduler) -> int:
        """How many waiting requests ``scheduler`` may admit: the groups' rows stay even,
        so that a light load is spread over every group (each stage then has work)."""
        total = sum(len(group.scheduler.rows) for group in self.groups) + len(self.queue)
        return max(0, -(-total // len(self.groups)) - len(scheduler.rows))
