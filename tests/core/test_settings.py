"""The checks every batcher's settings go through, and the old names of renamed settings."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

import hibachi
from hibachi._core.settings import UNSET, check_count, check_flag, renamed


@pytest.mark.parametrize("value", [1, 7, np.int64(3), np.uint8(2)], ids=repr)
def test_a_count_is_any_integer_from_one(value: Any) -> None:
    assert check_count(value, "n") == int(value)
    assert type(check_count(value, "n")) is int


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(0, "n must be at least 1, got 0", id="zero"),
        pytest.param(-3, "n must be at least 1, got -3", id="negative"),
        pytest.param(True, "n must be an int, got bool True", id="bool"),
        pytest.param(2.0, "n must be an int, got float 2.0", id="float"),
        pytest.param("4", "n must be an int, got str '4'", id="str"),
        pytest.param(2**63, f"n must be at most {2**63 - 1}", id="too-large"),
    ],
)
def test_a_count_that_is_not_one_is_refused_naming_the_value(value: Any, message: str) -> None:
    with pytest.raises(hibachi.ConfigurationError, match=message):
        check_count(value, "n")


def test_a_count_is_refused_with_the_error_asked_for() -> None:
    with pytest.raises(hibachi.InvalidRequest):
        check_count(0, "max_new_tokens", error=hibachi.InvalidRequest)
    assert check_count(2**70, "max_queue_size", most=None) == 2**70


@pytest.mark.parametrize("value", [1, 0, "yes", None, np.bool_(True)], ids=repr)
def test_a_flag_is_a_bool_and_nothing_merely_truthy(value: Any) -> None:
    with pytest.raises(
        hibachi.ConfigurationError, match=f"flag must be True or False, got {value!r}"
    ):
        check_flag(value, "flag")
    assert check_flag(True, "flag") is True and check_flag(False, "flag") is False


def test_a_renamed_setting_given_under_its_new_name_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed("f", "old", "new", UNSET, 5, 1) == 5


def test_a_renamed_setting_given_under_its_old_name_warns_and_is_taken() -> None:
    with pytest.warns(DeprecationWarning, match=r"f\(old=…\) is deprecated .* use new="):
        assert renamed("f", "old", "new", 5, 1, 1) == 5


def test_a_renamed_setting_given_under_both_names_is_refused() -> None:
    with pytest.raises(TypeError, match="f\\(\\) got new= and its old name old="):
        renamed("f", "old", "new", 5, 6, 1)
