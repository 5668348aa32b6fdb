"""Workload 3, overhead: no-op models, so that only the batching machinery costs.

Autoregressive: the cost per delivered token with ``rows`` streams, against
asyncio alone waking ``rows`` consumer tasks once per step (the floor); the
best of up to ``repeat`` runs (`methods.per_token`). Feedforward: the cost
per item with an identity model and ``callers`` concurrent callers in batches
of ``batch_size``, against a bare hand-written asyncio batcher (the floor)
and the peer libraries ``batched`` and ``async-batcher``, measured by
`methods.per_item` (``repeat`` interleaved rounds, each method in fresh
processes, each method's best); the CPU time per item and the median of the
rounds' ratios go to the notes.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from ..methods import per_item
from ..methods.per_token import autoregressive_per_token, floor_per_token
from ..output.progress import Progress
from ..results import Column, Section
from ..settings import BenchSettings, OverheadSize
from ..timing.runs import best_of, run_async

__all__ = ["measure"]

COLUMNS = [
    Column("per", "per", "{}"),
    Column("us", "µs", "{:,.2f}"),
    Column("x_floor", "x floor", "{:.2f}x"),
    Column("above_floor_us", "+µs", "{:,.2f}"),
]
PEERS_HINT = "pip install 'hibachi-batch[peers]'"
TOKEN_FLOOR = "asyncio floor (wake tasks)"
ITEM_FLOOR = "asyncio floor (bare batcher)"
HIBACHI_ITEM = "hibachi FeedforwardBatcher"


def measure(settings: BenchSettings, progress: Progress) -> Section:
    size = settings.overhead
    progress.begin("overhead", 3)
    section = Section("overhead", "Overhead: no-op models", COLUMNS, settings=vars(size).copy())
    _per_token(section, progress, settings)
    progress.doing("per item: floor, hibachi, batched, async-batcher")
    try:
        _per_item(section, size)
    except Exception as exc:
        section.fail(HIBACHI_ITEM, exc)
    section.notes[:0] = [
        f"per token: {size.rows} streams of {size.steps} tokens; the floor is asyncio waking "
        f"{size.rows} waiting tasks once per step.",
        f"per item: {size.callers:,} concurrent callers, batches of {size.batch_size}; the floor "
        "is a bare asyncio batcher (queue, stack, call, slice); every method runs in fresh "
        "processes; each peer keeps the better of its wait settings "
        f"({', '.join(f'{w * 1e3:g} ms' for w in per_item.PEER_WAITS)}); "
        "hibachi always runs the model off the event loop, as async-batcher does with its "
        "model in its executor.",
        "+µs: what the method adds above its floor.",
    ]
    return section


def _add(
    section: Section, name: str, per: str, seconds: float, floor: float, **extra: float
) -> None:
    section.add(
        name,
        per=per,
        us=seconds * 1e6,
        x_floor=seconds / floor,
        above_floor_us=(seconds - floor) * 1e6,
        **extra,
    )


def _per_token(section: Section, progress: Progress, settings: BenchSettings) -> None:
    size = settings.overhead

    def best(run: Callable[[OverheadSize], Coroutine[Any, Any, float]]) -> float:
        return best_of(lambda: run_async(run(size)), _faster, size.repeat, settings.repeat_within)

    progress.doing("per token: asyncio floor")
    floor = best(floor_per_token)
    _add(section, TOKEN_FLOOR, "token", floor, floor)
    progress.doing("per token: hibachi")
    name = "hibachi AutoregressiveBatcher"
    try:
        _add(section, name, "token", best(autoregressive_per_token), floor)
    except Exception as exc:
        section.fail(name, exc)


def _per_item(section: Section, size: OverheadSize) -> None:
    result = per_item.measure(size.callers, size.batch_size, size.repeat)
    cpu = result.cpu
    assert cpu is not None
    methods = [
        (ITEM_FLOOR, "", result.floor, cpu.floor),
        (HIBACHI_ITEM, "", result.hibachi, cpu.hibachi),
        ("batched", "batched", result.batched, cpu.batched),
        ("async-batcher", "async-batcher", result.async_batcher, cpu.async_batcher),
        (
            "async-batcher, model in executor",
            "async-batcher",
            result.async_batcher_off_loop,
            cpu.async_batcher_off_loop,
        ),
    ]
    for name, library, wall, busy in methods:
        if wall is None or busy is None:
            section.skip(name, f"{library} is not installed: {PEERS_HINT}")
        else:
            _add(
                section,
                name,
                "item",
                wall,
                result.floor,
                cpu_us=busy * 1e6,
                cpu_x_floor=busy / cpu.floor,
            )
    section.notes += _per_item_notes(result)


def _per_item_notes(result: per_item.Overhead) -> list[str]:
    """CPU time per item, and hibachi over the floor round by round (steadier than two bests)."""
    cpu = result.cpu
    assert cpu is not None
    notes = [
        f"per item, CPU time of every thread: floor {cpu.floor * 1e6:.2f} µs, hibachi "
        f"{cpu.hibachi * 1e6:.2f} µs ({cpu.ratio_to_floor:.2f}x)."
    ]
    for clock, figures in (("wall", result), ("CPU", cpu)):
        if figures.round_ratios:
            rounds = " ".join(f"{r:.2f}" for r in figures.round_ratios)
            notes.append(
                f"per item, hibachi / floor in each round ({clock}): median "
                f"{figures.median_round_ratio:.2f}x ({rounds})."
            )
    return notes


def _faster(seconds: float) -> float:
    return -seconds
