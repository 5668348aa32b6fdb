"""A caller's value, written into an error message without failing on the way.

A message must never raise in place of the error it explains: an int too long to
convert to text (`sys.get_int_max_str_digits`), an object whose ``__repr__``
raises or returns a megabyte are all described, briefly.
"""

from __future__ import annotations

import numbers

__all__ = ["as_int", "describe_int", "describe_value"]

_LONGEST = 80


def as_int(value: object) -> int | None:
    """``value`` as a plain int if it is an integer (a NumPy one too, not a bool); else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def describe_int(value: int) -> str:
    """``value`` in full unless it is too long to print (or to convert)."""
    if abs(value) < 10**30:
        return str(value)
    return f"{'-' if value < 0 else ''}an int of {value.bit_length()} bits"


def describe_value(value: object) -> str:
    """``repr(value)``, shortened; ints by `describe_int`; never raises."""
    if isinstance(value, int) and not isinstance(value, bool):
        return describe_int(value)
    try:
        text = repr(value)
    except Exception:
        return f"a {type(value).__name__} object"
    if not isinstance(text, str):
        return f"a {type(value).__name__} object"
    return text if len(text) <= _LONGEST else f"{text[: _LONGEST - 1]}…"
