"""`FewestInFlightRouter` driven directly, without a cluster: Serve calls
``choose_replicas`` for each request, then ``on_send_request`` and
``on_request_completed`` around it."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID
from ray.serve.request_router import ReplicaID

from hibachi.integrations.ray import FewestInFlightRouter
from hibachi.integrations.ray import _router as router_module


class Replica(SimpleNamespace):
    """A running replica as the router sees it; ``own`` is the count it reports,
    other routers' requests included, and ``asked`` how often it was asked."""

    max_ongoing_requests = 8
    own = 0
    asked = 0

    async def get_queue_len(self, *, deadline_s: float) -> int:
        self.asked += 1
        return self.own


DEPLOYMENT = DeploymentID(name="d", app_name="a")


@pytest.fixture(autouse=True)
def no_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow machine must not age a count or a choice between two steps of a test."""
    monkeypatch.setattr(router_module, "FRESH_S", 60.0)
    monkeypatch.setattr(router_module, "CHOICE_TTL_S", 60.0)


def rid(name: str) -> ReplicaID:
    return ReplicaID(unique_id=name, deployment_id=DEPLOYMENT)


def router_and_replicas(count: int) -> tuple[Any, list[Any]]:
    router = FewestInFlightRouter(
        deployment_id=DEPLOYMENT,
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
    )
    replicas = [Replica(replica_id=rid(f"r{i}")) for i in range(count)]
    return router, replicas


def route(router: Any, replicas: list[Any], *, send: bool) -> str:
    """One request as Serve routes it: the first rank is taken (it has room)."""
    ranks = asyncio.run(router.choose_replicas(replicas))
    chosen: ReplicaID = ranks[0][0].replica_id
    if send:
        router.on_send_request(chosen)
    return str(chosen.unique_id)


@pytest.mark.parametrize("send", [True, False], ids=["sent", "chosen-not-yet-sent"])
@pytest.mark.parametrize("count", [2, 3, 5])
def test_a_burst_splits_evenly(count: int, send: bool) -> None:
    router, replicas = router_and_replicas(count)
    split = Counter(route(router, replicas, send=send) for _ in range(4 * count))
    assert sorted(split.values()) == [4] * count


def test_every_replica_is_ranked_least_loaded_first() -> None:
    router, replicas = router_and_replicas(3)
    for _ in range(2):
        router.on_send_request(rid("r0"))
    router.on_send_request(rid("r1"))
    ranks = asyncio.run(router.choose_replicas(replicas))
    assert [rank[0].replica_id.unique_id for rank in ranks] == ["r2", "r1", "r0"]


def test_a_finished_request_frees_its_replica() -> None:
    router, replicas = router_and_replicas(2)
    first, second = route(router, replicas, send=True), route(router, replicas, send=True)
    assert {first, second} == {"r0", "r1"}
    router.on_request_completed(rid(first), "id")  # as Serve calls both when a request ends
    router.decrement_queue_len_cache(rid(first))
    assert route(router, replicas, send=True) == first


def test_a_replicas_own_count_wins_when_higher() -> None:
    """Another router's requests show in the count a replica reports."""
    router, replicas = router_and_replicas(2)
    replicas[0].own = 5
    router.on_new_queue_len_info(rid("r0"), 5)
    assert [route(router, replicas, send=True) for _ in range(5)] == ["r1"] * 5


def test_a_stale_count_is_asked_for_again_before_choosing() -> None:
    router, replicas = router_and_replicas(2)
    replicas[0].own = 3  # another router's requests
    assert route(router, replicas, send=True) == "r1"
    assert [r.asked for r in replicas] == [1, 1]
    route(router, replicas, send=True)  # the counts are fresh: nobody is asked
    assert [r.asked for r in replicas] == [1, 1]


def test_no_replicas_no_choice() -> None:
    router, _ = router_and_replicas(0)
    assert asyncio.run(router.choose_replicas([])) == []


def test_a_replica_removed_is_forgotten() -> None:
    router, replicas = router_and_replicas(2)
    for _ in range(3):
        router.on_send_request(rid("r0"))

    async def main() -> None:
        router.update_replicas([replicas[1]])
        router.update_replicas(replicas)  # r0 again, as new

    asyncio.run(main())
    assert router._sent[rid("r0")] == 0
