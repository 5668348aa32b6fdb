"""Least squares with non-negative coefficients, for a handful of terms.

`non_negative_fit` is exact: the best non-negative fit is the unconstrained
fit of some subset of the terms with the others held at 0, so it solves the
normal equations of every subset (at most 2³ - 1 of them for the cost model's
three terms), keeps those whose coefficients are all >= 0 and returns the one
with the least squared error. A subset whose terms cannot be told apart on the
rows given (a singular system) is skipped. Columns are scaled to a largest
value of 1 first, so that a term in the millions (cells times length) and one
of 1 (a call) are solved together without losing precision.
"""

from __future__ import annotations

import itertools

import numpy as np
import numpy.typing as npt

__all__ = ["Floats", "non_negative_fit"]

Floats = npt.NDArray[np.float64]

_SINGULAR = 1e-9  # a pivot this small, relative to the largest diagonal entry, is 0


def non_negative_fit(rows: Floats, targets: Floats) -> list[float]:
    """The coefficients ``c >= 0`` minimising ``Σ (row · c - target)²`` over the rows of
    the 2-D ``rows``; all 0 if none helps."""
    scale = np.abs(rows).max(axis=0)
    scale[scale == 0] = 1.0
    scaled = rows / scale
    gram: list[list[float]] = (scaled.T @ scaled).tolist()
    moment: list[float] = (scaled.T @ targets).tolist()
    k = len(moment)
    best, best_error = [0.0] * k, 0.0  # the error beyond Σ target², which is common to all
    for size in range(k, 0, -1):
        for free in itertools.combinations(range(k), size):
            found = _solve([[gram[i][j] for j in free] for i in free], [moment[i] for i in free])
            if found is None or min(found) < 0:
                continue
            error = -sum(c * moment[i] for c, i in zip(found, free, strict=True))
            if error < best_error:  # for the least-squares solution, c·G·c = c·moment
                best, best_error = [0.0] * k, error
                for c, i in zip(found, free, strict=True):
                    best[i] = c
        if size == k and best_error < 0:
            break  # the unconstrained fit is non-negative: it is the best
    return [c / s for c, s in zip(best, scale.tolist(), strict=True)]


def _solve(matrix: list[list[float]], vector: list[float]) -> list[float] | None:
    """``matrix⁻¹ · vector`` by Gaussian elimination with partial pivoting; None if singular."""
    n = len(vector)
    a = [[*row, v] for row, v in zip(matrix, vector, strict=True)]
    limit = _SINGULAR * max(abs(a[i][i]) for i in range(n))
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(a[r][col]))
        if abs(a[pivot][col]) <= limit:
            return None
        a[col], a[pivot] = a[pivot], a[col]
        for r in range(col + 1, n):
            factor = a[r][col] / a[col][col]
            for c in range(col, n + 1):
                a[r][c] -= factor * a[col][c]
    found = [0.0] * n
    for r in range(n - 1, -1, -1):
        found[r] = (a[r][n] - sum(a[r][c] * found[c] for c in range(r + 1, n))) / a[r][r]
    return found
