"""Alternating rounds and the median of per-round ratios, as the embeddings benchmarks use them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hibachi._bench import feedforward_embeddings
from hibachi._bench.feedforward_embeddings import Timed, compare
from hibachi._bench.rounds import RatioSummary, alternate, ratio_summary, rotated
from hibachi._bench.settings import ScalingSize, preset


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


@pytest.mark.parametrize(
    ("clients", "texts"), [(1, 32), (2, 32), (3, 33), (8, 32), (16, 64), (64, 256)]
)
def test_few_clients_embed_enough_texts_to_measure(clients: int, texts: int) -> None:
    size = ScalingSize(prompt_length=1, budget=1, texts_per_client=4, repeat=1, min_texts=32)
    assert size.texts_at(clients) == texts


def test_the_full_preset_alternates_rounds_over_at_least_32_texts() -> None:
    scaling = preset("full").scaling
    assert scaling.rounds >= 3 and scaling.texts_at(1) >= 32
    assert preset("tiny").scaling.texts_at(4) == 4  # the workload's own size, unchanged


def test_compare_keeps_the_bests_and_one_side_by_side_ratio_per_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 2 is slow for both (a busy machine): the bests skip it, its ratio counts."""
    loop_seconds = {8: iter([2.0, 8.0, 2.2]), 32: iter([1.0, 4.0, 1.2])}
    served_seconds = {8: iter([1.5, 5.0, 1.0]), 32: iter([2.0, 5.0, 2.0])}

    def embed_sorted_batches(minilm: object, texts: list[str], size: int) -> Timed:
        return Timed([], next(loop_seconds[size]))

    async def embed_with_hibachi(minilm: object, texts: list[str], size: int) -> Timed:
        return Timed([], next(served_seconds[size]))

    monkeypatch.setattr(feedforward_embeddings, "embed_alone", lambda m, t: Timed([], 1.0))
    monkeypatch.setattr(feedforward_embeddings, "embed_sorted_batches", embed_sorted_batches)
    monkeypatch.setattr(feedforward_embeddings, "embed_with_hibachi", embed_with_hibachi)
    monkeypatch.setattr(feedforward_embeddings, "min_cosine", lambda a, b: 0.99)
    released: list[int] = []
    monkeypatch.setattr(feedforward_embeddings, "release_openmp_pool", lambda: released.append(1))
    result = compare(texts=4, repeat=3, minilm=object(), release_loop_pool=True)  # type: ignore[arg-type]
    assert len(released) == 6  # before each hibachi run: 2 sizes, 3 rounds
    assert result.loop_seconds == {8: 2.0, 32: 1.0}
    assert result.hibachi_seconds == {8: 1.0, 32: 2.0}
    assert result.throughput_ratio == 1.0
    assert result.round_ratios == (1.0 / 1.5, 4.0 / 5.0, 1.2 / 1.0)
    assert result.round_summary.median == pytest.approx(0.8)
    assert result.min_cosine == 0.99


def test_the_scaling_curves_are_medians_of_alternating_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    from hibachi._bench import NullProgress, scaling
    from hibachi._bench.results import Section

    order: list[str] = []
    alone_rates = iter([10.0, 30.0, 12.0] * 2)
    served_rates = iter([11.0, 36.0, 9.0] * 2)

    def embed_alone(minilm: object, texts: list[str]) -> Timed:
        order.append("alone")
        return Timed([None] * len(texts), len(texts) / next(alone_rates))

    async def embedding_curve(minilm: object, texts: list[str], callers: int, size: int) -> float:
        order.append("hibachi")
        return next(served_rates)

    monkeypatch.setattr(scaling, "load_minilm", lambda device: object())
    monkeypatch.setattr(scaling, "embed_alone", embed_alone)
    monkeypatch.setattr(scaling, "embedding_curve", embedding_curve)
    tiny = preset("tiny")
    settings = replace(tiny, scaling=replace(tiny.scaling, rounds=3))
    section = Section("scaling", "Scaling", [])
    served, alone = scaling._embedding_series(settings, NullProgress(), section)
    assert order[:6] == ["alone", "hibachi", "hibachi", "alone", "alone", "hibachi"]
    assert alone.y == [pytest.approx(12.0)] * 2 and served.y == [11.0] * 2
    assert "1: 1.10x [0.75-1.20], 4: 1.10x [0.75-1.20]" in section.notes[-1]


def test_releasing_the_openmp_pool_leaves_torch_working() -> None:
    """Where torch bundles libgomp, the call succeeds and the next parallel region still runs."""
    torch = pytest.importorskip("torch")
    from hibachi._bench.openmp import release_openmp_pool

    x = torch.ones(1 << 17)
    assert float(x.add(1).sum()) == 2.0 * (1 << 17)  # a parallel region: this thread's pool
    released = release_openmp_pool()
    assert isinstance(released, bool)
    assert float(x.add(2).sum()) == 3.0 * (1 << 17)
