"""Nestings (flatten / unflatten / pad values per leaf) and similar-length picking."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

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
