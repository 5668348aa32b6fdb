"""What dynamic batching costs per item, next to the floor asyncio sets and the peers.

Every method serves the same workload: ``callers`` concurrent caller tasks,
each awaiting one result for a small NumPy array, through an identity model
called on batches of at most ``batch_size``. Each caller is a coroutine that
awaits the method's call, so every method pays for the same tasks:

- the floor: a bare hand-written asyncio batcher (queue, stack, call, slice);
- `hibachi.FeedforwardBatcher`, eager (``max_wait=0``);
- ``batched.aio.dynamically`` (mixedbread-ai) and ``async_batcher.AsyncBatcher``,
  each with the wait setting that suits it best (they are measured with each
  of ``PEER_WAITS`` and keep their best). ``async_batcher`` runs an ``async``
  model on the caller's event loop; ``async_batcher_off_loop`` gives it a
  plain function, which it runs in its executor: off the loop, as hibachi
  always runs a model.

`measure` interleaves the methods over ``repeat`` rounds and keeps each one's
best, since other work on the machine only ever adds time. In each round every
method runs in a fresh interpreter of its own (a warm-up, then ``runs`` timed
runs): what one library leaves on the heap would otherwise make every later
garbage collection, a large part of the cost per item, slower for the next
method measured.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import statistics
import subprocess
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "PEER_WAITS",
    "Cost",
    "Overhead",
    "async_batcher_off_loop_per_item",
    "async_batcher_per_item",
    "batched_per_item",
    "floor_per_item",
    "hibachi_per_item",
    "measure",
]

PEER_WAITS = (0.0, 0.001)
"""Wait windows (seconds) the peers are tried with; each keeps its best."""

Call = Callable[[Any], Awaitable[Any]]


class Cost(NamedTuple):
    """Seconds per item: on the clock, and of CPU time in every thread of the process.

    CPU time is what the batching machinery burns; on a machine shared with
    other work it is the steadier of the two, while the wall clock also counts
    the waits for a free core (which hit a two-thread design harder).
    """

    wall: float
    cpu: float


def identity(batch: Any) -> Any:
    """The model: costs nothing, so only the batching machinery is measured."""
    return batch


def _identity_list(items: list[Any]) -> list[Any]:
    """The identity model for peers that batch Python lists: stack, call, slice."""
    return list(identity(np.stack(items)))


async def _per_item(call: Call, callers: int) -> Cost:
    """The cost per item for ``callers`` concurrent caller tasks of ``call``."""
    items = [np.full(4, i, dtype=np.float32) for i in range(callers)]

    async def caller(x: Any) -> Any:
        return await call(x)

    gc.collect()
    start, cpu = time.perf_counter(), time.process_time()
    results = await asyncio.gather(*(caller(x) for x in items))
    cost = Cost(time.perf_counter() - start, time.process_time() - cpu)
    if not all(result[0] == x[0] for result, x in zip(results, items, strict=True)):
        raise AssertionError("a caller got another caller's result")
    return Cost(cost.wall / callers, cost.cpu / callers)


async def floor_per_item(callers: int, batch_size: int) -> Cost:
    """The cost per item through the least an asyncio batcher does: queue, stack, call, slice."""
    loop = asyncio.get_running_loop()
    queue: deque[tuple[Any, asyncio.Future[Any]]] = deque()
    wake = asyncio.Event()

    async def worker() -> None:
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(batch_size, len(queue)))]
                out = identity(np.stack([x for x, _ in batch]))
                for (_, future), y in zip(batch, out, strict=True):
                    if not future.done():
                        future.set_result(y)
                await asyncio.sleep(0)

    async def call(x: Any) -> Any:
        future = loop.create_future()
        queue.append((x, future))
        wake.set()
        return await future

    task = asyncio.create_task(worker())
    try:
        return await _per_item(call, callers)
    finally:
        task.cancel()


async def hibachi_per_item(callers: int, batch_size: int) -> Cost:
    """The cost per item through `hibachi.FeedforwardBatcher` (eager; room for every caller)."""
    import hibachi

    batcher = hibachi.FeedforwardBatcher(
        identity, max_batch_size=batch_size, max_queue_size=max(callers, 1)
    )
    async with batcher:
        return await _per_item(batcher.run, callers)


async def batched_per_item(callers: int, batch_size: int, wait: float) -> Cost:
    """The cost per item through ``batched.aio.dynamically`` polling every ``wait`` seconds."""
    from batched import aio  # type: ignore[import-untyped]

    call = aio.dynamically(_identity_list, batch_size=batch_size, timeout_ms=wait * 1000)
    return await _per_item(call, callers)


async def async_batcher_per_item(callers: int, batch_size: int, wait: float) -> Cost:
    """The cost per item through ``async_batcher.AsyncBatcher`` with ``max_queue_time=wait``."""
    from async_batcher.batcher import AsyncBatcher  # type: ignore[import-untyped]

    class Identity(AsyncBatcher):  # type: ignore[misc]
        async def process_batch(self, batch: list[Any]) -> list[Any]:
            return _identity_list(batch)

    batcher = Identity(max_batch_size=batch_size, max_queue_time=wait)
    try:
        return await _per_item(batcher.process, callers)
    finally:
        await batcher.stop(force=True)


async def async_batcher_off_loop_per_item(callers: int, batch_size: int, wait: float) -> Cost:
    """The cost per item through ``AsyncBatcher`` with a plain model, run in its executor."""
    from async_batcher.batcher import AsyncBatcher

    class Identity(AsyncBatcher):  # type: ignore[misc]
        def process_batch(self, batch: list[Any]) -> list[Any]:
            return _identity_list(batch)

    batcher = Identity(max_batch_size=batch_size, max_queue_time=wait)
    try:
        return await _per_item(batcher.process, callers)
    finally:
        await batcher.stop(force=True)


@dataclass(frozen=True)
class Overhead:
    """Each method's best seconds per item (None: not installed), and the targets' verdicts.

    The fields are wall-clock seconds; ``cpu`` holds the same figures in CPU seconds.
    """

    floor: float
    hibachi: float
    batched: float | None
    async_batcher: float | None
    cpu: Overhead | None = None
    async_batcher_off_loop: float | None = None
    round_ratios: tuple[float, ...] = ()
    """hibachi over the floor in each round, both measured minutes apart at most:
    steadier than the ratio of the two best figures on a busy machine."""

    @property
    def best_peer(self) -> float | None:
        peers = [s for s in (self.batched, self.async_batcher) if s is not None]
        return min(peers) if peers else None

    @property
    def median_round_ratio(self) -> float | None:
        """The median of ``round_ratios`` (None without rounds)."""
        return statistics.median(self.round_ratios) if self.round_ratios else None

    @property
    def ratio_to_floor(self) -> float:
        """hibachi's cost over the floor's (target: at most 1.3)."""
        return self.hibachi / self.floor

    @property
    def added_vs_best_peer(self) -> float | None:
        """How many times more the better peer adds above the floor than hibachi (target: 3)."""
        peer = self.best_peer
        if peer is None:
            return None
        return (peer - self.floor) / max(self.hibachi - self.floor, 1e-9)


def measure(
    callers: int = 20_000, batch_size: int = 64, repeat: int = 3, runs: int = 3
) -> Overhead:
    """``repeat`` rounds over every method, each in a fresh process doing ``runs`` runs.

    Returns each method's best cost per item (wall and CPU taken separately).
    """
    peers = ("batched", "async_batcher", "async_batcher_off_loop")
    methods = [("floor", 0.0), ("hibachi", 0.0)]
    methods += [(name, wait) for name in peers for wait in PEER_WAITS]
    best: dict[str, Cost | None] = dict.fromkeys(name for name, _ in methods)
    methods = [(name, wait) for name, wait in methods if _installed(name)]
    ratios: list[tuple[float, float]] = []  # (wall, cpu) of hibachi over the floor, per round
    for _ in range(repeat):
        this_round: dict[str, Cost | None] = {}
        for name, wait in methods:
            cost = _run_isolated(name, callers, batch_size, wait, runs)
            best[name] = _better(best[name], cost)
            this_round[name] = cost
        ratios.append(_round_ratio(this_round["floor"], this_round["hibachi"]))
    floor, hibachi = best["floor"], best["hibachi"]
    assert floor is not None and hibachi is not None
    batched, peer, off = best["batched"], best["async_batcher"], best["async_batcher_off_loop"]
    cpu = Overhead(floor.cpu, hibachi.cpu, batched and batched.cpu, peer and peer.cpu)
    cpu = dataclasses.replace(
        cpu, async_batcher_off_loop=off and off.cpu, round_ratios=tuple(c for _, c in ratios)
    )
    wall = Overhead(floor.wall, hibachi.wall, batched and batched.wall, peer and peer.wall, cpu)
    return dataclasses.replace(
        wall, async_batcher_off_loop=off and off.wall, round_ratios=tuple(w for w, _ in ratios)
    )


def _round_ratio(floor: Cost | None, hibachi: Cost | None) -> tuple[float, float]:
    assert floor is not None and hibachi is not None
    return hibachi.wall / floor.wall, hibachi.cpu / floor.cpu


_MODULES = {
    "batched": "batched.aio",
    "async_batcher": "async_batcher.batcher",
    "async_batcher_off_loop": "async_batcher.batcher",
}


def _installed(name: str) -> bool:
    """Whether method ``name`` can run: its library imports here (as the child's will)."""
    module = _MODULES.get(name)
    if module is None:
        return True
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def _better(a: Cost | None, b: Cost | None) -> Cost | None:
    if a is None or b is None:
        return a or b
    return Cost(min(a.wall, b.wall), min(a.cpu, b.cpu))


def _run_here(name: str, callers: int, batch_size: int, wait: float) -> Cost | None:
    """The cost per item of method ``name`` in this process; None if not installed."""
    methods: dict[str, Callable[[], Awaitable[Cost]]] = {
        "floor": lambda: floor_per_item(callers, batch_size),
        "hibachi": lambda: hibachi_per_item(callers, batch_size),
        "batched": lambda: batched_per_item(callers, batch_size, wait),
        "async_batcher": lambda: async_batcher_per_item(callers, batch_size, wait),
        "async_batcher_off_loop": lambda: async_batcher_off_loop_per_item(
            callers, batch_size, wait
        ),
    }
    try:
        return asyncio.run(methods[name]())  # type: ignore[arg-type]
    except ImportError:
        return None


def _run_isolated(name: str, callers: int, batch_size: int, wait: float, runs: int) -> Cost | None:
    """The best of ``runs`` runs of `_run_here`, after a warm-up, in a fresh interpreter."""
    args = [name, str(callers), str(batch_size), repr(wait), str(runs)]
    command = [sys.executable, "-m", "hibachi._bench.methods.per_item", *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    return None if out[-1] == "None" else Cost(float(out[-2]), float(out[-1]))


def _best_here(name: str, callers: int, batch_size: int, wait: float, runs: int) -> Cost | None:
    _run_here(name, callers, batch_size, wait)  # warm-up: imports, arenas, threads
    best: Cost | None = None
    for _ in range(runs):
        best = _better(best, _run_here(name, callers, batch_size, wait))
    return best


if __name__ == "__main__":  # one process of `measure`: NAME CALLERS BATCH_SIZE WAIT RUNS
    name, callers, batch_size, wait, runs = sys.argv[1:6]
    cost = _best_here(name, int(callers), int(batch_size), float(wait), int(runs))
    print("None" if cost is None else f"{cost.wall!r} {cost.cpu!r}")
