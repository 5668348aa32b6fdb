"""Batches chosen by cost (issue #15): the cost model, the choice, and the core with a
fake clock whose model costs ``fixed + per_cell * items * length`` seconds."""

from __future__ import annotations

import itertools
from concurrent.futures import CancelledError
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hibachi
from hibachi._feedforward.cost_model import CostModel
from hibachi._feedforward.length_picking import pick_counts
from support.feedforward import Driver, FakeClock, run_async

CPU = (0.010, 0.0003)  # a call's own price, then per padded cell: MiniLM on one CPU core
GPU = (0.010, 0.000001)  # the call dominates: pad freely


def known_cost(fixed: float, per_cell: float, per_cell_length: float = 0.0) -> CostModel:
    model = CostModel()
    model.fixed, model.per_cell, model.fitted = fixed, per_cell, True
    model.per_cell_length = per_cell_length
    return model


def costed(clock: FakeClock, fixed: float, per_cell: float) -> Any:
    """A model that takes ``fixed + per_cell * cells`` seconds of ``clock`` and doubles."""

    def model(batch: Any) -> Any:
        clock.advance(fixed + per_cell * batch.size)
        return batch * 2

    return model


def costed_driver(cost: tuple[float, float], **options: Any) -> Driver:
    driver = Driver(lambda batch: batch, pad_value=0, trim_output=True, **options)
    driver.model = costed(driver.clock, *cost)
    return driver


def teach(driver: Driver, lengths: list[int]) -> None:
    """Let the core see batches of ``lengths`` one at a time, then forget the calls."""
    for n in lengths:
        driver.submit(np.ones(n, np.int64))
        driver.drain()
    driver.calls.clear()


def shapes(driver: Driver) -> list[tuple[int, ...]]:
    return [call.shape for call in driver.calls]


# -- the cost model ------------------------------------------------------------------


def test_before_it_has_learnt_the_model_assumes_a_call_costs_some_cells() -> None:
    model = CostModel(prior_cells=64)
    assert not model.fitted
    assert model.predict(1, 64) == pytest.approx(2 * model.predict(1, 0))
    for _ in range(10):
        model.observe(4, 8, 0.5)  # always the same size: fixed and per-cell cannot be told apart
    assert not model.fitted


def test_the_fit_recovers_a_linear_cost() -> None:
    model = CostModel()
    for items, length in [(1, 10), (4, 30), (8, 5), (2, 100), (16, 20)]:
        model.observe(items, length, CPU[0] + CPU[1] * items * length)
    assert model.fitted
    assert (model.fixed, model.per_cell) == (pytest.approx(CPU[0]), pytest.approx(CPU[1]))


def test_a_few_slow_batches_do_not_teach_it_that_batches_are_slow() -> None:
    model = CostModel()
    rng = np.random.default_rng(0)
    for i in range(40):
        items, length = int(rng.integers(1, 17)), int(rng.integers(4, 120))
        seconds = CPU[0] + CPU[1] * items * length
        model.observe(items, length, seconds * (20 if i % 10 == 3 else 1))  # a pause now and then
    assert model.fixed == pytest.approx(CPU[0], rel=0.05)
    assert model.per_cell == pytest.approx(CPU[1], rel=0.05)


def test_it_follows_a_cost_that_changes() -> None:
    model = CostModel(window=16)
    for cost in (CPU, GPU):
        for items, length in itertools.islice(itertools.cycle([(1, 10), (8, 50), (4, 7)]), 16):
            model.observe(items, length, cost[0] + cost[1] * items * length)
    assert (model.fixed, model.per_cell) == (pytest.approx(GPU[0]), pytest.approx(GPU[1]))


def test_degenerate_timings_give_a_usable_model() -> None:
    model = CostModel()
    for items, length in [(1, 10), (4, 30), (8, 5), (2, 100)]:
        model.observe(items, length, 0.0)  # a clock that never moves
    assert model.predict(1, 1) > 0 and model.per_cell >= 0


# -- the choice ----------------------------------------------------------------------


def test_a_long_item_is_left_for_a_batch_of_its_own_on_a_cpu() -> None:
    take = pick_counts([10, 100], [4, 1], 0, 8, None, known_cost(*CPU))
    assert take == [4, 0]


def test_the_oldest_long_item_goes_with_the_long_ones_not_the_short_ones() -> None:
    take = pick_counts([10, 90, 100], [6, 2, 1], 2, 8, None, known_cost(*CPU))
    assert take == [0, 2, 1]


def test_when_the_call_dominates_everything_goes_together() -> None:
    take = pick_counts([10, 100], [4, 1], 0, 8, None, known_cost(*GPU))
    assert take == [4, 1]


def test_max_cells_bounds_items_times_length_and_a_longer_item_goes_alone() -> None:
    assert pick_counts([10], [8], 0, 8, 35, known_cost(*GPU)) == [3]
    assert pick_counts([10, 50], [3, 2], 1, 8, 30, known_cost(*GPU)) == [0, 1]


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[int], list[int], int, int, int | None, CostModel]:
    lengths = sorted(draw(st.sets(st.integers(0, 60), min_size=1, max_size=7)))
    counts = draw(st.lists(st.integers(1, 5), min_size=len(lengths), max_size=len(lengths)))
    anchor = draw(st.integers(0, len(lengths) - 1))
    size = draw(st.integers(1, 12))
    max_cells = draw(st.none() | st.integers(1, 400))
    fixed = draw(st.floats(0.0, 1.0))
    per_cell = draw(st.floats(1e-6, 1e-2))
    per_cell_length = draw(st.just(0.0) | st.floats(1e-8, 1e-3))  # attention, or none
    return (
        lengths,
        counts,
        anchor,
        size,
        max_cells,
        known_cost(fixed + 1e-9, per_cell, per_cell_length),
    )


def brute_force_rate(
    lengths: list[int], counts: list[int], anchor: int, size: int, max_cells: int | None,
    cost: CostModel,
) -> float:  # fmt: skip
    """The best work rate over every run of the sorted queue that holds the anchor."""
    flat = [n for n, c in zip(lengths, counts, strict=True) for _ in range(c)]
    first = flat.index(lengths[anchor])

    def room(n: int) -> int:
        return size if max_cells is None or n == 0 else max(1, min(size, max_cells // n))

    best = 0.0
    for start in range(first + 1):
        for end in range(first + 1, len(flat) + 1):
            run, longest = flat[start:end], flat[end - 1]
            if len(run) > room(longest):
                continue
            seconds = cost.predict(len(run), longest)
            if len(run) > 1 and seconds > sum(cost.predict(1, n) for n in run) * (1 + 1e-9):
                continue
            work = sum(cost.predict(room(n), n) / room(n) for n in run)
            best = max(best, work / seconds)
    return best


@settings(max_examples=300, deadline=None)
@given(queues())
def test_the_choice_is_a_valid_and_best_run_of_the_sorted_queue(
    queue: tuple[list[int], list[int], int, int, int | None, CostModel],
) -> None:
    lengths, counts, anchor, size, max_cells, cost = queue
    take = pick_counts(lengths, counts, anchor, size, max_cells, cost)
    assert all(0 <= t <= c for t, c in zip(take, counts, strict=True)) and take[anchor] >= 1
    items = sum(take)
    assert 1 <= items <= size
    taken = [i for i, t in enumerate(take) if t]
    assert all(take[i] == counts[i] for i in taken[1:-1]), "not a run of the sorted queue"
    assert taken[-1] == anchor or take[anchor] == counts[anchor]
    longest = lengths[taken[-1]]
    if max_cells is not None and items > 1:
        assert items * longest <= max_cells
    seconds = cost.predict(items, longest)
    alone = sum(t * cost.predict(1, n) for n, t in zip(lengths, take, strict=True))
    assert items == 1 or seconds <= alone * (1 + 1e-9), "slower than one call per item"
    room = [
        size if max_cells is None or n == 0 else max(1, min(size, max_cells // n)) for n in lengths
    ]
    work = sum(t * cost.predict(r, n) / r for n, t, r in zip(lengths, take, room, strict=True))
    best = brute_force_rate(lengths, counts, anchor, size, max_cells, cost)
    assert work / seconds == pytest.approx(best, rel=1e-6)


@pytest.mark.parametrize("cost", [CPU, GPU], ids=["cpu", "gpu"])
@pytest.mark.parametrize("size", [8, 32])
def test_picking_batch_after_batch_costs_about_what_a_sorted_loop_does(
    cost: tuple[float, float], size: int
) -> None:
    """All at once, as the hand-written loop has them: within 5%, or cheaper."""
    model = known_cost(*cost)
    rng = np.random.default_rng(0)
    arrivals = [int(n) for n in rng.integers(4, 160, size=128)]
    waiting, picked = list(arrivals), 0.0
    while waiting:
        lengths = sorted(set(waiting))
        counts = [waiting.count(n) for n in lengths]
        take = pick_counts(lengths, counts, lengths.index(waiting[0]), size, None, model)
        batch = [n for n, t in zip(lengths, take, strict=True) for _ in range(t)]
        picked += model.predict(len(batch), max(batch))
        for n in batch:
            waiting.remove(n)
    ordered = sorted(arrivals)
    cuts = [ordered[i : i + size] for i in range(0, len(ordered), size)]
    assert picked <= 1.05 * sum(model.predict(len(cut), max(cut)) for cut in cuts)


# -- the core, with a fake clock and a fake cost -------------------------------------


def test_the_core_learns_what_its_batches_cost() -> None:
    driver = costed_driver(CPU, max_batch_size=8)
    rng = np.random.default_rng(1)
    for _ in range(12):
        for n in rng.integers(2, 80, size=int(rng.integers(1, 9))):
            driver.submit(np.ones(int(n), np.int64))
        driver.drain()
    (model,) = driver.core.costs.values()
    assert model.fitted
    assert (model.fixed, model.per_cell) == (pytest.approx(CPU[0]), pytest.approx(CPU[1]))


def test_once_learnt_a_long_item_no_longer_pads_the_short_ones() -> None:
    driver = costed_driver(CPU, max_batch_size=8)
    teach(driver, [5, 80, 20, 60, 3, 40])
    for n in [6, 120, 5, 7, 6]:
        driver.submit(np.ones(n, np.int64))
    driver.drain()
    assert sorted(shapes(driver)) == [(1, 120), (4, 7)]


def test_batches_are_never_slower_than_one_call_per_item() -> None:
    fixed, per_cell = CPU
    driver = costed_driver(CPU, max_batch_size=16)
    teach(driver, [5, 80, 20, 60, 3, 40])
    rng = np.random.default_rng(2)
    lengths = [int(n) for n in rng.integers(4, 160, size=200)]
    items = [driver.submit(np.ones(n, np.int64)) for n in lengths]
    start = driver.clock()
    driver.drain()
    assert driver.clock() - start <= sum(fixed + per_cell * n for n in lengths)
    for call in driver.calls:  # and no batch costs more than its items one call each
        rows, longest = call.shape
        own = (call != 0).sum(axis=1)
        assert fixed + per_cell * rows * longest <= sum(fixed + per_cell * own) + 1e-12
    assert all(item.result.shape == (n,) for item, n in zip(items, lengths, strict=True))


def test_a_departed_item_is_dropped_and_the_batch_chosen_again_without_it() -> None:
    driver = costed_driver(GPU, max_batch_size=2)
    lengths = (5, 5, 6, 3)
    items = [driver.submit(np.arange(1, n + 1)) for n in lengths]
    items[1].cancelled = True
    assert driver.drain() == [2, 1]
    assert shapes(driver) == [(2, 6), (1, 3)]
    assert isinstance(items[1].error, CancelledError)
    for item, n in zip(items, lengths, strict=True):
        if item is not items[1]:
            np.testing.assert_array_equal(item.result, np.arange(1, n + 1) * 2)


@settings(max_examples=60, deadline=None)
@given(
    rounds=st.lists(st.lists(st.integers(0, 40), max_size=10), min_size=1, max_size=6),
    size=st.integers(1, 8),
    max_tokens=st.none() | st.integers(1, 120),
    cost=st.sampled_from([CPU, GPU]),
)
def test_every_batch_respects_the_bounds_holds_the_oldest_and_answers_exactly(
    rounds: list[list[int]], size: int, max_tokens: int | None, cost: tuple[float, float]
) -> None:
    driver = costed_driver(cost, max_batch_size=size, max_batch_tokens=max_tokens)
    waiting: list[Any] = []
    submitted = []
    for lengths in rounds:
        for i, n in enumerate(lengths):
            x = np.arange(1, n + 1) + 100 * i
            item = driver.submit(x)
            submitted.append((item, x))
            waiting.append(item)
        while waiting:
            oldest = waiting[0]
            assert driver.round() is not None
            assert oldest.answered, "the oldest waiting item was passed over"
            rows, longest = driver.calls[-1].shape
            assert rows <= size
            assert max_tokens is None or rows == 1 or rows * longest <= max_tokens
            waiting = [item for item in waiting if not item.answered]
    for item, x in submitted:
        np.testing.assert_array_equal(item.result, x * 2)


# -- the batcher ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "64"])
def test_max_batch_tokens_must_be_a_positive_int(bad: Any) -> None:
    with pytest.raises(hibachi.ConfigurationError, match="max_batch_tokens"):
        hibachi.FeedforwardBatcher(lambda b: b, pad_value=0, max_batch_tokens=bad)


def test_max_batch_tokens_needs_a_pad_value() -> None:
    with pytest.raises(hibachi.ConfigurationError, match="pad_value"):
        hibachi.FeedforwardBatcher(lambda b: b, max_batch_tokens=64)


def test_the_batcher_keeps_its_batches_under_max_batch_tokens() -> None:
    seen: list[tuple[int, ...]] = []

    def model(batch: Any) -> Any:
        seen.append(batch.shape)
        return batch + 1

    async def main() -> list[Any]:
        batcher = hibachi.FeedforwardBatcher(
            model, max_batch_size=16, pad_value=0, trim_output=True, max_batch_tokens=40
        )
        async with batcher:
            xs = [np.arange(n) for n in [5, 9, 50, 3, 12, 7, 20, 8] * 4]
            return list(zip(xs, await asyncio_gather(batcher, xs), strict=True))

    for x, y in run_async(main()):
        np.testing.assert_array_equal(y, x + 1)
    assert all(rows == 1 or rows * length <= 40 for rows, length in seen)


async def asyncio_gather(batcher: hibachi.FeedforwardBatcher, xs: list[Any]) -> list[Any]:
    import asyncio

    return list(await asyncio.gather(*(batcher.run(x) for x in xs)))


# -- refitting only when a choice needs it ---------------------------------------------


def count_fits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the cost model's fits: one entry per `_robust_fit` call."""
    from hibachi._feedforward import cost_model

    fits: list[int] = []
    real = cost_model._robust_fit

    def counted(points: list[tuple[float, float, float]], quadratic: bool) -> Any:
        fits.append(len(points))
        return real(points, quadratic)

    monkeypatch.setattr(cost_model, "_robust_fit", counted)
    return fits


def test_observing_records_and_the_first_read_refits_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fits = count_fits(monkeypatch)
    model = CostModel()
    for items, length in [(1, 10), (4, 30), (8, 5), (2, 100), (16, 20)]:
        model.observe(items, length, CPU[0] + CPU[1] * items * length)
    assert model.stale and fits == []
    assert model.fitted and model.fixed == pytest.approx(CPU[0])
    assert model.per_cell == pytest.approx(CPU[1])
    assert not model.stale and fits == [5]


def test_batches_of_one_length_never_refit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lone caller's batches leave nothing to choose: no fit on the way to its answer."""
    fits = count_fits(monkeypatch)
    driver = costed_driver(CPU, max_batch_size=8)
    for n in [5, 80, 20, 60, 3, 40, 7, 9]:
        driver.submit(np.ones(n, np.int64))
        driver.drain()
    (model,) = driver.core.costs.values()
    assert fits == [] and model.stale


def test_a_choice_between_lengths_refits_first(monkeypatch: pytest.MonkeyPatch) -> None:
    fits = count_fits(monkeypatch)
    driver = costed_driver(CPU, max_batch_size=8)
    teach(driver, [5, 80, 20, 60, 3, 40])
    assert fits == []
    for n in [6, 120, 5, 7, 6]:
        driver.submit(np.ones(n, np.int64))
    driver.drain()
    assert fits[0] == 6  # the first choice saw every batch taught
    assert sorted(shapes(driver)) == [(1, 120), (4, 7)]
