"""What a way of serving the generation workload's requests gave each client, and when."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Outcome", "trim"]


@dataclass
class Outcome:
    """The tokens each request received, when its first token came, the wall time."""

    tokens: list[list[int]]
    first_token: list[float]
    seconds: float
    outside_model: float | None = None  # hibachi's share of its busy time outside model.forward
    outside_step: float | None = None  # hibachi's share of its busy time outside the adapter's step

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.tokens)) / self.seconds


def trim(tokens: list[int], budget: int, eos: int) -> list[int]:
    """What a caller receives: at most ``budget`` tokens, ending at the first ``eos``."""
    tokens = tokens[:budget]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
