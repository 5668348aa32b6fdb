"""A soak with faults: many callers, on event loops and plain threads, against one batcher
whose model raises on bad inputs and now and then on good batches.

Test support: ``tests/core/test_soak.py`` runs it small and asserts its zeros;
``benchmarks/soak.py`` runs it at 100,000 requests per batcher and prints the table.

Each request is drawn from a seeded `Spec`: its arrival delay, size, whether it
is bad (its input is marked: the model raises on it), whether its caller
cancels it and when, and its deadline. Every outcome is checked against what
the request gets alone (`soak_models`) and classified (`Tally`):

- *innocent*: a good request that failed, and not by a transient fault, its own
  deadline or its own cancellation: a bad neighbour cost it its answer. Must be 0.
- *cross-talk*: a token or result that is not the request's own. Must be 0.
- *hangs*: requests not ended within ``bound`` seconds. Must be 0.
"""

from __future__ import annotations

import asyncio
import gc
import os
import random
import threading
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hibachi import (
    AutoregressiveBatcher,
    FeedforwardBatcher,
    HibachiError,
    ModelError,
    QueueFull,
    Timeout,
)
from support import soak_models as models

__all__ = ["KINDS", "Settings", "Spec", "Tally", "soak"]

KINDS = ("stateless", "incremental", "feedforward")


@dataclass(frozen=True)
class Settings:
    """How hard to soak: how many requests, from how many callers, with what faults."""

    requests: int = 100_000
    loops: int = 2  # event loops, each on its own thread
    tasks: int = 48  # concurrent asyncio tasks per loop
    threads: int = 16  # plain threads calling
    bad: float = 0.05
    cancelled: float = 0.10
    with_deadline: float = 0.10
    transient_every: int = 500  # about one model call in this many raises
    max_batch_size: int = 32
    bound: float = 60.0  # seconds a request may take before it counts as a hang
    seed: int = 0


@dataclass(frozen=True)
class Spec:
    tag: int
    length: int
    budget: int
    bad: bool
    cancel_after: int | None  # tokens read before the caller cancels (None: never)
    timeout: float | None
    delay: float  # seconds before the request is made


def draw(settings: Settings) -> list[Spec]:
    rng = random.Random(settings.seed)

    def one(tag: int) -> Spec:
        budget = rng.randint(1, 8)
        cancelled = rng.random() < settings.cancelled
        deadline = rng.random() < settings.with_deadline
        return Spec(
            tag=tag,
            length=rng.randint(1, 8),
            budget=budget,
            bad=rng.random() < settings.bad,
            cancel_after=rng.randint(0, budget - 1) if cancelled else None,
            timeout=rng.uniform(0.001, 0.2) if deadline else None,
            delay=rng.choice((0.0, 0.0, 0.0, rng.uniform(0, 0.002))),
        )

    return [one(tag) for tag in range(1, settings.requests + 1)]


@dataclass
class Tally:
    """What became of the requests of one soak."""

    kind: str
    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    # seconds, of the requests answered; allocated up front, so measuring adds no memory
    latencies: np.ndarray[Any, np.dtype[np.float64]] = field(
        default_factory=lambda: np.zeros(0, dtype=np.float64)
    )
    answered: int = 0
    memory: dict[str, tuple[int, int]] = field(default_factory=dict)  # start, end
    transient_faults: int = 0
    seconds: float = 0.0

    def count(self, outcome: str, latency: float) -> None:
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        if outcome == "ok":
            self.latencies[self.answered] = latency
            self.answered += 1

    def __getitem__(self, outcome: str) -> int:
        return self.outcomes.get(outcome, 0)

    @property
    def hangs(self) -> int:
        """Requests not ended within the bound, or never."""
        return self.requests - self.ended + self["hang"]

    @property
    def ended(self) -> int:
        return sum(self.outcomes.values())

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile latency (seconds) of the requests that got their answer."""
        answered = self.latencies[: self.answered]
        return float(np.percentile(answered, q)) if answered.size else 0.0


def classify(spec: Spec, got: list[Any], want: list[Any], error: BaseException | None) -> str:
    """The outcome of one request (see the module's docstring)."""
    if got != want[: len(got)]:
        return "crosstalk"
    if error is None:
        if spec.cancel_after is not None and len(got) < len(want):
            return "cancelled"
        if got != want:
            return "crosstalk"
        return "bad_accepted" if spec.bad else "ok"
    if isinstance(error, Timeout) and spec.timeout is not None:
        return "timeout"
    if isinstance(error, ModelError):
        if spec.bad:
            return "bad_failed"
        if isinstance(error.__cause__, models.TransientFault):
            return "transient"
    if isinstance(error, QueueFull):
        return "refused"
    return "innocent"


# -- one request, per kind and per caller side -----------------------------------------------


def _ar_args(spec: Spec) -> tuple[Any, dict[str, Any]]:
    return models.prompt(spec.tag, spec.length, spec.bad), {
        "max_new_tokens": spec.budget,
        "timeout": spec.timeout,
    }


async def _ar_async(batcher: Any, spec: Spec) -> tuple[list[Any], BaseException | None]:
    got: list[Any] = []
    prompt, options = _ar_args(spec)
    stream = batcher.run(prompt, **options)
    try:
        if spec.cancel_after == 0:
            stream.cancel()
        async for token in stream:
            got.append(int(token))
            if len(got) == spec.cancel_after:
                stream.cancel()
    except HibachiError as error:
        return got, error
    return got, None


def _ar_thread(batcher: Any, spec: Spec) -> tuple[list[Any], BaseException | None]:
    got: list[Any] = []
    prompt, options = _ar_args(spec)
    stream = batcher.run(prompt, **options)
    try:
        if spec.cancel_after == 0:
            stream.cancel()
        for token in stream:
            got.append(int(token))
            if len(got) == spec.cancel_after:
                stream.cancel()
    except HibachiError as error:
        return got, error
    return got, None


async def _ff_async(batcher: Any, spec: Spec) -> tuple[list[Any], BaseException | None]:
    handle = batcher.run(models.feedforward_input(spec.tag, spec.bad), timeout=spec.timeout)
    if spec.cancel_after is not None:
        await asyncio.sleep(0)
        if handle.cancel():
            return [], None
    try:
        return [float(await handle)], None
    except HibachiError as error:
        return [], error


def _ff_thread(batcher: Any, spec: Spec) -> tuple[list[Any], BaseException | None]:
    handle = batcher.run(models.feedforward_input(spec.tag, spec.bad), timeout=spec.timeout)
    if spec.cancel_after is not None and handle.cancel():
        return [], None
    try:
        return [float(handle.result())], None
    except HibachiError as error:
        return [], error


def _want(kind: str, spec: Spec) -> list[Any]:
    if kind == "feedforward":
        return [models.feedforward_expected(spec.tag)]
    return models.expected(spec.tag, spec.length, spec.budget)


# -- the callers -----------------------------------------------------------------------------


class _Work:
    """The specs still to run, handed out to callers of every kind, and what became of them."""

    def __init__(self, kind: str, specs: list[Spec], tally: Tally, bound: float) -> None:
        self.kind = kind
        self.bound = bound
        self._specs = list(reversed(specs))
        self._lock = threading.Lock()
        self.tally = tally

    def next(self) -> Spec | None:
        with self._lock:
            return self._specs.pop() if self._specs else None

    def record(self, spec: Spec, got: list[Any], error: BaseException | None, start: float) -> None:
        latency = time.monotonic() - start
        outcome = classify(spec, got, _want(self.kind, spec), error)
        if latency > self.bound:
            outcome = "hang"
        with self._lock:
            self.tally.count(outcome, latency)

    def record_hang(self) -> None:
        with self._lock:
            self.tally.count("hang", self.bound)


async def _task(work: _Work, batcher: Any, call: Callable[..., Any]) -> None:
    while (spec := work.next()) is not None:
        if spec.delay:
            await asyncio.sleep(spec.delay)
        start = time.monotonic()
        try:
            got, error = await asyncio.wait_for(call(batcher, spec), work.bound)
        except TimeoutError:
            work.record_hang()
            continue
        except HibachiError as refused:  # at run(): QueueFull, InvalidRequest
            got, error = [], refused
        work.record(spec, got, error, start)


def _loop_thread(work: _Work, batcher: Any, call: Callable[..., Any], tasks: int) -> None:
    async def main() -> None:
        await asyncio.gather(*(_task(work, batcher, call) for _ in range(tasks)))

    asyncio.run(main())


def _caller_thread(work: _Work, batcher: Any, call: Callable[..., Any]) -> None:
    while (spec := work.next()) is not None:
        if spec.delay:
            time.sleep(spec.delay)
        start = time.monotonic()
        try:
            got, error = call(batcher, spec)
        except HibachiError as refused:
            got, error = [], refused
        work.record(spec, got, error, start)


# -- one soak --------------------------------------------------------------------------------


def make_batcher(kind: str, settings: Settings, faults: models.Faults) -> Any:
    size = settings.max_batch_size
    if kind == "feedforward":
        return FeedforwardBatcher(
            models.feedforward_model(faults), max_batch_size=size, max_queue_size=None
        )
    model = (
        models.stateless_model(faults) if kind == "stateless" else models.HistoryModel(size, faults)
    )
    return AutoregressiveBatcher(
        model,
        stop_token=np.int64(models.STOP),
        pad_value=np.int64(0),
        max_batch_size=size,
        max_queue_size=None,
        max_batch_tokens=4 * size,
    )


def memory() -> tuple[int, int, int]:
    """Resident memory (bytes), the objects the garbage collector tracks, and the bytes
    `tracemalloc` traces (0 unless it is tracing), after a collection."""
    gc.collect()
    with open("/proc/self/statm") as statm:
        resident = int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    traced = tracemalloc.get_traced_memory()[0] if tracemalloc.is_tracing() else 0
    return resident, len(gc.get_objects()), traced


def soak(kind: str, settings: Settings, progress: Callable[[str], None] | None = None) -> Tally:
    """``settings.requests`` requests through a fresh batcher of ``kind``: what became of them."""
    specs = draw(settings)
    warm, rest = specs[: len(specs) // 10], specs[len(specs) // 10 :]
    faults = models.Faults(settings.transient_every, settings.seed)
    tally = Tally(kind, latencies=np.zeros(len(specs), dtype=np.float64))
    begin = time.monotonic()
    batcher = make_batcher(kind, settings, faults)
    with batcher:
        _drive(kind, batcher, warm, tally, settings)
        start_memory = memory()
        if progress:
            progress(f"{kind}: warmed up with {len(warm)} requests")
        if not tally.hangs:
            _drive(kind, batcher, rest, tally, settings)
        end_memory = memory()
        batcher.close(cancel=tally.hangs > 0)  # a hung soak must still end
    names = ("rss", "objects", "traced")
    pairs = zip(names, start_memory, end_memory, strict=True)
    tally.memory = {name: (start, end) for name, start, end in pairs}
    tally.transient_faults = faults.raised
    tally.seconds = time.monotonic() - begin
    return tally


def _drive(kind: str, batcher: Any, specs: list[Spec], tally: Tally, settings: Settings) -> None:
    tally.requests += len(specs)
    work = _Work(kind, specs, tally, settings.bound)
    on_loop = _ff_async if kind == "feedforward" else _ar_async
    on_thread = _ff_thread if kind == "feedforward" else _ar_thread
    threads = [
        threading.Thread(target=_loop_thread, args=(work, batcher, on_loop, settings.tasks))
        for _ in range(settings.loops)
    ] + [
        threading.Thread(target=_caller_thread, args=(work, batcher, on_thread))
        for _ in range(settings.threads)
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    _join(threads, tally, settings.bound)


def _join(threads: list[threading.Thread], tally: Tally, bound: float) -> None:
    """Wait for the callers while they make progress; give up after ``bound`` seconds without.

    Requests never ended then count as hangs.
    """
    while any(thread.is_alive() for thread in threads):
        ended = tally.ended
        for thread in threads:
            thread.join(bound)
            if thread.is_alive():
                break
        if tally.ended == ended and any(thread.is_alive() for thread in threads):
            return
