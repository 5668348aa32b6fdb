"""A run's figures, as ``vllm bench serve`` defines them.

- request throughput: completed requests / the run's wall time; output
  throughput: their output tokens / the wall time;
- TTFT: from sending a request to its first chunk of content;
- TPOT: per request, (end-to-end latency - TTFT) / (output tokens - 1);
- ITL: every gap between successive chunks of content, of every request
  (a chunk that carries several tokens is one gap);
- goodput: requests per second that met every SLO (TTFT and TPOT within
  their bounds); a one-token answer's TPOT counts as 0.

Percentiles are NumPy's (linear interpolation), over completed requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..results import Value
from .schedule import Run

__all__ = ["Slo", "summarise"]


@dataclass(frozen=True)
class Slo:
    """A service-level objective: the most time to first token and per output token, in ms."""

    ttft_ms: float
    tpot_ms: float

    def met(self, ttft: float, tpot: float) -> bool:
        return ttft * 1e3 <= self.ttft_ms and tpot * 1e3 <= self.tpot_ms


def summarise(run: Run, slo: Slo) -> dict[str, Value]:
    """The run's figures: a row of the serving table (times in ms)."""
    done = [r for r in run.records if r.ok]
    tokens = [r.tokens for r in done]
    good = sum(slo.met(r.ttft, r.tpot) for r in done)
    itl = [gap for r in done for gap in r.itl]
    return {
        "requests": f"{len(done)}/{len(run.records)}",
        "failed": len(run.records) - len(done),
        "seconds": run.seconds,
        "request_throughput": len(done) / run.seconds,
        "output_throughput": sum(tokens) / run.seconds,
        "goodput": good / run.seconds,
        "output_tokens": f"{min(tokens)}-{max(tokens)}" if tokens else "—",
        "output_tokens_total": sum(tokens),
        **_percentiles("ttft", [r.ttft for r in done]),
        **_percentiles("tpot", [r.tpot for r in done if r.tokens > 1]),
        **_percentiles("itl", itl),
        **_percentiles("e2el", [r.latency for r in done]),
    }


def _percentiles(name: str, seconds: list[float]) -> dict[str, Value]:
    if not seconds:
        return {f"{name}_p50_ms": None, f"{name}_p99_ms": None}
    ms = np.asarray(seconds) * 1e3
    return {
        f"{name}_p50_ms": float(np.percentile(ms, 50)),
        f"{name}_p99_ms": float(np.percentile(ms, 99)),
    }
