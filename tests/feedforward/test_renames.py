"""One name per idea on the feedforward side: ``stack_ahead`` (was ``overlap``), strict
yes/no settings, counts as the autoregressive batcher takes them, and a `ResultHandle`
that shows its caller only what a caller uses."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import hibachi
from hibachi._feedforward import core as core_module

PUBLIC = {"result", "done", "cancel"}
DEPRECATED = {"arm", "abandon", "deliver", "departed", "expired"}


def identity(batch: Any) -> Any:
    return batch


def test_overlap_is_the_old_name_of_stack_ahead() -> None:
    with pytest.warns(
        DeprecationWarning, match=r"\(overlap=…\) is deprecated .* use stack_ahead="
    ) as seen:
        batcher = hibachi.FeedforwardBatcher(identity, overlap=True)
    assert seen[0].filename == __file__
    assert batcher._core.stack_ahead_min == core_module.STACK_AHEAD_MIN


@pytest.mark.parametrize("setting", ["trim_output", "copy_results"])
@pytest.mark.parametrize("value", [1, "yes", np.bool_(True), None], ids=repr)
def test_yes_no_settings_take_a_bool_and_nothing_merely_truthy(setting: str, value: Any) -> None:
    with pytest.raises(hibachi.ConfigurationError, match=f"{setting} must be True or False, got"):
        hibachi.FeedforwardBatcher(identity, pad_value=0, **{setting: value})


def test_counts_take_any_integer_as_the_autoregressive_batcher_does() -> None:
    batcher = hibachi.FeedforwardBatcher(
        identity, max_batch_size=np.int64(4), max_queue_size=np.int32(9)
    )
    assert batcher.max_batch_size == 4 and type(batcher.max_batch_size) is int
    with pytest.raises(
        hibachi.ConfigurationError, match="max_batch_size must be at least 1, got 0"
    ):
        hibachi.FeedforwardBatcher(identity, max_batch_size=0)


def test_a_result_handle_shows_only_what_a_caller_uses() -> None:
    public = {name for name in dir(hibachi.ResultHandle) if not name.startswith("_")}
    assert public - DEPRECATED == PUBLIC


def test_the_engine_s_old_names_on_a_handle_warn() -> None:
    with hibachi.FeedforwardBatcher(identity) as batcher:
        handle = batcher.run(np.ones(2))
        result = handle.result(5)
        with pytest.warns(DeprecationWarning, match="ResultHandle.departed is deprecated"):
            assert handle.departed is False
        with pytest.warns(DeprecationWarning, match="ResultHandle.expired is deprecated"):
            assert handle.expired is False
        for name, argument in (("arm", 1.0), ("abandon", RuntimeError()), ("deliver", result)):
            with pytest.warns(DeprecationWarning, match=f"ResultHandle.{name}\\(\\) is deprecated"):
                getattr(handle, name)(argument)
        assert handle.done() and handle.result(5) is result
