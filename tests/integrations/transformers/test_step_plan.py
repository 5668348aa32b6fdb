"""The transformers adapter's step plans: rows in lane order, positions, kept layouts."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from hibachi.integrations.transformers._step_plan import StepPlanner  # noqa: E402


def planner_with(rows: list[int], lengths: list[int]) -> StepPlanner:
    """Slots ``rows`` in lanes 0, 1, …; the scratch lane is 4."""
    planner = StepPlanner(4, max_length=16, device=torch.device("cpu"), scratch=4)
    for lane, slot in enumerate(rows):
        planner.rows.add(slot, lane)
    planner.lengths[: len(lengths)] = lengths
    return planner


def test_a_decode_step_places_each_row_at_its_own_length_in_lane_order() -> None:
    planner = planner_with([2, 0, 1], [5, 9, 3])  # slots 2, 0, 1 in lanes 0, 1, 2
    layout = planner.layout(np.array([0, 1, 2]))
    positions, plan = planner.decode(layout)
    assert layout.slots.tolist() == [2, 0, 1]  # sorted by lane
    assert layout.order is not None and layout.order.tolist() == [2, 0, 1]
    assert positions[:, 0].tolist() == [3, 5, 9]
    assert plan.write_columns[:, 0].tolist() == [3, 5, 9]
    assert plan.write_rows[:, 0].tolist() == [0, 1, 2]
    assert plan.read == slice(0, 3)
    assert plan.kv_length == 10


def test_the_same_rows_keep_their_layout_until_a_row_comes_or_goes() -> None:
    planner = planner_with([0, 1], [4, 4])
    slots = np.array([0, 1])
    first = planner.layout(slots)
    planner.advance(first, None)
    assert planner.layout(np.array([0, 1])) is first
    assert planner.lengths[:2].tolist() == [5, 5]
    planner.rows.add(2, 2)
    assert planner.layout(np.array([0, 1])) is not first


def test_a_kept_layout_does_not_follow_the_callers_array() -> None:
    planner = planner_with([0, 1], [4, 7])
    slots = np.array([0, 1])
    layout = planner.layout(slots)
    slots[:] = [1, 1]  # the engine reuses its arrays
    planner.advance(layout, None)
    assert planner.lengths[:2].tolist() == [5, 8]


def test_the_next_decode_step_sees_the_advanced_lengths() -> None:
    planner = planner_with([0, 1], [2, 6])
    layout = planner.layout(np.array([0, 1]))
    positions, _ = planner.decode(layout)
    assert positions[:, 0].tolist() == [2, 6]
    planner.advance(layout, None)
    positions, plan = planner.decode(layout)
    assert positions[:, 0].tolist() == [3, 7] and plan.kv_length == 8


def test_lanes_that_are_not_a_run_read_through_an_index_or_their_span() -> None:
    planner = planner_with([0, 1, 2], [1, 1, 1])
    layout = planner.layout(np.array([0, 2]))
    assert layout.gaps and layout.lanes.tolist() == [0, 2]
    _, plan = planner.decode(layout)
    assert isinstance(plan.read, torch.Tensor) and plan.read.tolist() == [0, 2]
    _, plan = planner.decode(layout, spans=True)
    assert plan.read == slice(0, 3)


def test_a_prefill_step_writes_padding_to_the_scratch_lane() -> None:
    planner = planner_with([0, 1], [0, 3])
    layout = planner.layout(np.array([0, 1]))
    positions, plan = planner.prefill(layout, np.array([3, 1]), width=3)
    assert positions.tolist() == [[0, 1, 2], [1, 2, 3]]
    assert plan.write_rows.tolist() == [[0, 0, 0], [4, 4, 1]]
    assert plan.write_columns.tolist() == [[0, 1, 2], [0, 1, 3]]
    assert plan.kv_length == 4


def test_a_row_without_a_lane_is_found_missing() -> None:
    planner = planner_with([0], [2])
    assert planner.missing(np.array([0, 3])) == [1]
