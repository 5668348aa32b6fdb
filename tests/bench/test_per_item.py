"""The overhead workload's cost per item: each round's hibachi/floor ratio is kept beside the
best figures (the ratio of two best figures swings on a busy machine)."""

from __future__ import annotations

import pytest

from hibachi._bench.methods import per_item as overhead
from hibachi._bench.methods.per_item import Cost


def test_measure_keeps_each_rounds_ratio_of_hibachi_to_the_floor(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # round 1: a slow machine for both; round 2: fast for both
    costs = {("floor", 0): 20.0, ("hibachi", 0): 30.0, ("floor", 1): 10.0, ("hibachi", 1): 12.0}
    rounds = {"n": 0}

    def fake(name: str, callers: int, batch_size: int, wait: float, runs: int) -> Cost | None:
        if name not in ("floor", "hibachi"):
            return None
        seconds = costs[(name, rounds["n"])]
        if name == "hibachi":
            rounds["n"] += 1
        return Cost(seconds, 2 * seconds)

    monkeypatch.setattr(overhead, "_run_isolated", fake)
    monkeypatch.setattr(overhead, "_installed", lambda name: name in ("floor", "hibachi"))
    result = overhead.measure(repeat=2)
    assert (result.floor, result.hibachi) == (10.0, 12.0)
    assert result.round_ratios == pytest.approx((1.5, 1.2))
    assert result.median_round_ratio == pytest.approx(1.35)
    assert result.cpu is not None and result.cpu.round_ratios == pytest.approx((1.5, 1.2))
