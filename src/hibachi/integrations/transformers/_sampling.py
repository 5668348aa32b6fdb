"""Choosing each row's next token: greedy, or sampled with per-request settings.

A request's ``options`` is None (greedy) or a mapping with any of
``temperature`` (0 means greedy), ``top_k`` (0 means off), ``top_p`` and
``seed``. A sampled row draws from its slot's own `torch.Generator`, seeded
with the request's ``seed`` (or at random), once per token: a seeded request
gets the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..._core.values import describe_value
from ..._exceptions import InvalidRequest

__all__ = ["Sampler", "Sampling"]


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; built from a request's ``options`` by `parse`.

    Every field is checked when a `Sampling` is made, directly or by `parse`:
    ``temperature`` is a finite number >= 0 (0, or one too small for float32,
    means greedy: the most likely token), ``top_k`` an int in 0 … 2**63-1 (0
    means off), ``top_p`` a number in (0, 1], ``seed`` None or an int in
    0 … 2**63-1. Anything else raises `InvalidRequest`.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the checked values replace the given ones
        put(self, "temperature", _real("temperature", self.temperature, _at_least_zero, ">= 0"))
        put(self, "top_k", _count("top_k", self.top_k))
        put(self, "top_p", _real("top_p", self.top_p, _probability, "in (0, 1]"))
        put(self, "seed", None if self.seed is None else _count("seed", self.seed))

    @property
    def greedy(self) -> bool:
        return self.temperature < _SMALLEST_TEMPERATURE

    @classmethod
    def parse(cls, options: object) -> Sampling:
        """The settings in a request's ``options``, or InvalidRequest saying what is wrong."""
        if options is None:
            return _GREEDY
        if isinstance(options, Sampling):
            return options
        if not isinstance(options, Mapping):
            raise InvalidRequest(
                f"options must be a mapping such as {{'temperature': 0.7}}, "
                f"got {type(options).__name__}"
            )
        unknown = set(options) - {"temperature", "top_k", "top_p", "seed"}
        if unknown:
            raise InvalidRequest(
                f"unknown options {sorted(map(str, unknown))[:8]}: "
                "expected temperature, top_k, top_p, seed"
            )
        return cls(**options)


_SMALLEST_TEMPERATURE = float(np.finfo(np.float32).tiny)
_MAX_COUNT = 2**63 - 1


def _at_least_zero(value: float) -> bool:
    return value >= 0


def _probability(value: float) -> bool:
    return 0 < value <= 1


def _real(name: str, value: object, valid: Callable[[float], bool], rule: str) -> float:
    number = None
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        try:
            number = float(value)
        except (OverflowError, ValueError, TypeError):
            number = None
    if number is None or not math.isfinite(number):
        raise InvalidRequest(f"option {name} must be a finite number, got {describe_value(value)}")
    if not valid(number):
        raise InvalidRequest(f"option {name} must be {rule}, got {describe_value(value)}")
    return number


def _count(name: str, value: object) -> int:
    count = None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        count = int(value)
    if count is None or not 0 <= count <= _MAX_COUNT:
        raise InvalidRequest(
            f"option {name} must be an int in 0 … 2**63-1, got {describe_value(value)}"
        )
    return count


_GREEDY = Sampling()


class Sampler:
    """Each slot's settings and generator; picks the next token of a batch of rows."""

    def __init__(self, slots: int, device: torch.device) -> None:
        self._device = device
        self._settings: list[Sampling] = [_GREEDY] * slots
        self._greedy = np.ones(slots, dtype=bool)
        self._all_greedy = True  # every slot's last request: greedy rows need no lookup
        self._generators: list[torch.Generator | None] = [None] * slots

    def start(self, slot: int, options: object, drawn: int = 0) -> None:
        """A new request begins in ``slot``; ``drawn``: the tokens it had already drawn
        (a preempted request, recomputed), whose draws its generator skips."""
        settings = Sampling.parse(options)
        self._settings[slot] = settings
        self._greedy[slot] = settings.greedy
        self._all_greedy = bool(self._greedy.all())
        if not settings.greedy:
            generator = self._generators[slot]
            if generator is None:
                generator = self._generators[slot] = torch.Generator(device=self._device)
            if settings.seed is None:
                generator.seed()
            else:
                generator.manual_seed(settings.seed)
            for _ in range(drawn):
                self._draw(slot)

    def pick(self, logits: torch.Tensor, slots: np.ndarray[Any, Any]) -> torch.Tensor:
        """The next token (B,) for logits (B, vocab) of the rows in ``slots``."""
        chosen = logits.argmax(dim=-1)
        if self._all_greedy:
            return chosen
        sampled = np.flatnonzero(~self._greedy[slots])
        if sampled.size:
            index = torch.from_numpy(sampled).to(self._device)
            chosen[index] = self._sample(logits[index], slots[sampled].tolist())
        return chosen

    def _sample(self, logits: torch.Tensor, slots: list[int]) -> torch.Tensor:
        settings = [self._settings[s] for s in slots]
        device, vocab = logits.device, logits.shape[-1]
        temperature = torch.tensor(
            [s.temperature for s in settings], dtype=torch.float64, device=device
        )
        scaled = logits.double()
        scaled = (scaled - scaled.amax(dim=-1, keepdim=True)) / temperature[:, None]
        probs = torch.softmax(scaled, dim=-1)
        probs, order = probs.sort(dim=-1, descending=True)
        top_k = torch.tensor([s.top_k or vocab for s in settings], device=device)
        top_p = torch.tensor([s.top_p for s in settings], dtype=probs.dtype, device=device)
        ranks = torch.arange(vocab, device=device)
        keep = (ranks[None, :] < top_k[:, None]) & (probs.cumsum(-1) - probs < top_p[:, None])
        cdf = (probs * keep).cumsum(dim=-1)
        draws = torch.stack([self._draw(s) for s in slots]).to(cdf.dtype) * cdf[:, -1]
        picked = torch.searchsorted(cdf, draws[:, None], right=True).clamp_(max=vocab - 1)
        return order.gather(1, picked).squeeze(1)

    def _draw(self, slot: int) -> torch.Tensor:
        return torch.rand(
            (), generator=self._generators[slot], device=self._device, dtype=torch.float64
        )
