"""`InputChecker.describe`'s short path for a flat dict like the previous one (issue #15):
it describes every input as the full path does, and refuses what the full path refuses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hibachi import InvalidRequest
from hibachi._feedforward import item as item_module
from hibachi._feedforward.item import InputChecker

PADS = {"input_ids": 0, "attention_mask": 0, "extra": None}


def leaf(library: str, shape: tuple[int, ...], dtype: str) -> Any:
    x = np.ones(shape, dtype)
    return torch.from_numpy(x) if library == "torch" else x


@st.composite
def dict_inputs(draw: st.DrawFn) -> dict[str, Any]:
    library = draw(st.sampled_from(["numpy", "torch"]))
    keys = draw(st.permutations(list(PADS)))
    out: dict[str, Any] = {}
    for key in keys:
        rank = draw(st.sampled_from([0, 1, 1, 1, 2]))
        shape = tuple(draw(st.integers(1, 4)) for _ in range(rank))
        out[key] = leaf(library, shape, draw(st.sampled_from(["int64", "int64", "int32"])))
    return out


def outcome(checker: InputChecker, x: Any) -> Any:
    try:
        leaves, layout, length = checker.describe(x)
    except InvalidRequest as exc:
        return ("refused", str(exc))
    return (tuple(id(v) for v in leaves), layout, length)  # layouts are compared by identity


def full_path(checker: InputChecker, x: Any) -> Any:
    """``x`` through a fresh checker's full path, sharing ``checker``'s layouts (so that one
    kind of input gets the same layout object from both)."""
    fresh = InputChecker(PADS)
    fresh._pads, fresh._layouts = checker._pads, checker._layouts
    return outcome(fresh, x)


@settings(max_examples=300, deadline=None)
@given(st.lists(dict_inputs(), min_size=1, max_size=6))
def test_the_short_path_describes_as_the_full_path_does(inputs: list[dict[str, Any]]) -> None:
    checker = InputChecker(PADS)
    for x in inputs:
        expected = full_path(checker, x)
        got = outcome(checker, x)
        assert got == expected


def tokens(n: int, m: int | None = None, dtype: Any = np.int64) -> dict[str, Any]:
    return {
        "input_ids": np.ones(n, dtype),
        "attention_mask": np.ones(n if m is None else m, np.int64),
        "extra": np.ones(2, np.float32),
    }


def test_a_dict_like_the_last_takes_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    checker = InputChecker(PADS)
    first = tokens(5)
    _, layout, _ = checker.describe(first)
    monkeypatch.setattr(item_module, "flatten", None)  # the full path would now fail
    second = tokens(9, 7)
    leaves, again, length = checker.describe(second)
    assert again is layout and length == 9
    assert leaves == tuple(second.values())


@pytest.mark.parametrize(
    "second",
    [
        pytest.param(tokens(3, dtype=np.int32), id="dtype"),
        pytest.param({**tokens(3), "extra": np.ones(3, np.float32)}, id="unpadded shape"),
        pytest.param({"attention_mask": np.ones(3, np.int64)}, id="keys"),
        pytest.param({**tokens(3), "attention_mask": 3}, id="not-array"),
        pytest.param({**tokens(3), "input_ids": np.int64(3)}, id="0-d padded"),
        pytest.param({**tokens(3), "input_ids": torch.ones(3, dtype=torch.int64)}, id="library"),
    ],
)
def test_a_dict_unlike_the_last_is_read_in_full(second: dict[str, Any]) -> None:
    checker = InputChecker(PADS)
    checker.describe(tokens(5))
    assert outcome(checker, second) == full_path(checker, second)
