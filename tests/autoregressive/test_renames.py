"""One name per idea: the settings and counters that were renamed, and their old names,
which keep working for one release behind a `DeprecationWarning` naming the new one."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import hibachi
from support.incremental_models import HistoryModel

STOP, PAD = np.int64(99), np.int64(0)


def next_int(tokens: Any, mask: Any) -> Any:
    return tokens[:, -1] + 1


@pytest.mark.parametrize(
    ("old", "new", "value"),
    [
        pytest.param("padding_token", "pad_value", np.int64(7), id="padding_token"),
        pytest.param("prefill_chunk", "max_batch_tokens", 64, id="prefill_chunk"),
        pytest.param("overlap", "delivery_thread", True, id="overlap"),
    ],
)
def test_an_old_keyword_warns_from_the_caller_s_line_and_is_taken(
    old: str, new: str, value: Any
) -> None:
    settings: dict[str, Any] = {"stop_token": STOP, "pad_value": PAD, old: value}
    if old == "padding_token":
        del settings["pad_value"]
    with pytest.warns(
        DeprecationWarning, match=rf"\({old}=…\) is deprecated .* use {new}="
    ) as seen:
        batcher = hibachi.AutoregressiveBatcher(HistoryModel(2), **settings)
    assert seen[0].filename == __file__
    taken = getattr(batcher._settings, new)
    assert bool(np.all(taken == value))


def test_a_setting_under_both_its_names_is_refused() -> None:
    with pytest.raises(TypeError, match="got max_batch_tokens= and its old name prefill_chunk="):
        hibachi.AutoregressiveBatcher(
            HistoryModel(2), stop_token=STOP, pad_value=PAD, max_batch_tokens=8, prefill_chunk=8
        )


def test_pad_value_is_required() -> None:
    with pytest.raises(TypeError, match="missing 1 required keyword-only argument: 'pad_value'"):
        hibachi.AutoregressiveBatcher(next_int, stop_token=STOP)


def test_an_unknown_keyword_is_python_s_type_error() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'pad_token'"):
        hibachi.AutoregressiveBatcher(next_int, stop_token=STOP, pad_token=PAD)  # type: ignore[call-arg]


def test_both_batchers_bound_their_queue_alike_by_default() -> None:
    def default(cls: type) -> Any:
        return inspect.signature(cls).parameters["max_queue_size"].default

    assert default(hibachi.AutoregressiveBatcher) == default(hibachi.FeedforwardBatcher) == 65536


def test_the_stats_name_their_counters_as_the_feedforward_stats_do() -> None:
    with hibachi.AutoregressiveBatcher(next_int, stop_token=STOP, pad_value=PAD) as batcher:
        assert list(batcher.run(np.array([97]))) == [98, 99]
        stats = batcher.stats()
    shared = {"requests_completed", "requests_in_flight", "requests_submitted", "queue_depth"}
    assert shared <= set(vars(stats)) & set(hibachi.FeedforwardStats.__dataclass_fields__)
    assert (stats.requests_completed, stats.requests_in_flight) == (1, 0)
    with pytest.warns(
        DeprecationWarning, match="requests_finished is deprecated .* use requests_completed"
    ):
        assert stats.requests_finished == 1
    with pytest.warns(
        DeprecationWarning, match="active_rows is deprecated .* use requests_in_flight"
    ):
        assert stats.active_rows == 0


def test_a_stream_says_it_is_done_as_a_result_handle_does() -> None:
    with hibachi.AutoregressiveBatcher(next_int, stop_token=STOP, pad_value=PAD) as batcher:
        stream = batcher.run(np.array([97]))
        assert not stream.done()
        assert list(stream) == [98, 99]
        assert stream.done()
        with pytest.warns(
            DeprecationWarning, match="TokenStream.finished is deprecated .* use done"
        ):
            assert stream.finished
