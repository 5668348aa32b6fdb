"""SequenceBuffer: left padding, the mask, trimming, relocation and growth, by hand."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hibachi._autoregressive.buffer import SequenceBuffer
from hibachi._backends import Backend, backend_of
from support.models import to_numpy

PAD = -7


def numpy_backend() -> Backend:
    backend = backend_of(np.zeros(()))
    assert backend is not None
    return backend


class Mirror:
    """A SequenceBuffer next to plain lists of what each row should hold."""

    def __init__(
        self,
        token_shape: tuple[int, ...] = (),
        rows: int = 4,
        capacity: int = 16,
        backend: Backend | None = None,
    ) -> None:
        self.backend = backend or numpy_backend()
        self.token_shape = token_shape
        pad = np.full(token_shape, PAD, dtype=np.int64)
        if self.backend.name == "torch":
            self.pad: Any = torch.from_numpy(pad)
        else:
            self.pad = pad
        self.buffer = SequenceBuffer(self.backend, self.pad, rows, capacity=capacity)
        self.rows: list[list[Any]] = []
        self._values = itertools.count(1)

    def tokens(self, count: int) -> np.ndarray[Any, Any]:
        """``count`` distinct tokens, so a misplaced one cannot go unnoticed."""
        size = int(np.prod(self.token_shape, dtype=np.int64))
        values = [next(self._values) for _ in range(count * size)]
        return np.array(values, dtype=np.int64).reshape((count, *self.token_shape))

    def native(self, x: np.ndarray[Any, Any]) -> Any:
        return torch.from_numpy(x) if self.backend.name == "torch" else x

    def admit(self, length: int) -> None:
        prompt = self.tokens(length)
        self.rows.append(list(prompt))
        n = len(self.rows)
        self.buffer.admit(n - 1, self.native(prompt), n)

    def append(self) -> None:
        column = self.tokens(len(self.rows))
        for row, token in zip(self.rows, column, strict=True):
            row.append(token)
        self.buffer.append(self.native(column), len(self.rows))

    def remove(self, i: int) -> None:
        """Remove row ``i`` as the scheduler does: the last row takes its place."""
        last = len(self.rows) - 1
        if i != last:
            self.buffer.move(last, i)
            self.rows[i] = self.rows[last]
        self.rows.pop()
        self.buffer.trim(len(self.rows))

    def check(self, trimmed: bool = True) -> None:
        n = len(self.rows)
        tokens, mask = (to_numpy(a) for a in self.buffer.view(n))
        width = self.buffer.width
        assert tokens.shape == (n, width, *self.token_shape)
        assert mask.shape == (n, width) and mask.dtype == np.bool_
        longest = max((len(row) for row in self.rows), default=0)
        assert width >= longest
        if trimmed:
            assert width == longest, "a column holding only padding was not trimmed"
        for i, row in enumerate(self.rows):
            pad = width - len(row)
            assert mask[i].tolist() == [False] * pad + [True] * len(row)
            assert (tokens[i, :pad] == PAD).all()
            if row:
                np.testing.assert_array_equal(tokens[i, pad:], np.stack(row))
        assert self.buffer.padding_cells(n) == n * width - sum(len(row) for row in self.rows)


def test_admit_left_pads_to_the_longest_row() -> None:
    m = Mirror()
    m.admit(3)
    m.admit(1)
    tokens, mask = m.buffer.view(2)
    assert tokens.tolist() == [[1, 2, 3], [PAD, PAD, 4]]
    assert mask.tolist() == [[True, True, True], [False, False, True]]
    m.check()


def test_a_longer_prompt_pads_the_rows_already_there() -> None:
    m = Mirror()
    m.admit(2)
    m.admit(5)
    tokens, mask = m.buffer.view(2)
    assert tokens.tolist() == [[PAD, PAD, PAD, 1, 2], [3, 4, 5, 6, 7]]
    assert mask[0].tolist() == [False, False, False, True, True]
    m.check()


def test_append_writes_one_column_at_the_end() -> None:
    m = Mirror()
    m.admit(2)
    m.admit(1)
    m.append()
    tokens, mask = m.buffer.view(2)
    assert tokens.tolist() == [[1, 2, 4], [PAD, 3, 5]]
    assert mask.tolist() == [[True, True, True], [False, True, True]]
    m.check()


def test_columns_that_only_hold_padding_are_trimmed() -> None:
    m = Mirror()
    m.admit(6)
    m.admit(2)
    m.append()
    assert m.buffer.width == 7
    m.remove(0)
    assert m.buffer.width == 3
    tokens, mask = m.buffer.view(1)
    assert tokens.tolist() == [[7, 8, 10]]
    assert mask.all()
    m.check()


def test_a_departure_keeps_rows_dense() -> None:
    m = Mirror()
    for length in (1, 2, 3, 4):
        m.admit(length)
    m.remove(1)
    tokens, _ = m.buffer.view(3)
    real = [row[row != PAD].tolist() for row in tokens]
    assert real == [[1], [7, 8, 9, 10], [4, 5, 6]]
    m.check()


def test_everything_leaving_empties_the_window() -> None:
    m = Mirror()
    m.admit(3)
    m.remove(0)
    assert m.buffer.width == 0
    m.admit(2)
    m.check()


def test_relocation_keeps_contents() -> None:
    m = Mirror(rows=3, capacity=16)
    m.admit(2)
    m.admit(5)
    starts = set()
    for _ in range(40):
        m.append()
        starts.add(m.buffer.start)
        m.check()
    assert len(starts) > 1, "the window never moved: relocation was not exercised"
    capacity, width = m.buffer.capacity, m.buffer.width
    assert capacity & (capacity - 1) == 0, "capacity grows by doubling"
    assert width < capacity <= 4 * (width + 1)


def test_a_long_prompt_grows_the_buffer_by_doubling() -> None:
    m = Mirror(rows=2, capacity=16)
    m.admit(3)
    m.admit(100)
    assert m.buffer.capacity == 256
    m.check()


def test_a_short_window_moving_right_does_not_grow_the_buffer() -> None:
    m = Mirror(rows=2, capacity=16)
    for _ in range(200):
        m.admit(2)
        m.append()
        m.append()
        m.remove(0)
        m.check()
    assert m.buffer.capacity == 16


@pytest.mark.parametrize("token_shape", [(3,), (2, 2)], ids=["vector", "matrix"])
def test_vector_tokens(token_shape: tuple[int, ...]) -> None:
    m = Mirror(token_shape, capacity=16)
    m.admit(4)
    m.admit(1)
    for _ in range(20):
        m.append()
        m.check()
    m.remove(0)
    m.check()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(1, 12)),
        st.tuples(st.just("append"), st.just(0)),
        st.tuples(st.just("remove"), st.integers(0, 7)),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(
    ops=operations,
    token_shape=st.sampled_from([(), (3,), (2, 2)]),
    library=st.sampled_from(["numpy", "torch"]),
)
def test_buffer_matches_plain_lists(
    ops: list[tuple[str, int]], token_shape: tuple[int, ...], library: str
) -> None:
    backend = backend_of(torch.zeros(())) if library == "torch" else numpy_backend()
    m = Mirror(token_shape, rows=4, capacity=16, backend=backend)
    for op, arg in ops:
        n = len(m.rows)
        if op == "admit" and n < 4:
            m.admit(arg)
            m.check(trimmed=False)
        elif op == "append" and n:
            m.append()
            m.check(trimmed=False)
        elif op == "remove" and n:
            m.remove(arg % n)
            m.check()


@pytest.mark.parametrize("prompt_length", [16, 4096])
def test_steps_copy_a_bounded_number_of_columns_whatever_the_length(
    prompt_length: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Per-step cost independent of S: appends write one column; relocations are amortised."""
    copied: list[int] = []
    relocate = SequenceBuffer._relocate

    def counting(self: SequenceBuffer, width: int, n: int) -> None:
        copied.append(self.width)
        relocate(self, width, n)

    monkeypatch.setattr(SequenceBuffer, "_relocate", counting)
    m = Mirror(rows=2)
    m.admit(prompt_length)
    copied.clear()  # the prompt's own placement is admission, not a step
    column = m.native(m.tokens(2))
    steps = 10_000
    for _ in range(steps):
        m.buffer.append(column, 2)
    assert copied, "the buffer never relocated: the test proves nothing"
    assert sum(copied) <= 3 * steps, f"{sum(copied)} columns copied in {steps} steps"


def test_the_model_gets_views_of_the_buffer_not_copies() -> None:
    m = Mirror()
    m.admit(5)
    m.admit(2)
    tokens, mask = m.buffer.view(2)
    assert np.shares_memory(tokens, m.buffer.tokens)
    assert np.shares_memory(mask, m.buffer.mask)
