"""The host side of storage arrays, for the autoregressive engine's per-step work.

The engine reads each step's tokens and writes its small buffers (the last
token of each row) once per step, between two forward passes. Each distinct
operation then costs tens of µs (its code is out of the caches), a tensor
library's operation most of all, so the engine reads the tokens once, as
Python values (``host_values``), and writes its buffers through NumPy views
(``host_view``) where storage lives on the host in a dtype NumPy has. A backend
offers either through an optional method of the same name (see `Backend`);
without them the engine keeps to the backend's required methods.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._protocol import Backend

__all__ = ["host_values", "host_view"]


def host_view(backend: Backend, x: Any) -> np.ndarray[Any, Any] | None:
    """A NumPy array sharing storage ``x``'s memory; None where there is none."""
    method = getattr(backend, "host_view", None)
    if method is None:
        return None
    view: np.ndarray[Any, Any] | None = method(x)
    return view


def host_values(backend: Backend, x: Any) -> list[Any] | None:
    """Storage ``x``'s values as (nested) Python lists, ``x.tolist()``; None where the
    backend has no such method."""
    method = getattr(backend, "host_values", None)
    if method is None:
        return None
    values: list[Any] = method(x)
    return values
