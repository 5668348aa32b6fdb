"""Yes/no arguments (``cancel``, ``trim_output`` …): read by their truth, as Python
does, but an object whose truth cannot be read is refused with a HibachiError."""

from __future__ import annotations

from .._exceptions import HibachiError

__all__ = ["as_flag"]


def as_flag(value: object, name: str, error: type[HibachiError]) -> bool:
    """``bool(value)``, or ``error`` if ``value`` has no truth value."""
    if isinstance(value, bool):
        return value
    try:
        return bool(value)
    except Exception as exc:
        kind = type(value).__name__
        raise error(f"{name} must be True or False, got a {kind} with no truth value") from exc
