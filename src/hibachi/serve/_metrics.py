"""`Metrics`: what ``GET /metrics`` shows, in Prometheus' text format.

Each app has its own registry, so several apps (tests, a host service)
never share counters. Requests running and waiting, the KV cache's usage,
prefix-cache hits and preemptions are read from the batchers' own
``stats()`` at scrape time; the rest is recorded as requests go by.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["REASONS", "Metrics", "Reason"]

Reason = Literal[
    "finished", "stop", "budget", "cancelled", "timed_out", "failed", "refused", "shutdown"
]
REASONS: tuple[Reason, ...] = (
    "finished",
    "stop",
    "budget",
    "cancelled",
    "timed_out",
    "failed",
    "refused",
    "shutdown",
)

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_PER_TOKEN = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
_FILL = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


class Metrics:
    """Every series the server exports; thread-safe (the engines record batch fill)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "hibachi_time_to_first_token_seconds",
            "From a request's arrival to its first token.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.per_token = Histogram(
            "hibachi_time_per_output_token_seconds",
            "Mean time between a request's tokens after its first.",
            ["model"],
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.e2e = Histogram(
            "hibachi_e2e_request_latency_seconds",
            "From a request's arrival to its end.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.queue_time = Histogram(
            "hibachi_queue_time_seconds",
            "From a request's arrival to the first model step that takes it in.",
            ["model"],
            buckets=_LATENCY,
            registry=r,
        )
        self.batch_fill = Histogram(
            "hibachi_batch_fill_ratio",
            "Rows in a generation step over max_batch_size.",
            ["model"],
            buckets=_FILL,
            registry=r,
        )
        self.generated = Counter(
            "hibachi_generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.prompt = Counter(
            "hibachi_prompt_tokens", "Prompt tokens taken in.", ["model"], registry=r
        )
        self.ended = Counter(
            "hibachi_requests_ended",
            "Requests ended, by reason: finished (embeddings), stop, budget, cancelled "
            "(the client went away), timed_out, failed, refused, shutdown.",
            ["model", "reason"],
            registry=r,
        )
        self._batchers: dict[str, Any] = {}
        r.register(_BatcherCollector(self._batchers))

    def watch(self, model: str, batcher: Any) -> None:
        """Export ``batcher``'s running and waiting requests under ``model``."""
        self._batchers[model] = batcher
        for reason in REASONS:
            self.ended.labels(model, reason)

    def end(self, model: str, reason: Reason) -> None:
        self.ended.labels(model, reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _BatcherCollector(Collector):
    def __init__(self, batchers: dict[str, Any]) -> None:
        self._batchers = batchers

    def collect(self) -> Iterator[Metric]:
        running = GaugeMetricFamily(
            "hibachi_requests_running", "Requests the model is working on.", labels=["model"]
        )
        waiting = GaugeMetricFamily(
            "hibachi_requests_waiting", "Requests queued for the model.", labels=["model"]
        )
        usage = GaugeMetricFamily(
            "hibachi_kv_cache_usage_ratio",
            "The share of the KV cache budget's blocks held by running requests (0-1).",
            labels=["model"],
        )
        queries = CounterMetricFamily(
            "hibachi_prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            labels=["model"],
        )
        hits = CounterMetricFamily(
            "hibachi_prefix_cache_hits",
            "Prompt tokens found in the prefix cache (not computed again).",
            labels=["model"],
        )
        preempted = CounterMetricFamily(
            "hibachi_requests_preempted",
            "Times a request was preempted for memory (queued again, recomputed later).",
            labels=["model"],
        )
        for model, batcher in self._batchers.items():
            stats = batcher.stats()
            running.add_metric([model], stats.requests_in_flight)
            waiting.add_metric([model], stats.queue_depth)
            memory = getattr(stats, "memory", None)
            if memory is not None:
                usage.add_metric([model], memory.usage)
                queries.add_metric([model], memory.prefix_cache_queries)
                hits.add_metric([model], memory.prefix_cache_hits)
                preempted.add_metric([model], stats.requests_preempted)
        yield from (running, waiting, usage, queries, hits, preempted)
