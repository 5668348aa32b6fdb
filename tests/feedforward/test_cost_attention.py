"""The cost model's attention term (issue #15): ``fixed + per_cell · cells +
per_cell_length · cells · length``, fitted online, and the batches it chooses
on the core with a fake clock whose model costs that many seconds."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hibachi._feedforward import cost_model
from hibachi._feedforward.cost_model import CostModel
from hibachi._feedforward.least_squares import non_negative_fit
from support.feedforward import Driver

MINILM = (0.012, 0.00015, 1e-7)  # all-MiniLM-L6-v2 on one CPU core (benchmarks/batch_cost_fit.py)
STEEP = (0.010, 0.00001, 2e-7)  # attention dominates past 50 positions
GRID = [(1, 8), (4, 64), (16, 16), (2, 256), (8, 128), (32, 32), (1, 512), (4, 384)]


def seconds(terms: tuple[float, float, float], items: int, length: int) -> float:
    fixed, per_cell, per_cell_length = terms
    return fixed + per_cell * items * length + per_cell_length * items * length * length


def learnt(terms: tuple[float, float, float], batches: list[tuple[int, int]]) -> CostModel:
    model = CostModel()
    for items, length in batches:
        model.observe(items, length, seconds(terms, items, length))
    return model


def quadratic_driver(terms: tuple[float, float, float], **options: Any) -> Driver:
    driver = Driver(lambda batch: batch, pad_value=0, trim_output=True, **options)

    def model(batch: Any) -> Any:
        rows, length = batch.shape
        driver.clock.advance(seconds(terms, rows, length))
        return batch * 2

    driver.model = model
    return driver


# -- the fit -------------------------------------------------------------------------


@pytest.mark.parametrize("terms", [MINILM, STEEP], ids=["minilm", "steep"])
def test_the_fit_recovers_all_three_terms(terms: tuple[float, float, float]) -> None:
    model = learnt(terms, GRID)
    assert model.fitted
    found = (model.fixed, model.per_cell, model.per_cell_length)
    assert found == pytest.approx(terms, rel=1e-6)


def test_noise_and_pauses_do_not_spoil_the_attention_term() -> None:
    model = CostModel()
    rng = np.random.default_rng(0)
    for i in range(64):
        items, length = int(rng.integers(1, 33)), int(rng.integers(8, 513))
        noise = (1 + 0.02 * rng.standard_normal()) * (
            20 if i % 10 == 3 else 1
        )  # now and then a pause
        model.observe(items, length, seconds(MINILM, items, length) * noise)
    assert model.fixed == pytest.approx(MINILM[0], rel=0.15)
    assert model.per_cell == pytest.approx(MINILM[1], rel=0.15)
    assert model.per_cell_length == pytest.approx(MINILM[2], rel=0.15)


def test_batches_of_one_length_fit_a_linear_cost_that_is_right_at_that_length() -> None:
    model = learnt(MINILM, [(items, 128) for items in (1, 2, 4, 8, 16, 32)])
    assert model.fitted and model.per_cell_length == 0.0
    for items in (1, 3, 32):
        assert model.predict(items, 128) == pytest.approx(seconds(MINILM, items, 128), rel=1e-6)


def test_the_attention_term_waits_for_lengths_twice_apart_and_a_fifth_batch() -> None:
    close = learnt(STEEP, [(1, 100), (8, 120), (2, 180), (16, 150), (4, 110), (32, 140)])
    assert close.fitted and close.per_cell_length == 0.0  # 100 to 180: too close to tell
    few = learnt(STEEP, GRID[:4])
    assert few.fitted and few.per_cell_length == 0.0
    assert learnt(STEEP, GRID[:5]).per_cell_length == pytest.approx(STEEP[2], rel=1e-6)


def test_one_batch_leaves_the_prior() -> None:
    model = learnt(MINILM, [(4, 256)])
    assert not model.fitted
    assert (model.fixed, model.per_cell, model.per_cell_length) == (64.0, 1.0, 0.0)


@pytest.mark.parametrize("time", [0.0, 1e-15], ids=["zero", "tiny"])
def test_batches_timed_at_zero_give_a_usable_model(time: float) -> None:
    model = CostModel()
    for items, length in GRID:
        model.observe(items, length, time)
    terms = (model.fixed, model.per_cell, model.per_cell_length)
    assert all(np.isfinite(terms)) and min(terms) >= 0
    assert model.predict(1, 1) > 0


def test_some_batches_timed_at_zero_do_not_make_the_others_free() -> None:
    model = CostModel()
    for i, (items, length) in enumerate(GRID * 2):
        model.observe(items, length, 0.0 if i == 5 else seconds(MINILM, items, length))
    assert model.predict(8, 256) == pytest.approx(seconds(MINILM, 8, 256), rel=0.05)


# -- non-negative least squares -------------------------------------------------------


def test_a_term_that_would_be_negative_is_held_at_zero() -> None:
    rows = np.array([(1.0, x) for x in (1.0, 2.0, 3.0, 4.0)])
    assert non_negative_fit(rows, np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx([2.5, 0.0])


def test_terms_that_cannot_be_told_apart_are_not_both_fitted() -> None:
    rows = np.array([(1.0, x, 2 * x) for x in (1.0, 2.0, 3.0)])  # the third is twice the second
    found = non_negative_fit(rows, np.array([3.0, 5.0, 7.0]))
    assert np.allclose(rows @ np.array(found), [3.0, 5.0, 7.0])
    assert min(found) >= 0 and 0.0 in found[1:]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0.0, 1e3), st.floats(0.0, 1e6), st.floats(-1.0, 10.0)),
        min_size=1,
        max_size=12,
    )
)
def test_no_non_negative_terms_fit_better(data: list[tuple[float, float, float]]) -> None:
    optimize = pytest.importorskip("scipy.optimize")
    rows = np.array([(1.0, x, x2) for x, x2, _ in data])
    targets = np.array([t for *_, t in data])
    found = np.array(non_negative_fit(rows, targets))
    assert np.all(found >= 0)
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1
    reference, _ = optimize.nnls(rows / scale, targets)
    error = np.sum((rows @ found - targets) ** 2)
    assert error <= np.sum((rows / scale @ reference - targets) ** 2) * (1 + 1e-6) + 1e-9


# -- the choice, on the core ----------------------------------------------------------


def teach_short(driver: Driver) -> None:
    """Batches of up to 32 positions, one at a time, then forget the calls."""
    for group in [[4], [8, 8], [16], [3, 3, 3, 3], [12], [32, 32], [24], [6, 6, 6, 6, 6, 6]]:
        for n in group:
            driver.submit(np.ones(n, np.int64))
        driver.drain()
    driver.calls.clear()


def run_two_short_and_a_long(driver: Driver) -> tuple[list[tuple[int, ...]], float]:
    for n in [8, 8, 256]:
        driver.submit(np.ones(n, np.int64))
    start = driver.clock()
    driver.drain()
    return [call.shape for call in driver.calls], driver.clock() - start


def test_with_attention_priced_a_long_item_is_left_for_a_batch_of_its_own() -> None:
    driver = quadratic_driver(STEEP, max_batch_size=8)
    teach_short(driver)
    shapes, spent = run_two_short_and_a_long(driver)
    assert sorted(shapes) == [(1, 256), (2, 8)]
    assert spent == pytest.approx(seconds(STEEP, 2, 8) + seconds(STEEP, 1, 256))


def test_priced_linear_the_same_batches_would_pad_the_short_items_to_the_long_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What the test above guards against: without the attention term the model
    learns from short batches a cell's price that is far too low for 256 positions."""
    monkeypatch.setattr(cost_model, "_attention_shows", lambda points: False)
    driver = quadratic_driver(STEEP, max_batch_size=8)
    teach_short(driver)
    shapes, spent = run_two_short_and_a_long(driver)
    assert shapes == [(3, 256)]
    assert spent > 1.5 * (seconds(STEEP, 2, 8) + seconds(STEEP, 1, 256))


def test_the_core_learns_all_three_terms() -> None:
    driver = quadratic_driver(MINILM, max_batch_size=32)
    rng = np.random.default_rng(1)
    for _ in range(16):
        for n in rng.integers(8, 400, size=int(rng.integers(1, 12))):
            driver.submit(np.ones(int(n), np.int64))
        driver.drain()
    (model,) = driver.core.costs.values()
    found = (model.fixed, model.per_cell, model.per_cell_length)
    assert found == pytest.approx(MINILM, rel=1e-6)


def test_with_attention_priced_batches_are_never_slower_than_one_call_per_item() -> None:
    driver = quadratic_driver(STEEP, max_batch_size=16)
    teach_short(driver)
    rng = np.random.default_rng(2)
    lengths = [int(n) for n in rng.integers(4, 300, size=200)]
    for n in lengths:
        driver.submit(np.ones(n, np.int64))
    start = driver.clock()
    driver.drain()
    assert driver.clock() - start <= sum(seconds(STEEP, 1, n) for n in lengths)
    for call in driver.calls:
        rows, longest = call.shape
        alone = sum(seconds(STEEP, 1, int(n)) for n in (call != 0).sum(axis=1))
        assert seconds(STEEP, rows, longest) <= alone * (1 + 1e-9)
