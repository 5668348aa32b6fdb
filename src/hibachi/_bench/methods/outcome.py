"""What a way of serving the generation workload's requests gave each client, and when."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Outcome", "trim"]


@dataclass
class Outcome:
    """The tokens each request received, when its first and its last token came (seconds
    from the moment every client had arrived), the wall time."""

    tokens: list[list[int]]
    first_token: list[float]
    seconds: float
    last_token: list[float] | None = None
    outside_model: float | None = None  # hibachi's share of its busy time outside model.forward
    outside_step: float | None = None  # hibachi's share of its busy time outside the adapter's step
    rows_at_once: int | None = None  # hibachi: the most requests in flight at once
    peak_kv_bytes: int | None = (
        None  # hibachi's paged cache: its most blocks held at once, in bytes
    )
    prefix_hit_rate: float | None = None  # hibachi's paged cache: prompt tokens found cached

    @property
    def tokens_per_s(self) -> float:
        return sum(map(len, self.tokens)) / self.seconds

    def per_output_token(self) -> list[float]:
        """Each request's time per output token after its first (seconds), as ``vllm bench
        serve``'s TPOT; NaN for a request of fewer than two tokens or with no last time."""
        if self.last_token is None:
            return [math.nan] * len(self.tokens)
        pairs = zip(self.tokens, self.first_token, self.last_token, strict=True)
        return [
            (last - first) / (len(t) - 1) if len(t) > 1 else math.nan for t, first, last in pairs
        ]


def trim(tokens: list[int], budget: int, eos: int) -> list[int]:
    """What a caller receives: at most ``budget`` tokens, ending at the first ``eos``."""
    tokens = tokens[:budget]
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens
