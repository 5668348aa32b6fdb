"""How the bench times: the best of a few runs under a deadline, and alternating rounds
compared by the median of per-round ratios, as the embeddings workloads use them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hibachi._bench.timing.rounds import RatioSummary, alternate, ratio_summary, rotated
from hibachi._bench.timing.runs import best_of, run_async


def test_best_of_keeps_the_best_run_and_stops_once_time_is_up() -> None:
    runs = iter([3.0, 5.0, 4.0])
    assert best_of(lambda: next(runs), float, repeat=3, within=float("inf")) == 5.0
    calls: list[int] = []
    assert best_of(lambda: calls.append(1) or 1.0, float, repeat=3, within=0.0) == 1.0
    assert len(calls) == 1


def test_best_of_without_a_time_budget_runs_every_repeat() -> None:
    calls: list[int] = []
    assert best_of(lambda: calls.append(1) or 1.0, float, repeat=3, within=None) == 1.0
    assert len(calls) == 3


def test_a_run_that_hangs_fails_at_its_deadline() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError, match="did not finish within"):
        run_async(hangs(), seconds=0.05)
    assert run_async(asyncio.sleep(0, result=7)) == 7


def test_the_summary_is_the_median_of_the_rounds_ratios_with_their_range() -> None:
    summary = ratio_summary([10.0, 30.0, 12.0, 8.0, 20.0], [10.0, 10.0, 10.0, 10.0, 10.0])
    assert summary == RatioSummary(median=1.2, low=0.8, high=3.0, rounds=5)
    assert str(summary) == "1.20x [0.80-3.00]"


def test_ratios_pair_the_rounds_rather_than_the_bests() -> None:
    """Best-of over best-of would read 40/20 = 2.0; round by round hibachi is never ahead."""
    summary = ratio_summary([10.0, 40.0, 10.0], [10.0, 40.0, 20.0])
    assert (summary.median, summary.low, summary.high) == (1.0, 0.5, 1.0)


def test_one_round_prints_without_a_range() -> None:
    assert str(ratio_summary([3.0], [2.0])) == "1.50x"


@pytest.mark.parametrize(
    ("numerators", "denominators"),
    [pytest.param([], [], id="no-round"), pytest.param([1.0], [1.0, 2.0], id="unpaired")],
)
def test_rounds_must_pair_up(numerators: list[float], denominators: list[float]) -> None:
    with pytest.raises(ValueError, match="one numerator and one denominator"):
        ratio_summary(numerators, denominators)


def test_every_method_runs_once_a_round_and_the_order_turns() -> None:
    calls: list[str] = []
    counter: Iterator[int] = iter(range(100))

    def method(name: str) -> float:
        calls.append(name)
        return float(next(counter))

    figures = alternate({name: lambda name=name: method(name) for name in "abc"}, rounds=4)
    assert calls == list("abcbcacababc")
    assert figures == {
        "a": [0.0, 5.0, 7.0, 9.0],
        "b": [1.0, 3.0, 8.0, 10.0],
        "c": [2.0, 4.0, 6.0, 11.0],
    }


def test_rotated() -> None:
    assert rotated([1, 2, 3], 4) == [2, 3, 1]
    assert rotated([], 3) == []


def test_alternate_returns_whatever_the_methods_return() -> None:
    figures = alternate({"a": lambda: "x", "b": lambda: None}, rounds=2)
    assert figures == {"a": ["x", "x"], "b": [None, None]}
