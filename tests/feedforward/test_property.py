"""Batched equals alone: for random shapes, nestings, pad values and arrival
patterns, each caller's result is the model's result on its input alone."""

from __future__ import annotations

import asyncio
from concurrent.futures import CancelledError
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hibachi
from hibachi._core.delivery import Failure
from hibachi._feedforward.nesting import flatten, unflatten
from support.feedforward import Driver, Recorded, run_async


@dataclass(frozen=True)
class Kind:
    """One kind of input: its nesting, and per leaf a trailing shape, dtype and pad."""

    structure: Any
    trailing: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    padded: tuple[bool, ...]

    def make(self, length: int, seed: int) -> Any:
        """An input whose longest padded leaf has ``length`` (the others may be shorter)."""
        rng = np.random.default_rng(seed)
        leaves, longest = [], False
        for trailing, dtype, padded in zip(self.trailing, self.dtypes, self.padded, strict=True):
            own = length if not longest else int(rng.integers(1, length + 1))
            longest = longest or padded
            shape = (own, *trailing) if padded else trailing
            leaves.append(rng.integers(1, 50, size=shape).astype(dtype))
        return unflatten(self.structure, iter(leaves))

    def padded_alone(self, x: Any) -> Any:
        """``x`` as the batcher pads it in a batch of its own (every pad value is 0)."""
        _, leaves = flatten(x, is_array)
        lengths = [leaf.shape[0] for leaf, p in zip(leaves, self.padded, strict=True) if p]
        length = max(lengths, default=0)
        out = [
            np.pad(leaf, [(0, length - leaf.shape[0])] + [(0, 0)] * (leaf.ndim - 1)) if p else leaf
            for leaf, p in zip(leaves, self.padded, strict=True)
        ]
        return unflatten(self.structure, iter(out))


def is_array(x: object) -> bool:
    return isinstance(x, np.ndarray)


templates = st.recursive(
    st.just("leaf"),
    lambda inner: st.one_of(
        st.lists(inner, min_size=1, max_size=2),
        st.lists(inner, min_size=1, max_size=2).map(tuple),
        st.dictionaries(st.sampled_from("abc"), inner, min_size=1, max_size=2),
    ),
    max_leaves=3,
)


MAX_LENGTH = 8  # padded lengths stay below every unpadded axis, which trimming must not touch


@st.composite
def kinds(draw: st.DrawFn, padding: bool, pad_every_leaf: bool = False) -> Kind:
    structure, leaves = flatten(draw(templates), lambda x: x == "leaf")
    padded = tuple(padding and (pad_every_leaf or draw(st.booleans())) for _ in leaves)
    if padding and not any(padded):
        padded = (True, *padded[1:])
    trailing = tuple(
        tuple(draw(st.lists(st.integers(1, 3) if p else st.sampled_from([9, 11]), max_size=2)))
        for p in padded
    )
    dtypes = tuple(draw(st.sampled_from(["float32", "int64"])) for _ in leaves)
    return Kind(structure, trailing, dtypes, padded)


def pad_values(kind: Kind, scalar: bool) -> Any:
    if scalar:
        return 0
    return unflatten(kind.structure, iter(0 if p else None for p in kind.padded))


def model(batch: Any) -> Any:
    """Row-independent, and blind to padding once the output is trimmed."""
    _, leaves = flatten(batch, is_array)
    return {
        "each": [leaf * 3 + 1 for leaf in leaves],
        "first": leaves[0].reshape(leaves[0].shape[0], -1)[:, :1] - 2,
    }


def alone(x: Any) -> Any:
    structure, leaves = flatten(x, is_array)
    result = model(unflatten(structure, iter(leaf[None] for leaf in leaves)))
    structure, leaves = flatten(result, is_array)
    return unflatten(structure, iter(leaf[0] for leaf in leaves))


def assert_same(got: Any, expected: Any) -> None:
    got_structure, got_leaves = flatten(got, is_array)
    structure, leaves = flatten(expected, is_array)
    assert got_structure == structure
    for a, b in zip(got_leaves, leaves, strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


# ops: ("submit", kind index, length, seed) | ("tick", seconds) | ("round",) | ("cancel", i)
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("submit"), st.integers(0, 2), st.integers(1, MAX_LENGTH), st.integers(0, 99)
        ),
        st.tuples(st.just("tick"), st.sampled_from([0.001, 0.004, 0.02])),
        st.tuples(st.just("round")),
        st.tuples(st.just("cancel"), st.integers(0, 30)),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    padding=st.sampled_from(["none", "scalar", "nested"]),
    data=st.data(),
    ops=operations,
    max_batch_size=st.integers(1, 5),
    max_wait=st.sampled_from([0.0, 0.003, 0.01]),
)
def test_every_caller_gets_what_the_model_gives_its_input_alone(
    padding: str,
    data: st.DataObject,
    ops: list[tuple[Any, ...]],
    max_batch_size: int,
    max_wait: float,
) -> None:
    pad_kinds = [data.draw(kinds(padding != "none", padding == "scalar")) for _ in range(3)]
    drivers: dict[int, Driver] = {}  # a batcher has one pad_value: one per kind if nested

    def driver_for(index: int) -> Driver:
        key = index if padding == "nested" else 0
        if key not in drivers:
            pad = {"none": None, "scalar": 0}.get(padding, pad_values(pad_kinds[index], False))
            options = {"max_batch_size": max_batch_size, "max_wait": max_wait}
            drivers[key] = Driver(model, pad_value=pad, trim_output=padding != "none", **options)
        return drivers[key]

    submitted: list[tuple[Any, Recorded]] = []
    op_kind: dict[int, int] = {}
    for op in ops:
        if op[0] == "submit":
            x = pad_kinds[op[1]].make(op[2], op[3])
            submitted.append((x, driver_for(op[1]).submit(x)))
            op_kind[id(submitted[-1][1])] = op[1]
        elif op[0] == "tick":
            for driver in drivers.values():
                driver.clock.advance(op[1])
        elif op[0] == "round":
            for driver in drivers.values():
                driver.round()
        elif submitted:
            submitted[op[1] % len(submitted)][1].cancelled = True
    for driver in drivers.values():
        driver.drain(closing=True)
        assert len(driver.core) == 0
    for x, item in submitted:
        outcome = item.outcomes[0]  # every item is answered, once (Recorded checks)
        if item.cancelled and isinstance(outcome, Failure):
            assert isinstance(outcome.error, CancelledError)  # dropped before its round
        else:
            assert_same(item.result, alone(pad_kinds[op_kind[id(item)]].padded_alone(x)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=kinds(True),
    lengths=st.lists(st.integers(1, MAX_LENGTH), min_size=1, max_size=24),
    waves=st.integers(1, 4),
    max_batch_size=st.integers(1, 8),
    max_wait=st.sampled_from([0.0, 0.002]),
)
def test_the_same_through_the_real_batcher_with_concurrent_callers(
    kind: Kind, lengths: list[int], waves: int, max_batch_size: int, max_wait: float
) -> None:
    inputs = [kind.make(n, seed) for seed, n in enumerate(lengths)]
    options = {"max_batch_size": max_batch_size, "max_wait": max_wait}

    async def caller(b: hibachi.FeedforwardBatcher, i: int, x: Any) -> Any:
        await asyncio.sleep(0.001 * (i % waves))  # callers arrive in waves
        return await b.run(x)

    async def main() -> list[Any]:
        pad = pad_values(kind, scalar=False)
        batcher = hibachi.FeedforwardBatcher(model, pad_value=pad, trim_output=True, **options)
        async with batcher:
            return await asyncio.gather(*(caller(batcher, i, x) for i, x in enumerate(inputs)))

    for x, result in zip(inputs, run_async(main()), strict=True):
        assert_same(result, alone(kind.padded_alone(x)))
