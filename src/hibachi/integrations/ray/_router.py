"""`FewestInFlightRouter`: each request to the replica with the fewest requests in flight.

Serve's default router ("power of two choices") first tries the replicas on
its own node, and in a burst it assigns many requests from the same stale
view of the replicas' queues: one replica then takes nearly everything until
it holds ``max_ongoing_requests``. A batcher wants the opposite: a burst of
``replicas * max_batch_size`` requests split evenly, so that every replica's
batch fills.

This router ignores locality and ranks every replica by its load: the
requests this router has in flight there (counted when sent, uncounted when
they end), or the replica's own count when that is higher, plus the requests
this router has just chosen it for and not yet sent. Equals are taken at
random. A replica reports its own count, which holds other routers' requests
too (one router per handle, one per Serve HTTP proxy), when it accepts a
request; a count older than ``FRESH_S`` is asked for again before choosing.
Each routing task sends the request it chose for (Serve's default matching,
no FIFO mixin), so that a choice is counted once, for the replica it names.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter, defaultdict, deque
from typing import Any

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

__all__ = ["FewestInFlightRouter"]

CHOICE_TTL_S = 1.0  # a choice never sent (cancelled, or its replica was full) stops counting
FRESH_S = 0.1  # a replica's own count older than this is asked for again
ASK_DEADLINE_S = 0.1  # a replica that does not answer in time keeps its older count


class FewestInFlightRouter(RequestRouter):  # type: ignore[misc]
    """A Serve request router that sends each request to the least busy replica.

    `hibachi.integrations.ray.serve_options` sets it (``request_router_config``);
    any deployment can use it:
    ``RequestRouterConfig(request_router_class=FewestInFlightRouter)``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sent: Counter[ReplicaID] = Counter()
        self._chosen: defaultdict[ReplicaID, deque[float]] = defaultdict(deque)
        self._reported_at: dict[ReplicaID, float] = {}

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Every replica in its own rank, least loaded first: Serve sends the
        request to the first with room."""
        if not candidate_replicas:
            return []
        await self._ask_stale(candidate_replicas)
        now = time.monotonic()
        shuffled = random.sample(candidate_replicas, len(candidate_replicas))
        ranked = sorted(shuffled, key=lambda r: self._load(r.replica_id, now))
        self._chosen[ranked[0].replica_id].append(now)
        return [[replica] for replica in ranked]

    def on_new_queue_len_info(self, replica_id: ReplicaID, num_ongoing_requests: int) -> None:
        super().on_new_queue_len_info(replica_id, num_ongoing_requests)
        self._reported_at[replica_id] = time.monotonic()

    def on_send_request(self, replica_id: ReplicaID) -> None:
        super().on_send_request(replica_id)
        self._sent[replica_id] += 1
        chosen = self._chosen.get(replica_id)
        if chosen:
            chosen.popleft()

    def on_request_completed(self, replica_id: ReplicaID, internal_request_id: str) -> None:
        super().on_request_completed(replica_id, internal_request_id)
        if self._sent[replica_id] > 0:
            self._sent[replica_id] -= 1

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        running = {r.replica_id for r in replicas}
        for counts in (self._sent, self._chosen, self._reported_at):
            for gone in [replica for replica in counts if replica not in running]:
                del counts[gone]

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._sent.pop(replica_id, None)
        self._chosen.pop(replica_id, None)
        self._reported_at.pop(replica_id, None)

    async def _ask_stale(self, replicas: list[RunningReplica]) -> None:
        """Ask each replica whose own count is older than ``FRESH_S`` for it, at once."""
        now = time.monotonic()
        stale = [
            r for r in replicas if now - self._reported_at.get(r.replica_id, -math.inf) > FRESH_S
        ]
        if not stale:
            return
        asked = (
            asyncio.wait_for(r.get_queue_len(deadline_s=ASK_DEADLINE_S), ASK_DEADLINE_S)
            for r in stale
        )
        answers = await asyncio.gather(*asked, return_exceptions=True)
        asked_at = time.monotonic()
        for replica, answer in zip(stale, answers, strict=True):
            self._reported_at[replica.replica_id] = asked_at  # asked once per FRESH_S, at most
            if isinstance(answer, int):
                self.on_new_queue_len_info(replica.replica_id, answer)

    def _load(self, replica_id: ReplicaID, now: float) -> int:
        chosen = self._chosen[replica_id]
        while chosen and chosen[0] < now - CHOICE_TTL_S:
            chosen.popleft()
        reported = self.replica_queue_len_cache.get(replica_id) or 0
        return max(self._sent[replica_id], reported) + len(chosen)
