"""When the clients send: a fixed number at once, or Poisson arrivals at a rate.

`closed_loop`: ``clients`` clients, each sending its next request when its
last one ends, until the questions run out (``vllm bench serve
--max-concurrency``). `poisson`: each request sent at its own time, the gaps
drawn from an exponential distribution of mean ``1 / rate`` (seeded), with
no cap on how many are in flight (``--request-rate``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from .client import Record, Sender

__all__ = ["Run", "closed_loop", "poisson"]


@dataclass
class Run:
    """A run's records (in the order of the questions) and its wall time."""

    records: list[Record]
    seconds: float


async def closed_loop(sender: Sender, questions: list[str], max_tokens: int, clients: int) -> Run:
    """Every question sent by ``clients`` concurrent clients, each one at a time."""
    records: list[Record | None] = [None] * len(questions)
    order = iter(range(len(questions)))

    async def client() -> None:
        for i in order:  # a shared iterator: each client takes the next question
            records[i] = await sender.send(questions[i], max_tokens)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(min(clients, len(questions))):
            group.create_task(client())
    return Run([r for r in records if r is not None], time.perf_counter() - start)


async def poisson(
    sender: Sender, questions: list[str], max_tokens: int, rate: float, seed: int
) -> Run:
    """Every question sent at Poisson arrivals of ``rate`` requests per second."""
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=len(questions))
    arrivals = np.cumsum(gaps) - gaps[0]  # the first request goes at once
    records: list[Record | None] = [None] * len(questions)

    async def one(i: int) -> None:
        records[i] = await sender.send(questions[i], max_tokens)

    start = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for i, at in enumerate(arrivals):
            await asyncio.sleep(max(0.0, start + float(at) - time.perf_counter()))  # the arrival
            group.create_task(one(i))
    return Run([r for r in records if r is not None], time.perf_counter() - start)
