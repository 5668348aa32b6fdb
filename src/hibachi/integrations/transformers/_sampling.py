"""`Sampling`: how one request picks its tokens, checked field by field.

A request's ``options`` is None (greedy) or a mapping of the fields below, as
OpenAI's and vLLM's sampling parameters name them; `Sampler` applies them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from ..._core.values import describe_value
from ..._exceptions import InvalidRequest

__all__ = ["Sampling"]


@dataclass(frozen=True)
class Sampling:
    """How one request picks its tokens; built from a request's ``options`` by `parse`.

    Choosing among the tokens:

    - ``temperature``: a finite number >= 0; 0 (or one too small for float32)
      means greedy: the most likely token.
    - ``top_k``: an int in 0 … 2**63-1: sample among the ``top_k`` most likely
      tokens (and any tied with the last of them); 0 means off.
    - ``top_p``: a number in (0, 1]: sample among the fewest most likely
      tokens whose probabilities (after ``top_k``) add up to ``top_p`` (and
      any tied with the last of them); 1 means off.
    - ``seed``: None or an int in 0 … 2**63-1. A seeded request gets the same
      tokens whatever else shares its batch; an unseeded one draws at random.

    Changing the logits first, in this order, for greedy and sampled requests
    alike (as vLLM does):

    - ``logit_bias``: a mapping of token id (an int in 0 … vocabulary-1) to a
      number in [-100, 100], added to that token's logit.
    - ``min_tokens``: an int in 0 … 2**63-1, at most the request's budget: the
      stop token (EOS) cannot come before this many new tokens.
    - ``repetition_penalty``: a finite number > 0 (1 means off): the logit of
      every token in the prompt or generated so far is divided by it where
      positive and multiplied by it where negative, as transformers'
      ``RepetitionPenaltyLogitsProcessor`` does.
    - ``frequency_penalty`` and ``presence_penalty``: numbers in [-2, 2] (0
      means off): each token's logit loses ``frequency_penalty`` times the
      number of times it was generated so far, and ``presence_penalty`` if it
      was generated at all (the prompt does not count), as OpenAI defines them.

    And ``ignore_eos`` (a bool): the stop token does not end the request,
    which runs to its budget; it is then an ordinary token, which is still
    kept from coming before ``min_tokens``.

    Every field is checked when a `Sampling` is made, directly or by `parse`;
    anything else raises `InvalidRequest` naming the field and its range.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    logit_bias: Mapping[int, float] = field(default_factory=dict)
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: the checked values replace the given ones
        put(self, "temperature", _real("temperature", self.temperature, _at_least_zero, ">= 0"))
        put(self, "top_k", _count("top_k", self.top_k))
        put(self, "top_p", _real("top_p", self.top_p, _probability, "in (0, 1]"))
        put(self, "seed", None if self.seed is None else _count("seed", self.seed))
        put(self, "logit_bias", _bias(self.logit_bias))
        put(self, "min_tokens", _count("min_tokens", self.min_tokens))
        repetition = _real("repetition_penalty", self.repetition_penalty, _positive, "> 0")
        put(self, "repetition_penalty", repetition)
        for name in ("frequency_penalty", "presence_penalty"):
            put(self, name, _real(name, getattr(self, name), _penalty, "in [-2, 2]"))
        put(self, "ignore_eos", _flag("ignore_eos", self.ignore_eos))

    def __hash__(self) -> int:
        values = [getattr(self, f.name) for f in fields(self)]
        return hash(tuple(frozenset(v.items()) if isinstance(v, Mapping) else v for v in values))

    @property
    def greedy(self) -> bool:
        """Whether the most likely token is taken (after `adjusts_logits`' changes)."""
        return self.temperature < _SMALLEST_TEMPERATURE

    @property
    def adjusts_logits(self) -> bool:
        """Whether any of ``logit_bias``, ``min_tokens`` or the penalties is on."""
        return bool(
            self.logit_bias
            or self.min_tokens
            or self.repetition_penalty != 1
            or self.frequency_penalty
            or self.presence_penalty
        )

    @classmethod
    def parse(cls, options: object) -> Sampling:
        """The settings in a request's ``options``, or InvalidRequest saying what is wrong."""
        if options is None:
            return GREEDY
        if isinstance(options, Sampling):
            return options
        if not isinstance(options, Mapping):
            raise InvalidRequest(
                f"options must be a mapping such as {{'temperature': 0.7}}, "
                f"got {type(options).__name__}"
            )
        unknown = set(options) - _NAMES
        if unknown:
            raise InvalidRequest(
                f"unknown options {sorted(map(str, unknown))[:8]}: "
                f"expected {', '.join(f.name for f in fields(cls))}"
            )
        return cls(**options)


_SMALLEST_TEMPERATURE = float(np.finfo(np.float32).tiny)
_MAX_COUNT = 2**63 - 1
_MAX_BIAS = 100.0


def _at_least_zero(value: float) -> bool:
    return value >= 0


def _positive(value: float) -> bool:
    return value > 0


def _probability(value: float) -> bool:
    return 0 < value <= 1


def _penalty(value: float) -> bool:
    return -2 <= value <= 2


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


def _bias_range(value: float) -> bool:
    return -_MAX_BIAS <= value <= _MAX_BIAS


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool | np.bool_):
        raise InvalidRequest(f"option {name} must be a bool, got {describe_value(value)}")
    return bool(value)


def _bias(value: object) -> Mapping[int, float]:
    """``logit_bias`` as a new {token id: bias} dict of plain ints and floats."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(
            f"option logit_bias must be a mapping of token id to bias, got {describe_value(value)}"
        )
    checked = {}
    for token, bias in value.items():
        number = None
        if isinstance(token, numbers.Integral) and not isinstance(token, bool | np.bool_):
            number = int(token)
        if number is None or not 0 <= number <= _MAX_COUNT:
            raise InvalidRequest(
                "option logit_bias's keys must be token ids (ints in 0 … 2**63-1), "
                f"got {describe_value(token)}"
            )
        name = f"logit_bias[{number}]"
        checked[number] = _real(name, bias, _bias_range, "in [-100, 100]")
    return checked


_NAMES = frozenset(f.name for f in fields(Sampling))
GREEDY = Sampling()
