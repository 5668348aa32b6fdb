"""`Sampler`: each row's next token, greedy or sampled, with its request's `Sampling`.

Rows that are greedy with no logit changes (the default) cost one argmax.
Any other row is chosen from its own logits, changed by its request's
`Adjustments`, then drawn (`_draws.sample`) or taken greedily. A row's token
depends on its logits, its request's settings and what the request has seen:
never on the other rows of the step, on how the prompt was cut into chunks,
or on a step that raised (`pick` changes nothing then).

A request's options reach `Sampler.start` as `RowOptions` (the adapter's
``check_request`` makes them: the checked `Sampling` and the prompt's length,
which tells prompt tokens from generated ones) or as given to ``run``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..._exceptions import InvalidRequest
from ._adjustments import Adjustments
from ._draws import Draws, key_of, sample
from ._sampling import Sampling

__all__ = ["Fed", "RowOptions", "Sampler"]


@dataclass(frozen=True)
class RowOptions:
    """One request's options as its steps get them: its settings and its prompt's length."""

    settings: Sampling
    prompt_length: int


@dataclass(frozen=True)
class Fed:
    """What a step fed its rows, as `Sampler.pick` needs it (read when the step began).

    ``counts``: how many tokens each row was fed. ``rows``, ``offsets`` and
    ``tokens``: each token fed to a row that records them (for a penalty), its
    row and its place among the row's new tokens; None if no row records.
    """

    counts: np.ndarray[Any, Any]
    rows: np.ndarray[Any, Any] | None = None
    offsets: np.ndarray[Any, Any] | None = None
    tokens: np.ndarray[Any, Any] | None = None


class Sampler:
    """Each slot's settings; picks the next token of a batch of rows."""

    def __init__(
        self, slots: int, max_length: int, device: torch.device, stop_token: int | None = None
    ) -> None:
        """``slots`` rows of at most ``max_length`` tokens; ``stop_token``: the one that
        ``min_tokens`` keeps back (None: there is none)."""
        self._device = device
        self._plain = np.ones(slots, dtype=bool)  # greedy with no logit changes
        self._sampled = np.zeros(slots, dtype=bool)
        self._adjusted = np.zeros(slots, dtype=bool)
        self._temperature = np.ones(slots)
        self._top_k = np.zeros(slots, dtype=np.int64)
        self._top_p = np.ones(slots)
        self._keys = np.zeros(slots, dtype=np.uint64)
        self._prompt = np.zeros(slots, dtype=np.int64)  # the prompt's length; 0: unknown
        self._fed = np.zeros(slots, dtype=np.int64)  # tokens fed so far
        self._adjustments = Adjustments(slots, max_length, device, stop_token)

    def start(self, slot: int, options: object, cached: Any = ()) -> None:
        """A new request begins in ``slot``, its row holding ``cached`` (1-D: its first
        tokens, a cached prefix) without being fed them: they count as fed, at their
        positions, as if they had been."""
        settings, length = _settings(options)
        self._plain[slot] = settings.greedy and not settings.adjusts_logits
        self._sampled[slot] = not settings.greedy
        self._adjusted[slot] = settings.adjusts_logits
        self._temperature[slot] = settings.temperature or 1.0
        self._top_k[slot] = settings.top_k
        self._top_p[slot] = settings.top_p
        self._keys[slot] = key_of(settings.seed)
        self._prompt[slot] = length
        self._adjustments.start(slot, settings)
        count = len(cached)
        if count and self._adjustments.records[slot]:
            slots = np.full(count, slot, dtype=np.int64)
            self._adjustments.record(slots, np.arange(count), cached)
        self._fed[slot] = count

    def fed(self, tokens: Any, mask: Any, slots: np.ndarray[Any, Any]) -> Fed | None:
        """What `pick` needs of a step's inputs ``tokens`` and ``mask`` (B, W) for rows
        ``slots``; None if every row is plain greedy. Read at once: the arrays are reused."""
        if self._plain[slots].all():
            return None
        width = int(mask.shape[1])
        records = self._adjustments.records[slots]
        if width == 1:
            counts = np.ones(len(slots), dtype=np.int64)
            if not records.any():
                return Fed(counts)
            rows = np.flatnonzero(records)
            return Fed(counts, rows, np.zeros_like(rows), _host(tokens)[rows, 0])
        real = _host(mask)
        counts = real.sum(axis=1).astype(np.int64)
        if not records.any():
            return Fed(counts)
        rows, columns = np.nonzero(real & records[:, None])
        offsets = columns - (width - counts[rows])  # the rows are left-padded
        return Fed(counts, rows, offsets, _host(tokens)[rows, columns])

    def pick(
        self, logits: torch.Tensor, slots: np.ndarray[Any, Any], fed: Fed | None
    ) -> torch.Tensor:
        """The next token (B,) for ``logits`` (B, V) of the rows in ``slots``, fed ``fed``;
        it may overwrite ``logits``. Changes nothing else if it raises."""
        if fed is None:
            return logits.argmax(dim=-1)
        before = self._fed[slots]
        after = before + fed.counts
        if fed.rows is not None and fed.offsets is not None:
            rows = fed.rows
            self._adjustments.record(slots[rows], before[rows] + fed.offsets, fed.tokens)
        chosen = self._choose(logits, slots, after)
        self._fed[slots] = after  # the commit: nothing raises after it
        return chosen

    def _choose(
        self, logits: torch.Tensor, slots: np.ndarray[Any, Any], after: np.ndarray[Any, Any]
    ) -> torch.Tensor:
        """Each row's token; rows whose prompt is not all in yet (their token is not
        used) get 0."""
        plain = self._plain[slots]
        live = after >= self._prompt[slots]
        chosen = torch.zeros(len(slots), dtype=torch.long, device=logits.device)
        if plain.any():
            rows = np.flatnonzero(plain)
            _put(chosen, rows, _rows(logits, rows).argmax(dim=-1))
        work = np.flatnonzero(~plain & live)
        if not work.size:
            return chosen
        mine = slots[work]
        values = _rows(logits, work).to(_working_dtype(logits.dtype))  # ours to change
        if self._adjusted[mine].any():
            self._adjustments.apply(values, mine, after[work], self._prompt[mine])
        greedy = np.flatnonzero(~self._sampled[mine])
        if greedy.size:
            _put(chosen, work[greedy], _rows(values, greedy).argmax(dim=-1))
        drawn = np.flatnonzero(self._sampled[mine])
        if drawn.size:
            tokens = self._draw(_rows(values, drawn), mine[drawn], after[work[drawn]])
            _put(chosen, work[drawn], tokens)
        return chosen

    def _draw(
        self, logits: torch.Tensor, slots: np.ndarray[Any, Any], positions: np.ndarray[Any, Any]
    ) -> torch.Tensor:
        draws = Draws(self._keys[slots], positions, logits.device)
        temperature, top_k, top_p = self._temperature[slots], self._top_k[slots], self._top_p[slots]
        return sample(logits, temperature, top_k, top_p, draws)


def _settings(options: object) -> tuple[Sampling, int]:
    """A request's settings and its prompt's length (0: unknown) from its options."""
    if isinstance(options, RowOptions):
        return options.settings, options.prompt_length
    settings = Sampling.parse(options)
    if settings.min_tokens or settings.frequency_penalty or settings.presence_penalty:
        raise InvalidRequest(
            "options min_tokens, frequency_penalty and presence_penalty need the prompt's "
            "length: give requests to the batcher, whose check_request() notes it"
        )
    return settings, 0


def _working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 for float64 logits."""
    return torch.promote_types(dtype, torch.float32)


def _host(array: Any) -> np.ndarray[Any, Any]:
    return array.numpy(force=True) if isinstance(array, torch.Tensor) else np.asarray(array)


def _rows(tensor: torch.Tensor, rows: np.ndarray[Any, Any]) -> torch.Tensor:
    """``tensor``'s ``rows`` (a view if they are all of them, in order)."""
    if rows.size == tensor.shape[0]:
        return tensor
    return tensor.index_select(0, torch.from_numpy(rows).to(tensor.device))


def _put(chosen: torch.Tensor, rows: np.ndarray[Any, Any], tokens: torch.Tensor) -> None:
    """``chosen[rows] = tokens``."""
    if rows.size == chosen.shape[0]:
        chosen.copy_(tokens)
    else:
        chosen.index_copy_(0, torch.from_numpy(rows).to(chosen.device), tokens)
