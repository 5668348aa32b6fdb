"""Checks of a batcher's settings, and the old names of settings that were renamed.

A setting that is a count is an int (a NumPy integer too, never a bool) in
1 … its limit; a yes/no setting is a bool, nothing merely truthy. Either is
refused with the error the caller names, which says the setting and the value.

A renamed setting keeps its old name for one release: `renamed` takes the
value given under either name and warns (`DeprecationWarning`) on the old one.
"""

from __future__ import annotations

import warnings
from typing import Any, Final

from .._exceptions import ConfigurationError, HibachiError
from .values import as_int, describe_int, describe_value

__all__ = ["MAX_COUNT", "UNSET", "check_count", "check_flag", "renamed", "warn_renamed"]

MAX_COUNT: Final = 2**63 - 1
"""The largest count the engines' int64 bookkeeping holds (budgets, lengths, cells)."""


class _Unset:
    """The default of a keyword kept under its old name: "not given"."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Final[Any] = _Unset()


def check_count(
    value: object,
    name: str,
    *,
    most: int | None = MAX_COUNT,
    error: type[HibachiError] = ConfigurationError,
) -> int:
    """``value`` as an int in 1 … ``most`` (None: no upper limit), or ``error``."""
    count = as_int(value)  # a NumPy or other integer becomes a plain int; bools do not
    if count is None:
        kind = type(value).__name__
        raise error(f"{name} must be an int, got {kind} {describe_value(value)}")
    if count < 1:
        raise error(f"{name} must be at least 1, got {describe_int(count)}")
    if most is not None and count > most:
        raise error(f"{name} must be at most {most}, got {describe_int(count)}")
    return count


def check_flag(value: object, name: str) -> bool:
    """``value`` if it is a bool; `ConfigurationError` naming it otherwise."""
    if not isinstance(value, bool):
        raise ConfigurationError(f"{name} must be True or False, got {describe_value(value)}")
    return value


def renamed(owner: str, old: str, new: str, old_value: Any, new_value: Any, default: Any) -> Any:
    """The value of setting ``new``, given as ``new_value`` or, under its old name
    ``old``, as ``old_value`` (`UNSET` when not given), which warns.

    ``default`` is ``new``'s default: given both names, with ``new_value`` not
    its default, the call is refused with `TypeError`, as Python refuses a
    keyword given twice.
    """
    if old_value is UNSET:
        return new_value
    if not _is_default(new_value, default):
        raise TypeError(f"{owner}() got {new}= and its old name {old}=: give {new}= only")
    warn_renamed(f"{owner}({old}=…)", f"{new}=", stacklevel=4)
    return old_value


def warn_renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` is deprecated in favour of ``new`` (from the caller's caller's line)."""
    warnings.warn(
        f"{old} is deprecated and will be removed in a future release: use {new}",
        DeprecationWarning,
        stacklevel=stacklevel,
    )


def _is_default(value: Any, default: Any) -> bool:
    return value is default or (type(value) is type(default) and bool(value == default))
