"""The paged cache's bookkeeping: blocks under a budget, named prefixes, what is given back."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from hibachi.integrations.transformers._lane_blocks import LaneBlocks
from hibachi.integrations.transformers._prefix_index import PrefixIndex


def tokens(*values: int) -> np.ndarray[Any, Any]:
    return np.array(values, dtype=np.int64)


def test_a_block_is_named_by_its_tokens_and_everything_before_it() -> None:
    index = PrefixIndex(lanes=3, block_size=2)
    index.add(0, tokens(1, 2))
    index.add(0, tokens(3, 4))
    index.add(1, tokens(9, 9))
    index.add(1, tokens(3, 4))  # the same tokens after another block: another name
    assert index.longest(tokens(1, 2, 3, 4, 5), most=2) == (2, {0})
    assert index.longest(tokens(9, 9, 3, 4), most=2) == (2, {1})
    assert index.longest(tokens(3, 4), most=1) == (0, set())
    assert index.longest(tokens(1, 2, 3, 4), most=1) == (1, {0})  # at most ``most`` blocks
    assert index.drop(0, 1) == 1 and index.longest(tokens(1, 2, 3, 4), most=2) == (1, {0})


def test_lanes_holding_the_same_prefix_are_all_found_until_they_drop_it() -> None:
    index = PrefixIndex(lanes=2, block_size=2)
    for lane in (0, 1):
        index.add(lane, tokens(5, 6))
    assert index.longest(tokens(5, 6, 7), most=1) == (1, {0, 1})
    index.drop(0, 0)
    assert index.longest(tokens(5, 6, 7), most=1) == (1, {1})
    index.drop(1, 0)
    assert index.longest(tokens(5, 6, 7), most=1) == (0, set())


class Forgotten(list[tuple[int, int, int]]):
    def __call__(self, lane: int, start: int, stop: int) -> None:
        self.append((lane, start, stop))


def blocks(count: int = 3, capacity: int = 8, caching: bool = True) -> tuple[LaneBlocks, Any]:
    forgotten = Forgotten()
    pool = LaneBlocks(
        count,
        capacity=capacity,
        block_size=4,
        columns=32,
        prefix_caching=caching,
        forget=forgotten,
    )
    return pool, forgotten


def run(pool: LaneBlocks, lane: int, sequence: np.ndarray[Any, Any]) -> None:
    """``lane``'s row is fed ``sequence`` (its blocks held, its tokens kept and named)."""
    assert pool.reserve(np.array([lane]), np.array([sequence.size]))
    assert pool.history is not None
    pool.history[lane, : sequence.size] = sequence
    pool.name(np.array([lane]), np.array([sequence.size]))


def test_a_prompt_is_admitted_only_when_its_blocks_are_free() -> None:
    pool, _ = blocks(capacity=3)
    first = pool.admit(np.arange(9))  # 3 blocks
    assert first is not None and pool.used == 3
    assert pool.admit(np.arange(4)) is None
    pool.release(first.lane)
    assert pool.admit(np.arange(4)) is not None


def test_rows_hold_blocks_as_they_grow_and_not_beyond_the_budget() -> None:
    pool, _ = blocks(capacity=4, caching=False)
    a, b = pool.admit(np.arange(4)), pool.admit(np.arange(4))
    assert a is not None and b is not None
    assert pool.reserve(np.array([a.lane, b.lane]), np.array([8, 8]))  # one block more each
    assert not pool.reserve(np.array([a.lane]), np.array([9]))  # a fifth: none is free
    assert pool.used == 4 and list(pool.held[[a.lane, b.lane]]) == [2, 2]


def test_a_left_rows_named_blocks_stay_cached_and_the_rest_is_given_back() -> None:
    pool, forgotten = blocks()
    row = pool.admit(np.arange(6))
    assert row is not None
    run(pool, row.lane, np.arange(10, 20))  # 10 tokens: two named blocks, 3 held
    pool.release(row.lane)
    assert (pool.used, pool.cached) == (0, 2)
    assert forgotten[-1] == (row.lane, 8, 32)  # from the first block not named, to its end


def test_a_cached_prefix_is_reused_in_place_by_a_row_that_takes_its_lane() -> None:
    pool, _ = blocks()
    row = pool.admit(np.arange(3))
    assert row is not None
    run(pool, row.lane, np.arange(10, 22))
    pool.release(row.lane)
    again = pool.admit(np.concatenate([np.arange(10, 18), np.array([99, 98])]))
    assert again is not None
    assert (again.lane, again.held, again.source) == (row.lane, 8, None)
    assert (pool.cached, pool.hits) == (0, 8)


def test_a_prefix_held_by_a_running_row_is_copied_into_another_lane() -> None:
    pool, _ = blocks()
    row = pool.admit(np.arange(3))
    assert row is not None
    run(pool, row.lane, np.arange(10, 22))
    prompt = np.arange(10, 23)
    copy = pool.admit(prompt)
    assert copy is not None and copy.source == row.lane and copy.held == 12
    assert copy.lane != row.lane
    pool.copied(copy, prompt)
    assert pool.index is not None
    assert pool.index.longest(prompt, 3) == (3, {row.lane, copy.lane})


def test_the_last_prompt_token_is_never_taken_from_the_cache() -> None:
    pool, _ = blocks()
    row = pool.admit(np.arange(3))
    assert row is not None
    run(pool, row.lane, np.arange(10, 18))
    pool.release(row.lane)
    again = pool.admit(np.arange(10, 18))  # exactly the two cached blocks
    assert again is not None and again.held == 4  # the second block holds the last token


def test_cached_blocks_are_given_back_least_recently_used_first_tail_first() -> None:
    pool, forgotten = blocks(count=3, capacity=6)
    for lane_tokens in (np.arange(10, 18), np.arange(30, 38)):
        row = pool.admit(np.arange(2))
        assert row is not None
        run(pool, row.lane, lane_tokens)
        pool.release(row.lane)
    assert pool.cached == 4
    row = pool.admit(np.arange(12))  # 3 blocks, in the lane that caches nothing
    assert row is not None and row.lane == 2
    pool.settle()  # one cached block must go
    assert pool.cached == 3 and pool.used == 3
    assert pool.index is not None
    assert pool.index.longest(np.arange(10, 18), 2)[0] == 1  # the older prefix lost its tail
    assert pool.index.longest(np.arange(30, 38), 2)[0] == 2
    assert forgotten[-1][1:] == (4, 32)
