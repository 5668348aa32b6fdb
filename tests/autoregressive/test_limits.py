"""Numbers out of range are refused at the door, never met inside the engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import hibachi

pytestmark = pytest.mark.usefixtures("no_leaked_engines")

HUGE = [2**63, 2**64 + 5, 10**400, 10**5000]


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


def batcher(**options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        next_int, stop_token=np.int64(-1), pad_value=np.int64(0), **options
    )


def first_tokens(stream: hibachi.TokenStream, count: int) -> list[int]:
    loop = iter(stream)
    tokens = [int(next(loop)) for _ in range(count)]
    stream.cancel()
    return tokens


@pytest.mark.parametrize("value", HUGE, ids=lambda v: f"{v.bit_length()}-bits")
def test_a_budget_the_engine_cannot_hold_is_refused_at_run(value: int) -> None:
    with batcher(max_batch_size=2) as b:
        with pytest.raises(hibachi.InvalidRequest, match="max_new_tokens must be at most"):
            b.run(np.array([1]), max_new_tokens=value)
        assert [int(t) for t in b.run(np.array([1]), max_new_tokens=2)] == [2, 3]


def test_the_largest_budget_is_served() -> None:
    with batcher(max_batch_size=2) as b:
        assert first_tokens(b.run(np.array([1]), max_new_tokens=2**63 - 1), 3) == [2, 3, 4]
        assert b.health().ok()


@pytest.mark.parametrize(
    "setting", ["max_new_tokens", "max_batch_size", "max_batch_tokens", "max_prompt_length"]
)
@pytest.mark.parametrize("value", HUGE, ids=lambda v: f"{v.bit_length()}-bits")
def test_a_setting_too_large_is_refused_at_construction(setting: str, value: int) -> None:
    with pytest.raises(hibachi.ConfigurationError, match=f"{setting} must be at most"):
        batcher(**{setting: value})


def test_max_batch_size_has_a_ceiling_the_buffers_can_hold() -> None:
    with pytest.raises(hibachi.ConfigurationError, match="max_batch_size must be at most 65536"):
        batcher(max_batch_size=10**9)


@pytest.mark.parametrize("value", HUGE, ids=lambda v: f"{v.bit_length()}-bits")
def test_a_huge_max_queue_size_means_no_practical_bound(value: int) -> None:
    with batcher(max_batch_size=1, max_queue_size=value) as b:
        streams = [b.run(np.array([i]), max_new_tokens=2) for i in range(1, 20)]
        assert [[int(t) for t in s] for s in streams] == [[i + 1, i + 2] for i in range(1, 20)]


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 2**63])
def test_an_infinite_or_huge_timeout_means_no_limit(timeout: float) -> None:
    with batcher(max_batch_size=2) as b:
        assert [int(t) for t in b.run(np.array([1]), max_new_tokens=3, timeout=timeout)] == [
            2,
            3,
            4,
        ]
        assert first_tokens(b.run(np.array([5]), timeout=timeout), 4) == [6, 7, 8, 9]
        assert b.health().ok()


def test_max_prompt_length_refuses_longer_prompts_only() -> None:
    with batcher(max_batch_size=2, max_prompt_length=4) as b:
        with pytest.raises(hibachi.InvalidRequest, match="5 tokens, more than max_prompt_length=4"):
            b.run(np.arange(1, 6))
        assert [int(t) for t in b.run(np.arange(1, 5), max_new_tokens=1)] == [5]


@pytest.mark.parametrize("budget", [np.int64(3), np.uint8(3), np.int32(3)])
def test_numpy_integer_budgets_are_ints(budget: Any) -> None:
    """A budget read from a NumPy array is an int like any other (as Sampling's are)."""
    with batcher() as numbers:
        assert [int(t) for t in numbers.run(np.array([1]), max_new_tokens=budget)] == [2, 3, 4]
