"""Time limits shared by both batchers: the checks made on a caller's ``timeout``."""

from __future__ import annotations

from .._exceptions import InvalidRequest

__all__ = ["check_timeout"]


def check_timeout(timeout: object) -> float | None:
    """None or a positive number of seconds, or InvalidRequest."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise InvalidRequest(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
