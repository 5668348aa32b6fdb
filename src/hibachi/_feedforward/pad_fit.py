"""Whether a ``pad_value`` fits the dtype of the leaf it pads.

A pad value fits when the leaf's dtype holds it unchanged: an integer in
range for an integer dtype (``-1`` does not fit ``uint8``, ``300`` not
``int8``, ``0.5`` and NaN fit no integer dtype), 0 or 1 for booleans, any
real number within range for a floating dtype (NaN and infinities included),
any number for a complex one. A dtype hibachi cannot inspect is not checked.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._core.values import describe_value
from .._exceptions import InvalidRequest

__all__ = ["check_pad_fits"]


def check_pad_fits(pad: Any, dtype: Any) -> None:
    """`InvalidRequest` unless ``pad`` (a scalar) is stored unchanged in ``dtype``."""
    value = pad.item() if hasattr(pad, "item") else pad
    limits = _limits(dtype)
    if limits is None or _fits(value, *limits):
        return
    raise InvalidRequest(f"pad_value {describe_value(pad)} does not fit the input's dtype {dtype}")


Limits = tuple[str, float, float]


def _fits(value: Any, kind: str, low: float, high: float) -> bool:
    if isinstance(value, complex):
        return kind == "complex" or (value.imag == 0 and _fits(value.real, kind, low, high))
    if not isinstance(value, int | float):
        return False
    if kind == "complex":
        return True
    if kind == "float":
        if isinstance(value, float) and not math.isfinite(value):
            return True  # NaN and the infinities are floats of every width
        return low <= value <= high
    if isinstance(value, float) and not value.is_integer():
        return False  # NaN, infinities and fractions fit no integer dtype
    return low <= value <= high


def _limits(dtype: Any) -> Limits | None:
    """The kind of ``dtype`` and the range of values it holds; None if unknown."""
    if type(dtype).__module__ == "torch":
        return _torch_limits(dtype)
    try:
        found = np.dtype(dtype)
    except TypeError:
        return None
    if found.kind == "b":
        return "int", 0, 1
    if found.kind in "iu":
        info = np.iinfo(found)
        return "int", int(info.min), int(info.max)
    if found.kind == "f":
        high = float(np.finfo(found).max)
        return "float", -high, high
    if found.kind == "c":
        return "complex", -math.inf, math.inf
    return None


def _torch_limits(dtype: Any) -> Limits | None:
    import torch

    if dtype is torch.bool:
        return "int", 0, 1
    if dtype.is_complex:
        return "complex", -math.inf, math.inf
    if dtype.is_floating_point:
        high = float(torch.finfo(dtype).max)
        return "float", -high, high
    try:
        info = torch.iinfo(dtype)
    except TypeError:
        return None
    return "int", int(info.min), int(info.max)
