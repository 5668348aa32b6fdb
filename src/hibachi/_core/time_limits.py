"""Time limits shared by both batchers: the checks made on a caller's ``timeout``.

Infinity means no limit. So does any number of seconds at or beyond
`threading.TIMEOUT_MAX` (about 292 years on 64-bit Linux): the platform cannot
wait that long, and no caller can tell the difference. A caller never sees a
bare `OverflowError`, whatever number it passes.
"""

from __future__ import annotations

import math
import threading

from .._exceptions import InvalidRequest
from .values import describe_value

__all__ = ["check_timeout", "check_wait"]


def check_timeout(timeout: object) -> float | None:
    """A request's ``timeout``: None (no limit) or a positive number of seconds, else
    InvalidRequest. Infinite or huge values mean no limit."""
    if timeout is None:
        return None
    if not _is_number(timeout) or not timeout > 0:  # type: ignore[operator]
        raise InvalidRequest(
            f"timeout must be a positive number of seconds, got {describe_value(timeout)}"
        )
    return _bounded(timeout)  # type: ignore[arg-type]


def check_wait(timeout: object) -> float | None:
    """How long a caller waits for a result (``result(timeout=...)``): None for ever.

    Zero or negative: do not wait, only look (as `concurrent.futures` does);
    infinite or huge: wait for ever; NaN or not a number: InvalidRequest.
    """
    if timeout is None:
        return None
    if not _is_number(timeout) or (isinstance(timeout, float) and math.isnan(timeout)):
        raise InvalidRequest(
            f"timeout must be a number of seconds or None, got {describe_value(timeout)}"
        )
    if timeout <= 0:  # type: ignore[operator]
        return 0.0
    return _bounded(timeout)  # type: ignore[arg-type]


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bounded(seconds: float) -> float | None:
    """``seconds`` (positive) as a float, or None where it is beyond what can be waited."""
    if seconds >= threading.TIMEOUT_MAX:
        return None
    return float(seconds)
