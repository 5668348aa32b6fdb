"""Drawing each row's token from its logits: the same token whatever else is in the batch.

Every operation works along one row at a time, over the whole vocabulary:
softmax, cumulative sums, top-k values, searches, elementwise arithmetic.
None reduces across rows or over a slice whose width depends on the batch, so
a row's token depends on its logits and its draws alone. No full-vocabulary
sort runs unless top-p sampling asks for one, rarely (see `_nucleus`).

The draws come from a counter-based generator (SplitMix64's output function):
a row's uniform number is a hash of its request's key, the position of the
token being drawn and the round of drawing. Nothing is carried from one step
to the next: a request's draws don't depend on how its prompt was cut into
chunks, on the other rows, or on a step that raised and was retried.
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import torch

__all__ = ["Draws", "key_of", "sample"]

_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_ROUNDS = 64  # draws per position: a pick and the top-p rounds that may follow it
_NUCLEUS_CHECKS = 3  # exact top-p checks before the rows left sort their vocabulary


def _mix(z: np.ndarray[Any, np.dtype[np.uint64]]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """SplitMix64's output function, elementwise (wrapping uint64 arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def key_of(seed: int | None) -> np.uint64:
    """A request's key: a hash of its ``seed``, or 64 random bits if it has none."""
    if seed is None:
        return np.uint64(secrets.randbits(64))
    return np.uint64(_mix(np.array([seed], dtype=np.uint64))[0])


class Draws:
    """The uniform numbers of some rows: keys (uint64) and the positions being drawn."""

    def __init__(
        self,
        keys: np.ndarray[Any, np.dtype[np.uint64]],
        positions: np.ndarray[Any, np.dtype[np.int64]],
        device: torch.device,
    ) -> None:
        self.keys = keys
        self.positions = positions
        self.device = device

    def rows(self, rows: np.ndarray[Any, Any]) -> Draws:
        return Draws(self.keys[rows], self.positions[rows], self.device)

    def uniform(self, round: int, rows: np.ndarray[Any, Any] | None = None) -> torch.Tensor:
        """A float64 in [0, 1) per row (``rows`` of them: indices, None: all), on the device."""
        keys, positions = self.keys, self.positions
        if rows is not None:
            keys, positions = keys[rows], positions[rows]
        with np.errstate(over="ignore"):
            counter = positions.astype(np.uint64) * np.uint64(_ROUNDS) + np.uint64(round)
            bits = _mix(keys + counter * _GAMMA) >> np.uint64(11)
        return torch.from_numpy(bits * 2.0**-53).to(self.device, non_blocking=True)


def sample(
    logits: torch.Tensor,
    temperature: np.ndarray[Any, Any],
    top_k: np.ndarray[Any, Any],
    top_p: np.ndarray[Any, Any],
    draws: Draws,
) -> torch.Tensor:
    """Each row's token (n,) drawn from ``logits`` (n, V), which it may overwrite.

    Top-k keeps the tokens whose logit is at least the k-th largest; top-p then
    the fewest most likely of those whose probabilities, renormalised, add up
    to ``top_p``; either keeps every token tied with the last one kept.
    """
    vocab = logits.shape[-1]
    scaled = _scaled(logits, temperature)
    few = np.flatnonzero((top_k > 0) & (top_k < vocab))
    if few.size:
        scaled = _top_k(scaled, few, top_k[few])
    probs = torch.softmax(scaled, dim=-1)
    cdf = probs.cumsum(dim=-1)
    total = cdf[:, -1]
    picked = _search(cdf, total, draws.uniform(0))
    nucleus = np.flatnonzero(top_p < 1)
    if nucleus.size:
        _nucleus(probs, total, picked, nucleus, top_p[nucleus], draws)
    return picked


_TINY_TEMPERATURE = 1e-4  # below it, logits are divided from their maximum, lest they overflow


def _scaled(logits: torch.Tensor, temperature: np.ndarray[Any, Any]) -> torch.Tensor:
    """``logits`` divided by each row's temperature, in place.

    A row whose temperature is tiny is divided from its maximum: a choice made
    row by row, so a row is divided the same way whatever else is in the batch.
    """
    if (temperature == 1).all():
        return logits
    divisor = torch.from_numpy(temperature).to(logits.device, logits.dtype)[:, None]
    tiny = np.flatnonzero(temperature < _TINY_TEMPERATURE)
    if tiny.size:
        index = torch.from_numpy(tiny).to(logits.device)
        rows = logits.index_select(0, index)
        logits.index_copy_(0, index, rows.sub_(rows.amax(dim=-1, keepdim=True)))
    return logits.div_(divisor)


def _top_k(
    scaled: torch.Tensor, rows: np.ndarray[Any, Any], k: np.ndarray[Any, Any]
) -> torch.Tensor:
    """``scaled`` with ``rows``' logits below their k-th largest set to -inf.

    The k largest are written into a row of -inf, unless the next one ties
    with the k-th: then every logit is compared with it.
    """
    device = scaled.device
    index = torch.from_numpy(rows).to(device)
    every = rows.size == scaled.shape[0]
    chosen = scaled if every else scaled.index_select(0, index)
    values, ids = chosen.topk(min(int(k.max()) + 1, chosen.shape[-1]), dim=-1)
    last = torch.from_numpy(k - 1).to(device)[:, None]
    kth = values.gather(1, last)
    ranks = torch.arange(values.shape[-1], device=device)[None, :]
    kept = torch.full_like(chosen, -torch.inf).scatter_(
        1, ids, values.masked_fill(ranks > last, -torch.inf)
    )
    tied = np.flatnonzero((values.gather(1, last + 1) == kth).squeeze(1).numpy(force=True))
    if tied.size:
        at = torch.from_numpy(tied).to(device)
        kept[at] = torch.where(chosen[at] >= kth[at], chosen[at], -torch.inf)
    return kept if every else scaled.index_copy_(0, index, kept)


def _search(cdf: torch.Tensor, total: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The token (n,) at ``uniform * total`` of each row's cumulative weights ``cdf``."""
    below = torch.nextafter(total, torch.zeros_like(total))  # the draw stays under the total
    at = torch.minimum(uniform.to(cdf.dtype) * total, below)
    found = torch.searchsorted(cdf, at[:, None], right=True).squeeze(1)
    return found.clamp_(max=cdf.shape[-1] - 1)


def _nucleus(
    probs: torch.Tensor,
    total: torch.Tensor,
    picked: torch.Tensor,
    rows: np.ndarray[Any, Any],
    top_p: np.ndarray[Any, Any],
    draws: Draws,
) -> None:
    """Keep ``rows``' picks in their top-p nucleus, redrawing those that fall outside.

    A token is in the nucleus if the tokens more likely than it weigh less than
    ``top_p * total``. A pick is kept at once when it is likely enough to be in
    for sure (``total`` less its own weight is under the limit); otherwise an
    exact check weighs the tokens more likely than it, and a pick outside is
    redrawn from those tokens only: a superset of the nucleus, each time
    smaller. Each pick is so kept exactly when it is in the nucleus, which
    makes the kept pick a draw from the nucleus. Rows still without one after
    `_NUCLEUS_CHECKS` checks draw from their nucleus found by a sort.
    """
    device = probs.device
    index = torch.from_numpy(rows).to(device)
    limit = torch.from_numpy(top_p).to(device, probs.dtype) * total[index]
    choice = picked[index]
    weight = probs[index, choice]
    open_ = (total[index] - weight >= limit).numpy(force=True)
    if not open_.any():
        return
    pending = np.flatnonzero(open_)  # only these rows' probabilities are read again
    mine = probs.index_select(0, index[torch.from_numpy(pending).to(device)])
    choice, weight, limit = choice[pending], weight[pending], limit[pending]
    open_ = np.ones(pending.size, dtype=bool)
    for check in range(1, _NUCLEUS_CHECKS + 1):
        at = torch.from_numpy(np.flatnonzero(open_)).to(device)
        heavier = torch.where(mine[at] > weight[at, None], mine[at], 0.0)
        cdf = heavier.cumsum(dim=-1)
        mass = cdf[:, -1]
        outside = (mass >= limit[at]).numpy(force=True)
        redo = np.flatnonzero(open_)[outside]
        open_[np.flatnonzero(open_)[~outside]] = False
        if check == _NUCLEUS_CHECKS or not redo.size:
            break
        at, again = torch.from_numpy(redo).to(device), torch.from_numpy(outside).to(device)
        choice[at] = _search(cdf[again], mass[again], draws.uniform(check, rows[pending[redo]]))
        weight[at] = mine[at, choice[at]]
        open_[redo] = (mass[again] - weight[at] >= limit[at]).numpy(force=True)
    left = np.flatnonzero(open_)
    if left.size:
        at = torch.from_numpy(left).to(device)
        uniform = draws.uniform(_NUCLEUS_CHECKS + 1, rows[pending[left]])
        choice[at] = _sorted_nucleus(mine[at], limit[at], uniform)
    picked[index[torch.from_numpy(pending).to(device)]] = choice


def _sorted_nucleus(
    probs: torch.Tensor, limit: torch.Tensor, uniform: torch.Tensor
) -> torch.Tensor:
    """A draw (n,) from each row's nucleus, found by sorting the row."""
    ordered = probs.sort(dim=-1, descending=True, stable=True).values
    heavier = ordered.cumsum(dim=-1) - ordered  # the weight of the tokens before each
    count = (heavier < limit[:, None]).sum(dim=-1, keepdim=True)
    threshold = ordered.gather(1, count - 1)
    kept = torch.where(probs >= threshold, probs, 0.0)
    cdf = kept.cumsum(dim=-1)
    return _search(cdf, cdf[:, -1], uniform)
