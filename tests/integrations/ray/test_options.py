"""`hibachi.integrations.ray` without a cluster: Serve's defaults for a batcher,
the replica class driven directly, and Ray kept out of ``import hibachi``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray.serve")

import hibachi
from hibachi.integrations.ray import (
    FewestInFlightRouter,
    ReplicaUnhealthy,
    deployment,
    serve_options,
)
from hibachi.integrations.ray._replica import BatcherReplica


def test_import_hibachi_does_not_import_ray() -> None:
    code = "import sys, hibachi; sys.exit('ray' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_defaults_fit_the_batch_size_and_route_to_the_least_busy_replica() -> None:
    options = serve_options(8)
    router = options.pop("request_router_config").request_router_class
    assert options == {"name": "hibachi", "max_ongoing_requests": 16}
    assert router == f"{FewestInFlightRouter.__module__}.{FewestInFlightRouter.__name__}"


def test_autoscaling_targets_a_full_batch_unless_told_otherwise() -> None:
    scaling = {"min_replicas": 1, "max_replicas": 4}
    assert serve_options(8, autoscaling_config=scaling)["autoscaling_config"] == {
        "target_ongoing_requests": 8,
        **scaling,
    }
    assert serve_options(8, num_replicas="auto")["autoscaling_config"] == {
        "target_ongoing_requests": 8
    }
    told = serve_options(8, autoscaling_config={"target_ongoing_requests": 3})
    assert told["autoscaling_config"] == {"target_ongoing_requests": 3}


def test_any_serve_option_overrides_the_defaults() -> None:
    options = serve_options(8, name="embedder", max_ongoing_requests=3, request_router_config=None)
    assert options == {"name": "embedder", "max_ongoing_requests": 3, "request_router_config": None}


@pytest.mark.parametrize("size", [0, -1, 2.0, True, None])
def test_a_bad_batch_size_is_a_configuration_error(size: Any) -> None:
    with pytest.raises(hibachi.ConfigurationError):
        serve_options(size)


def test_deployment_reads_the_batch_size_from_an_unopened_batcher() -> None:
    def make() -> hibachi.FeedforwardBatcher:
        return hibachi.FeedforwardBatcher(lambda x: x, max_batch_size=5)

    app = deployment(make, num_replicas=3)
    config = app._bound_deployment._deployment_config
    assert (config.max_ongoing_requests, config.num_replicas) == (10, 3)


def test_a_replica_serves_until_closed_then_is_unhealthy() -> None:
    async def main() -> None:
        replica = BatcherReplica(lambda: hibachi.FeedforwardBatcher(lambda x: x + 1), 60.0)
        await replica.check_health()
        assert (await replica.run(np.array([1]))).tolist() == [2]
        with pytest.raises(hibachi.InvalidRequest):
            await replica.run("not an array")
        replica.__del__()
        with pytest.raises(ReplicaUnhealthy):
            await replica.check_health()

    asyncio.run(main())


def test_make_batcher_must_return_a_batcher() -> None:
    with pytest.raises(hibachi.ConfigurationError):
        BatcherReplica(lambda: "not a batcher", 60.0)  # type: ignore[arg-type, return-value]


def test_the_cli_reads_replicas_and_autoscale_bounds() -> None:
    from hibachi._cli import _parser
    from hibachi.serve._ray import scaling_options

    args = _parser().parse_args(["serve", "--autoscale", "1,3", "--ray-address", "auto"])
    assert (args.autoscale, args.ray_address, args.replicas) == ((1, 3), "auto", None)
    assert scaling_options(args.replicas, args.autoscale) == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 3}
    }
    assert scaling_options(2, None) == {"num_replicas": 2}
    for bad in ["3,1", "0,2", "2", "a,b"]:
        with pytest.raises(SystemExit):
            _parser().parse_args(["serve", "--autoscale", bad])


def test_an_http_replica_is_unhealthy_once_a_batcher_of_its_app_is_closed() -> None:
    from types import SimpleNamespace

    from hibachi.serve._ray._replica import AppReplica

    batcher = hibachi.FeedforwardBatcher(lambda x: x)
    engine = SimpleNamespace(name="embedder", batcher=batcher)
    settings = SimpleNamespace(stuck_after=30.0)
    state = SimpleNamespace(language=None, embedder=engine, settings=settings)
    replica = AppReplica(lambda: SimpleNamespace(state=SimpleNamespace(hibachi=state)))
    replica.__serve_build_asgi_app__()

    async def main() -> None:
        with batcher:
            await replica.check_health()
        with pytest.raises(ReplicaUnhealthy):
            await replica.check_health()

    asyncio.run(main())
