"""`Pipeline`: a model split into stages that run at once, each on a thread of its own.

A batcher given a `Pipeline` keeps several batches (feedforward) or groups of
rows (autoregressive) in flight, so that while the last stage computes one,
the first computes the next. `Stages` is the machinery: one thread per stage,
each with an inbox; a `Job` goes through them in order, and the engine thread
learns when it is out. The engine stays the only thread that touches its
batches and rows: the stage threads see only the arguments of their calls.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, final

from .._exceptions import ConfigurationError
from .model import ModelRunner
from .values import as_int, describe_value

__all__ = ["MAX_GROUPS", "Job", "Pipeline", "Stages"]

MAX_GROUPS = 64
"""The most batches or groups of rows a pipeline keeps in flight."""


@final
class Pipeline:
    """A model made of ``stages`` called one after the other, each on its own thread.

    The first stage gets what the model would get (``tokens, mask`` for an
    autoregressive model, the stacked batch for a feedforward one); each next
    stage gets what the previous one returned; the last returns what the model
    would. Stages may be sync or async callables. Given as the model of a
    batcher, ``groups`` batches (feedforward) or disjoint groups of rows
    (autoregressive) are in flight at once: while stage 2 computes group A,
    stage 1 computes group B. By default (None) one group per stage for the
    autoregressive batcher, whose ``max_batch_size`` rows the groups share, and
    one batch more than stages for the feedforward batcher, whose batches keep
    their size (the spare batch waits at stage 1, so no stage waits for the
    engine). A stage that releases the GIL (a tensor kernel, I/O) overlaps the
    others.

    Calling a pipeline runs its stages in order on the calling thread (sync
    stages only), which is what a batcher computes with it.
    """

    def __init__(self, *stages: Any, groups: int | None = None) -> None:
        if not stages:
            raise ConfigurationError("a Pipeline needs at least one stage")
        for i, stage in enumerate(stages):
            if not callable(stage):
                raise ConfigurationError(
                    f"stage {i} of the Pipeline must be callable, got {type(stage).__name__}"
                )
        count = None if groups is None else as_int(groups)
        if groups is not None and (count is None or not 1 <= count <= MAX_GROUPS):
            raise ConfigurationError(
                f"groups must be an int in 1 … {MAX_GROUPS}, got {describe_value(groups)}"
            )
        self.stages: tuple[Any, ...] = stages
        self.groups = count

    def __call__(self, *args: Any) -> Any:
        value = self.stages[0](*args)
        for stage in self.stages[1:]:
            value = stage(value)
        return value

    def __repr__(self) -> str:
        return f"Pipeline({len(self.stages)} stages, groups={self.groups})"

    def groups_or(self, default: int) -> int:
        """``groups``, or ``default`` where the user left it to the batcher."""
        return default if self.groups is None else self.groups


Context = Callable[[], AbstractContextManager[Any]]


class Job:
    """One call through every stage: the first stage's arguments, then each result."""

    __slots__ = ("_done", "_wake", "args", "context", "error", "seconds")

    def __init__(self, args: tuple[Any, ...], context: Context, wake: Callable[[], None]) -> None:
        self.args = args
        self.context = context
        self.error: BaseException | None = None
        self.seconds: list[float] = []  # each stage's time on this job
        self._done = threading.Event()
        self._wake = wake

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self) -> None:
        self._done.wait()

    def result(self) -> Any:
        """The last stage's result (waits for it), or the first stage's exception."""
        self._done.wait()
        if self.error is not None:
            raise self.error
        return self.args[0]

    def finish(self) -> None:
        self._done.set()
        self._wake()


class _Stage:
    """One stage's thread: takes jobs from its inbox in order, hands each to ``forward``."""

    def __init__(self, function: Any, name: str, forward: Callable[[Job | None], None]) -> None:
        self.runner = ModelRunner(function)
        self.busy = 0.0  # seconds spent in this stage's calls
        self._forward = forward
        # a C queue: a hand-off costs one lock, where a Condition builds a waiter lock per wait
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def put(self, job: Job | None) -> None:
        """Queue ``job``; None ends the thread once what is before it is done."""
        self._inbox.put(job)

    def _take(self) -> Job | None:
        return self._inbox.get()

    def _main(self) -> None:
        try:
            while (job := self._take()) is not None:
                if job.error is None:
                    self._run(job)
                self._forward(job)
        finally:
            self.runner.close()
            self._forward(None)

    def _run(self, job: Job) -> None:
        start = time.perf_counter()
        try:
            with job.context():
                job.args = (self.runner(*job.args),)
        except BaseException as exc:  # the job carries it to the engine, which decides
            job.error = exc
        finally:
            seconds = time.perf_counter() - start
            self.busy += seconds
            job.seconds.append(seconds)


class Stages:
    """The running form of a `Pipeline`: a thread per stage, jobs through them in order.

    It stands where a `ModelRunner` stands for a single model: the engine
    thread reads ``busy_since`` (health, a stuck close) and calls ``close``.
    """

    def __init__(self, pipeline: Pipeline, name: str, groups: int) -> None:
        self.groups = groups  # jobs the engine keeps in flight
        self._stages: list[_Stage] = []
        count = len(pipeline.stages)
        for i in reversed(range(count)):  # built from the last: each forwards to the next
            forward = self._stages[0].put if self._stages else _finish
            stage = _Stage(pipeline.stages[i], f"{name}-stage{i + 1}", forward)
            self._stages.insert(0, stage)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._started = True
            for stage in self._stages:
                stage.start()

    def submit(self, args: tuple[Any, ...], context: Context, wake: Callable[[], None]) -> Job:
        """Send ``args`` through the stages; ``wake()`` is called when the job is out."""
        job = Job(args, context, wake)
        self._stages[0].put(job)
        return job

    def caller(self, context: Context) -> Callable[..., Any]:
        """A plain function that runs its arguments through the stages and waits."""

        def call(*args: Any) -> Any:
            return self.submit(args, context, _nothing).result()

        return call

    def on_own_thread(self) -> bool:
        """Whether the caller runs on one of the stage threads (inside a stage)."""
        current = threading.current_thread()
        return any(stage.thread is current for stage in self._stages)

    @property
    def busy_since(self) -> float | None:
        """When the longest-running stage call now running began (None: none runs)."""
        times = [s.runner.busy_since for s in self._stages if s.runner.busy_since is not None]
        return min(times, default=None)

    def busy(self) -> tuple[float, ...]:
        """Seconds each stage has spent in its calls so far."""
        return tuple(stage.busy for stage in self._stages)

    def close(self) -> None:
        """End the threads once the jobs queued are through, and wait for them to end
        (called from a stage's own thread, only the others are waited for)."""
        if self._started:
            self._stages[0].put(None)
            current = threading.current_thread()
            for stage in self._stages:
                if stage.thread is not current:
                    stage.thread.join()


def _finish(job: Job | None) -> None:
    if job is not None:
        job.finish()


def _nothing() -> None:
    pass
