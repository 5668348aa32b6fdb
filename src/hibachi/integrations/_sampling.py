"""Choosing each row's next token: greedy, or sampled with per-request settings.

A request's ``options`` is None (greedy) or a mapping with any of
``temperature`` (0 means greedy), ``top_k`` (0 means off), ``top_p`` and
``seed``. A sampled row draws from its slot's own `torch.Generator`, seeded
with the request's ``seed`` (or at random), once per token: a seeded request
gets the same tokens whatever else shares its batch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._exceptions import InvalidRequest

__all__ = ["Sampler", "Sampling"]


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

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
                f"unknown options {sorted(map(str, unknown))}: "
                "expected temperature, top_k, top_p, seed"
            )
        return cls(
            temperature=_number(options, "temperature", 0.0, lambda t: t >= 0, ">= 0"),
            top_k=int(_number(options, "top_k", 0, lambda k: k >= 0, ">= 0", integer=True)),
            top_p=_number(options, "top_p", 1.0, lambda p: 0 < p <= 1, "in (0, 1]"),
            seed=_seed(options.get("seed")),
        )


_GREEDY = Sampling()


def _number(
    options: Mapping[Any, Any],
    name: str,
    default: float,
    valid: Any,
    rule: str,
    *,
    integer: bool = False,
) -> float:
    value = options.get(name, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        kind = "an int" if integer else "a number"
        raise InvalidRequest(f"option {name} must be {kind}, got {value!r}")
    if not valid(value):
        raise InvalidRequest(f"option {name} must be {rule}, got {value!r}")
    return float(value)


def _seed(seed: object) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise InvalidRequest(f"option seed must be an int in 0 … 2**63-1, got {seed!r}")
    return seed


class Sampler:
    """Each slot's settings and generator; picks the next token of a batch of rows."""

    def __init__(self, slots: int, device: torch.device) -> None:
        self._device = device
        self._settings: list[Sampling] = [_GREEDY] * slots
        self._greedy = np.ones(slots, dtype=bool)
        self._generators: list[torch.Generator | None] = [None] * slots

    def start(self, slot: int, options: object) -> None:
        """A new request begins in ``slot``."""
        settings = Sampling.parse(options)
        self._settings[slot] = settings
        self._greedy[slot] = settings.greedy
        if not settings.greedy:
            generator = self._generators[slot]
            if generator is None:
                generator = self._generators[slot] = torch.Generator(device=self._device)
            if settings.seed is None:
                generator.seed()
            else:
                generator.manual_seed(settings.seed)

    def pick(self, logits: torch.Tensor, slots: np.ndarray[Any, Any]) -> torch.Tensor:
        """The next token (B,) for logits (B, vocab) of the rows in ``slots``."""
        chosen = logits.argmax(dim=-1)
        sampled = np.flatnonzero(~self._greedy[slots])
        if sampled.size:
            index = torch.from_numpy(sampled).to(self._device)
            chosen[index] = self._sample(logits[index], slots[sampled].tolist())
        return chosen

    def _sample(self, logits: torch.Tensor, slots: list[int]) -> torch.Tensor:
        settings = [self._settings[s] for s in slots]
        device, vocab = logits.device, logits.shape[-1]
        temperature = torch.tensor([s.temperature for s in settings], device=device)
        probs = torch.softmax(logits.double() / temperature[:, None], dim=-1)
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
