"""What a padded batch costs, learned online from the batches that ran.

The model is ``seconds ≈ fixed + per_cell · cells``, where ``cells`` is the
batch's items times its padded length: a model call has a price of its own
(Python, kernel launches, weights read once), and then a price per padded
position it computes on. Both are refitted after every batch by least squares
over the last ``window`` batches, then once more without the batches that the
first fit explains worst (a garbage collection, another process taking the
core): one slow batch does not teach the batcher that batches are slow.

A batch's cost is only recorded when it ends (`observe` is O(1)); the fit
runs when something reads the terms, that is when a choice needs them. A
batcher whose batches leave no choice (one length waiting, a lone caller)
never refits, and no refit delays the delivery of a batch's results.

Before it has seen enough batches of different sizes to tell the two apart,
the model assumes a call costs as much as ``prior_cells`` cells. Only the
ratio of the two terms decides which batch is best, so that guess is the only
thing it needs before it has learnt.
"""

from __future__ import annotations

import statistics
from collections import deque

__all__ = ["CostModel"]

_MIN_POINTS = 4  # batches seen before the fit replaces the prior
_MIN_SPREAD = 1.25  # the largest batch seen must have this many times the cells of the smallest
_OUTLIER = 3.0  # residuals beyond this many robust standard deviations are left out
_ROUNDS = 4  # refits without outliers, at most
_TINY = 1e-12


class CostModel:
    """Seconds a padded batch of one kind of input costs, as ``fixed + per_cell · cells``."""

    __slots__ = ("_fitted", "_fixed", "_per_cell", "_points", "_stale")

    def __init__(self, *, window: int = 64, prior_cells: float = 64.0) -> None:
        self._points: deque[tuple[float, float]] = deque(maxlen=window)
        self._fixed = prior_cells  # in units of one cell until fitted
        self._per_cell = 1.0
        self._fitted = False
        self._stale = False  # batches were observed since the last fit

    @property
    def fixed(self) -> float:
        """A call's own price (seconds once fitted)."""
        self._refresh()
        return self._fixed

    @fixed.setter
    def fixed(self, value: float) -> None:
        self._fixed = value

    @property
    def per_cell(self) -> float:
        """The price of one padded cell (seconds once fitted)."""
        self._refresh()
        return self._per_cell

    @per_cell.setter
    def per_cell(self, value: float) -> None:
        self._per_cell = value

    @property
    def fitted(self) -> bool:
        """Whether the terms come from batches seen rather than the prior."""
        self._refresh()
        return self._fitted

    @fitted.setter
    def fitted(self, value: bool) -> None:
        self._fitted = value

    @property
    def fitted_fixed(self) -> float | None:
        """``fixed`` as of the last fit, without refitting; None before any fit."""
        return self._fixed if self._fitted else None

    @property
    def stale(self) -> bool:
        """Batches were observed that the terms do not account for yet."""
        return self._stale

    def predict(self, items: int, length: int) -> float:
        """The cost of ``items`` items padded to ``length``."""
        return self.fixed + self.per_cell * items * length

    def observe(self, items: int, length: int, seconds: float) -> None:
        """A batch of ``items`` padded to ``length`` took ``seconds``; the next read refits."""
        self._points.append((float(items * length), max(seconds, 0.0)))
        self._stale = True

    def _refresh(self) -> None:
        if not self._stale:
            return
        self._stale = False
        cells = [x for x, _ in self._points]
        if len(cells) >= _MIN_POINTS and max(cells) >= _MIN_SPREAD * min(cells):
            self._fixed, self._per_cell = _robust_fit(list(self._points))
            self._fitted = True


def _robust_fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """``(fixed, per_cell)``: least squares, refitted without the points it explains worst.

    A point is left out when its residual exceeds `_OUTLIER` robust standard
    deviations (from the median absolute residual); repeated until the points
    kept stop changing, a few times at most.
    """
    kept = points
    fixed, per_cell = _fit(kept)
    for _ in range(_ROUNDS):
        residuals = [abs(t - fixed - per_cell * x) for x, t in points]
        limit = _OUTLIER * 1.4826 * statistics.median(residuals)
        trimmed = [p for p, r in zip(points, residuals, strict=True) if r <= limit]
        if limit <= 0 or len(trimmed) < _MIN_POINTS or len(trimmed) == len(kept):
            break
        kept = trimmed
        fixed, per_cell = _fit(kept)
    return fixed, per_cell


def _fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares with both terms kept >= 0 (and not both 0)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_t = sum(t for _, t in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    sxt = sum((x - mean_x) * (t - mean_t) for x, t in points)
    per_cell = sxt / sxx if sxx > 0 else 0.0
    fixed = mean_t - per_cell * mean_x
    if fixed < 0:  # through the origin instead
        fixed = 0.0
        per_cell = sum(x * t for x, t in points) / max(sum(x * x for x, _ in points), _TINY)
    if per_cell < 0:  # the cells do not matter: a constant
        fixed, per_cell = mean_t, 0.0
    return max(fixed, _TINY), max(per_cell, 0.0)
