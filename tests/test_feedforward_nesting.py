"""Nestings (flatten / unflatten / pad values per leaf) and similar-length picking."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from hibachi._feedforward.length_picking import choose_counts
from hibachi._feedforward.nesting import LEAF, flatten, leaf_values, unflatten


def is_array(x: object) -> bool:
    return isinstance(x, np.ndarray)


leaves = st.integers(0, 9).map(lambda i: np.full(2, i))
nestings = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.sampled_from("abcd"), inner, max_size=3),
    ),
    max_leaves=8,
)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return (
        type(a) is type(b) and len(a) == len(b) and all(map(same, a, b))  # tuple or list
    )


@given(nestings)
def test_unflatten_rebuilds_what_flatten_took_apart(x: Any) -> None:
    structure, parts = flatten(x, is_array)
    assert all(isinstance(p, np.ndarray) for p in parts)
    assert same(unflatten(structure, iter(parts)), x)
    hash(structure)  # structures key the batcher's groups


def test_structures_tell_kinds_of_nesting_apart() -> None:
    a = np.zeros(1)
    kinds = [a, [a], (a,), {"k": a}, {"j": a}, [a, a], {"k": a, "j": a}, {"j": a, "k": a}]
    structures = [flatten(x, is_array)[0] for x in kinds]
    assert structures[0] is LEAF
    assert len(set(structures)) == len(kinds)


def test_pad_values_per_leaf() -> None:
    structure, _ = flatten({"ids": np.zeros(1), "extra": (np.zeros(1), np.zeros(1))}, is_array)
    assert leaf_values(structure, 0) == [0, 0, 0]
    assert leaf_values(structure, {"ids": 1, "extra": 2}) == [1, 2, 2]
    assert leaf_values(structure, {"ids": 1, "extra": (None, 3)}) == [1, None, 3]
    assert leaf_values(structure, {"ids": 1}) is None
    assert leaf_values(structure, {"ids": 1, "extra": (1, 2, 3)}) is None
    assert leaf_values(structure, [1, 2]) is None


def sorted_cut(lengths: list[int], counts: list[int], anchor: int, size: int) -> list[int]:
    """The reference: sort every item, cut into batches from the shorter or the longer
    end (whichever pads less; a tie: the shorter), take the anchor's cut, made full."""
    items = [(n, i) for i, (n, c) in enumerate(zip(lengths, counts, strict=True)) for _ in range(c)]
    if len(items) <= size:
        return list(counts)

    def waste(cut: list[tuple[int, int]]) -> int:
        return len(cut) * max(n for n, _ in cut) - sum(n for n, _ in cut)

    starts_short = list(range(0, len(items), size))
    starts_long = [0, *range(len(items) % size or size, len(items), size)]
    ways = []
    for starts in (starts_short, starts_long):
        cuts = [items[s:e] for s, e in zip(starts, [*starts[1:], len(items)], strict=True)]
        ways.append((sum(map(waste, cuts)), starts))
    starts = min(ways, key=lambda way: way[0])[1]
    first = sum(counts[:anchor])
    start = max(s for s in starts if s <= first)
    end = min([s for s in starts if s > first] + [len(items)])
    if end - start < size:
        start, end = (0, size) if start == 0 else (end - size, end)
    return [sum(1 for _, i in items[start:end] if i == k) for k in range(len(lengths))]


@st.composite
def queues(draw: st.DrawFn) -> tuple[list[int], list[int], int, int]:
    lengths = sorted(draw(st.sets(st.integers(1, 40), min_size=1, max_size=6)))
    counts = draw(st.lists(st.integers(1, 5), min_size=len(lengths), max_size=len(lengths)))
    anchor = draw(st.integers(0, len(lengths) - 1))
    size = draw(st.integers(1, 8))
    return lengths, counts, anchor, size


@given(queues())
def test_choose_counts_takes_the_oldest_and_its_cut_of_the_sorted_queue(
    queue: tuple[list[int], list[int], int, int],
) -> None:
    lengths, counts, anchor, size = queue
    take = choose_counts(lengths, counts, anchor, size)
    assert sum(take) == min(size, sum(counts))
    assert all(0 <= t <= c for t, c in zip(take, counts, strict=True)) and take[anchor] >= 1
    assert take == sorted_cut(lengths, counts, anchor, size)


def test_picking_batch_after_batch_pads_as_little_as_a_sorted_loop() -> None:
    rng = np.random.default_rng(0)
    arrivals = [int(n) for n in rng.integers(4, 150, size=128)]
    for size in (8, 32):
        waiting, picked_waste = list(arrivals), 0
        while waiting:
            lengths = sorted(set(waiting))
            counts = [waiting.count(n) for n in lengths]
            take = choose_counts(lengths, counts, lengths.index(waiting[0]), size)
            batch = [n for n, t in zip(lengths, take, strict=True) for _ in range(t)]
            picked_waste += len(batch) * max(batch) - sum(batch)
            for n in batch:
                waiting.remove(n)
        ordered = sorted(arrivals)
        cuts = [ordered[i : i + size] for i in range(0, len(ordered), size)]
        assert picked_waste <= sum(len(c) * max(c) - sum(c) for c in cuts)
