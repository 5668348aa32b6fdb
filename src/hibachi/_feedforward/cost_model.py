"""What a padded batch costs, learned online from the batches that ran.

The model is ``seconds ≈ fixed + per_cell · cells + per_cell_length · cells ·
length``, where ``cells`` is the batch's items times its padded length: a
model call has a price of its own (Python, kernel launches, weights read
once), a price per padded position it computes on, and, where positions attend
to each other, a price per position per position of its row (a transformer's
attention grows like ``items · length²``). The terms are refitted by
non-negative least squares (`least_squares`) over the last ``window``
batches, then again without the batches that the fit explains worst (a
garbage collection, another process taking the core): one slow batch does
not teach the batcher that batches are slow. The errors squared are relative
to what a batch should cost: the choice compares batches by their rates, so a
small batch's price matters as much as a large one's, and in seconds the large
batches' noise decides a call's price alone (a fit in seconds priced a MiniLM
call at 0; docs/benchmarks.md).

A batch's cost is only recorded when it ends (`observe` is O(1)); the fit
runs when something reads the terms, that is when a choice needs them. A
batcher whose batches leave no choice (one length waiting, a lone caller)
never refits, and no refit delays the delivery of a batch's results.

Before it has seen enough batches of different sizes to tell a call's price
from a cell's, the model assumes a call costs as much as ``prior_cells``
cells: only the ratio of the terms decides which batch is best, so that guess
is all it needs before it has learnt. Until the batches seen also span
lengths far enough apart to tell a cell's price from attention's (the longest
twice the shortest, and one batch more than the two terms need), the model
stays linear in the cells, as if every batch had the average length of those
seen.
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import Generic, TypeVar, overload

import numpy as np

from .least_squares import Floats, non_negative_fit

__all__ = ["CostModel"]

_MIN_POINTS = 4  # batches seen before the fit replaces the prior
_MIN_SPREAD = 1.25  # the largest batch seen must have this many times the cells of the smallest
_MIN_LENGTH_SPREAD = 2.0  # the longest batch seen must be this many times the shortest for ...
_MIN_POINTS_QUADRATIC = 5  # ... the attention term to be fitted, from this many batches
_FLOOR = 0.1  # of the median time: added to each prediction before an error is divided by it
_OUTLIER = 3.0  # residuals beyond this many robust standard deviations are left out
_ROUNDS = 4  # refits without outliers, at most
_TINY = 1e-12

Point = tuple[float, float, float]  # cells, cells times padded length, seconds
Terms = tuple[float, float, float]  # fixed, per_cell, per_cell_length


T = TypeVar("T")


class _Term(Generic[T]):
    """A term of a `CostModel`: reading it refits the model first if batches were seen
    since the last fit; setting it pins it until the next fit."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self._slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = f"_{name}"

    @overload
    def __get__(self, model: None, owner: type) -> _Term[T]: ...
    @overload
    def __get__(self, model: CostModel, owner: type) -> T: ...
    def __get__(self, model: CostModel | None, owner: type) -> T | _Term[T]:
        if model is None:
            return self
        model._refresh()
        value: T = getattr(model, self._slot)
        return value

    def __set__(self, model: CostModel, value: T) -> None:
        setattr(model, self._slot, value)


class CostModel:
    """Seconds a padded batch of one kind of input costs, as
    ``fixed + per_cell · cells + per_cell_length · cells · length``."""

    __slots__ = ("_fitted", "_fixed", "_per_cell", "_per_cell_length", "_points", "_stale")

    def __init__(self, *, window: int = 64, prior_cells: float = 64.0) -> None:
        self._points: deque[Point] = deque(maxlen=window)
        self._fixed = prior_cells  # in units of one cell until fitted
        self._per_cell = 1.0
        self._per_cell_length = 0.0
        self._fitted = False
        self._stale = False  # batches were observed since the last fit

    fixed = _Term[float]("A call's own price (seconds once fitted).")
    per_cell = _Term[float]("The price of one padded cell (seconds once fitted).")
    per_cell_length = _Term[float](
        "The price of one padded cell per position of its padded length (attention); "
        "0 until the batches seen span lengths enough to tell it apart."
    )
    fitted = _Term[bool]("Whether the terms come from batches seen rather than the prior.")

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
        self._refresh()
        return self._fixed + items * length * (self._per_cell + self._per_cell_length * length)

    def observe(self, items: int, length: int, seconds: float) -> None:
        """A batch of ``items`` padded to ``length`` took ``seconds``; the next read refits."""
        cells = float(items * length)
        self._points.append((cells, cells * length, max(seconds, 0.0)))
        self._stale = True

    def _refresh(self) -> None:
        if not self._stale:
            return
        self._stale = False
        cells = [x for x, _, _ in self._points]
        if len(cells) >= _MIN_POINTS and max(cells) >= _MIN_SPREAD * min(cells):
            data = np.array(self._points, dtype=np.float64)
            terms = _robust_fit(data, _attention_shows(data))
            self._fixed, self._per_cell, self._per_cell_length = terms
            self._fitted = True


def _attention_shows(data: Floats) -> bool:
    """Whether the batches in ``data`` span lengths enough to fit the attention term."""
    cells, cells_length = data[:, 0], data[:, 1]
    lengths = cells_length[cells > 0] / cells[cells > 0]
    if len(lengths) < _MIN_POINTS_QUADRATIC:
        return False
    return bool(lengths.max() >= _MIN_LENGTH_SPREAD * lengths.min())


def _robust_fit(data: Floats, quadratic: bool) -> Terms:
    """``(fixed, per_cell, per_cell_length)`` from the rows ``(cells, cells · length,
    seconds)`` of ``data``; ``per_cell_length`` is 0 unless ``quadratic``.

    A fit in seconds first, then refits whose errors are relative to what the
    last fit predicts (so that a batch timed at 0 stands out instead of
    steering the fit); from the second on, without the batches whose relative
    residual exceeds `_OUTLIER` robust standard deviations (from the median
    absolute residual), until the batches kept stop changing, a few times at
    most.
    """
    seconds = data[:, 2]
    floor = _FLOOR * statistics.median(seconds.tolist()) + _TINY
    rows = np.column_stack([np.ones(len(data)), data[:, :2]])[:, : 3 if quadratic else 2]
    terms = _fit(rows, seconds, np.ones(len(data)))
    keep = np.ones(len(data), dtype=bool)
    for round_ in range(_ROUNDS + 1):
        predicted = _price(terms, data)
        scale = predicted + floor
        if round_ > 0:
            residuals = np.abs(seconds - predicted) / scale
            limit = _OUTLIER * 1.4826 * statistics.median(residuals.tolist())
            trimmed = residuals <= limit
            if limit <= 0 or trimmed.sum() < _MIN_POINTS or np.array_equal(trimmed, keep):
                break
            keep = trimmed
            if quadratic and not _attention_shows(data[keep]):
                rows = rows[:, :2]  # the batches left no longer tell attention apart
        terms = _fit(rows[keep], seconds[keep], 1.0 / scale[keep])
    return terms


def _price(terms: Terms, data: Floats) -> Floats:
    fixed, per_cell, per_cell_length = terms
    return fixed + per_cell * data[:, 0] + per_cell_length * data[:, 1]


def _fit(rows: Floats, seconds: Floats, weights: Floats) -> Terms:
    """Least squares over ``weights · error`` on the features ``rows`` (1, cells and,
    if there, cells · length), every term kept >= 0 and a call's price above 0."""
    found = non_negative_fit(rows * weights[:, None], seconds * weights)
    per_cell_length = found[2] if len(found) > 2 else 0.0
    return max(found[0], _TINY), found[1], per_cell_length
