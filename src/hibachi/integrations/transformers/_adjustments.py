"""The logits' changes before a token is chosen: bias, min_tokens and the penalties.

Applied in vLLM's order: ``logit_bias``, ``min_tokens``, then the repetition,
frequency and presence penalties (see `Sampling`). The penalties need what
each slot's request has been fed: a row of ``max_length`` token ids per slot,
on the device, written with each step's new tokens only (`record`). A step
then reads, for each penalised row, the ids it was fed so far, and changes
the logits of those ids alone: no pass over the whole vocabulary, no Python
loop over it, nothing read back to the host.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._sampling import Sampling

__all__ = ["Adjustments"]


class Adjustments:
    """Each slot's logit changes and, for the penalties, the tokens its request was fed."""

    def __init__(
        self, slots: int, max_length: int, device: torch.device, stop_token: int | None
    ) -> None:
        self._device = device
        self._stop = stop_token
        self._max_length = max_length
        self._bias: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * slots
        self._min_tokens = np.zeros(slots, dtype=np.int64)
        self._repetition = np.ones(slots)
        self._frequency = np.zeros(slots)
        self._presence = np.zeros(slots)
        self.records = np.zeros(slots, dtype=bool)  # a penalty needs the tokens fed
        self._history: torch.Tensor | None = None  # (slots, max_length), made when first needed

    def start(self, slot: int, settings: Sampling) -> None:
        """A new request with ``settings`` begins in ``slot``."""
        bias = settings.logit_bias
        self._bias[slot] = None
        if bias:
            ids = torch.tensor(list(bias.keys()), dtype=torch.long, device=self._device)
            values = torch.tensor(list(bias.values()), dtype=torch.float64, device=self._device)
            self._bias[slot] = ids, values
        self._min_tokens[slot] = settings.min_tokens if self._stop is not None else 0
        self._repetition[slot] = settings.repetition_penalty
        self._frequency[slot] = settings.frequency_penalty
        self._presence[slot] = settings.presence_penalty
        self.records[slot] = (
            settings.repetition_penalty != 1
            or settings.frequency_penalty != 0
            or settings.presence_penalty != 0
        )

    def record(
        self, slots: np.ndarray[Any, Any], positions: np.ndarray[Any, Any], tokens: Any
    ) -> None:
        """Note that ``slots[i]`` was fed ``tokens[i]`` at ``positions[i]``.

        Nothing to undo if the step then raises: a position is read only once
        the step that fed it is committed, and its retry writes it again.
        """
        kept = self.records[slots]
        if not kept.any():
            return
        if self._history is None:
            shape = (len(self.records), self._max_length)
            self._history = torch.zeros(shape, dtype=torch.long, device=self._device)
        index = _on(slots[kept], self._device), _on(positions[kept], self._device)
        ids = torch.as_tensor(tokens).to(self._device, torch.long)
        self._history.index_put_(index, ids[_on(np.flatnonzero(kept), ids.device)])

    def apply(
        self,
        logits: torch.Tensor,
        slots: np.ndarray[Any, Any],
        fed: np.ndarray[Any, Any],
        prompt: np.ndarray[Any, Any],
    ) -> None:
        """Change ``logits`` (n, V) of rows ``slots`` in place; ``fed``: each row's tokens
        fed so far, of which the first ``prompt`` are its prompt."""
        self._add_bias(logits, slots)
        early = np.flatnonzero(fed - prompt < self._min_tokens[slots])
        if early.size and self._stop is not None and self._stop < logits.shape[-1]:
            logits[_on(early, logits.device), self._stop] = -torch.inf
        rows = np.flatnonzero(self._repetition[slots] != 1)
        if rows.size:
            self._repeat(logits, rows, slots[rows], fed[rows])
        rows = np.flatnonzero(
            ((self._frequency[slots] != 0) | (self._presence[slots] != 0)) & (fed > prompt)
        )
        if rows.size:
            self._count(logits, rows, slots[rows], prompt[rows], fed[rows])

    def _add_bias(self, logits: torch.Tensor, slots: np.ndarray[Any, Any]) -> None:
        biased = [(row, b) for row, slot in enumerate(slots.tolist()) if (b := self._bias[slot])]
        if not biased:
            return
        ids = torch.cat([ids for _, (ids, _) in biased])
        values = torch.cat([values for _, (_, values) in biased]).to(logits.dtype)
        rows = np.repeat([row for row, _ in biased], [len(ids) for _, (ids, _) in biased])
        logits.index_put_((_on(rows, logits.device), ids), values, accumulate=True)

    def _repeat(
        self,
        logits: torch.Tensor,
        rows: np.ndarray[Any, Any],
        slots: np.ndarray[Any, Any],
        fed: np.ndarray[Any, Any],
    ) -> None:
        """The repetition penalty on ``rows``: every token fed so far, prompt or generated."""
        ids, _ = self._fed_ids(slots, np.zeros_like(fed), fed)
        at = _on(rows, logits.device)[:, None], ids
        values = logits[at]
        penalty = _column(self._repetition[slots], values)
        logits[at] = torch.where(values < 0, values * penalty, values / penalty)

    def _count(
        self,
        logits: torch.Tensor,
        rows: np.ndarray[Any, Any],
        slots: np.ndarray[Any, Any],
        prompt: np.ndarray[Any, Any],
        fed: np.ndarray[Any, Any],
    ) -> None:
        """The frequency and presence penalties on ``rows``: the tokens generated so far."""
        ids, real = self._fed_ids(slots, prompt, fed)
        ordered = torch.where(real, ids, logits.shape[-1]).sort(dim=1).values  # padding last
        counts = torch.searchsorted(ordered, ids, right=True) - torch.searchsorted(ordered, ids)
        at = _on(rows, logits.device)[:, None], ids
        values = logits[at]
        frequency = _column(self._frequency[slots], values)
        presence = _column(self._presence[slots], values)
        logits[at] = values - frequency * counts.to(values.dtype) - presence

    def _fed_ids(
        self, slots: np.ndarray[Any, Any], start: np.ndarray[Any, Any], end: np.ndarray[Any, Any]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, width): the ids each slot was fed at ``start`` … ``end``-1, each row padded
        with its first id (every copy of an id then gets the same new value), and which
        of them are real, not padding."""
        assert self._history is not None
        width = int((end - start).max())
        columns = torch.arange(width, device=self._device)[None, :]
        first, count = _on(start, self._device)[:, None], _on(end - start, self._device)[:, None]
        real = columns < count
        positions = torch.where(real, first + columns, first)
        return self._history[_on(slots, self._device)[:, None], positions], real


def _on(array: np.ndarray[Any, Any], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device)


def _column(values: np.ndarray[Any, Any], like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values).to(like.device, like.dtype)[:, None]
