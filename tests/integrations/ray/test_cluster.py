"""`hibachi.integrations.ray` on a real local Ray cluster (one for the module).

Each test deploys its own small application: one replica with one batcher.
Ray's start-up takes 5 to 30 s on a shared 2-core machine; each test runs a
few seconds after it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import hibachi  # noqa: E402
from hibachi.integrations.ray import (  # noqa: E402
    ReplicaLost,
    ReplicaStats,
    call,
    deployment,
    stream,
)

# The models and gates below are defined here, not in an importable module:
# cloudpickle must ship them to the replicas by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Ray starts its processes with fork+exec; JAX, imported by other test modules,
# warns at every fork of a process it runs threads in.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]

STOP = -1
POISON = 99  # a prompt ending in POISON makes the model raise
DEATH = 66  # ... or stop its engine (SystemExit: the engine dies)
EXIT = 77  # ... or end its replica's process, as a crash would
WAIT = 60.0  # the most a test waits for the cluster to act (health check, replacement)


def counting_model(tokens: Any, mask: Any) -> Any:
    """Each row's next token is its last plus one; a few ms per step."""
    time.sleep(0.005)
    last = tokens[:, -1]
    if (last == POISON).any():
        raise ValueError("poisoned prompt")
    if (last == DEATH).any():
        raise SystemExit("the engine is told to die")
    if (last == EXIT).any():
        os._exit(1)
    return last + 1


def make_counting_batcher(max_batch_size: int = 4) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        counting_model,
        stop_token=np.int64(STOP),
        pad_value=np.int64(0),
        max_batch_size=max_batch_size,
    )


@ray.remote(num_cpus=0)
class Gate:
    """Holds a model call until the test opens it (an Event across processes)."""

    def __init__(self) -> None:
        self._open = asyncio.Event()

    async def wait(self) -> None:
        await self._open.wait()

    def open(self) -> None:
        self._open.set()


def doubling_model(gate: Any, batch: Any) -> Any:
    if (batch < 0).any():
        raise ValueError("negative input")
    if (batch == 0).any():
        ray.get(gate.wait.remote())
    return batch * 2


def make_doubling_batcher(gate: Any) -> hibachi.FeedforwardBatcher:
    model = functools.partial(doubling_model, gate)
    return hibachi.FeedforwardBatcher(model, max_batch_size=1, max_queue_size=1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """A local 2-CPU Ray cluster with Serve, its files under /tmp, no dashboard;
    the port of Serve's HTTP proxy on 127.0.0.1."""
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def run_app(app: Any, name: str) -> Any:
    return serve.run(app, name=name, route_prefix=None)


def small(make: Callable[[], Any], **options: Any) -> Any:
    """A one-replica deployment that leaves the cluster's CPUs to the others."""
    options.setdefault("ray_actor_options", {"num_cpus": 0.25})
    return deployment(make, num_replicas=1, **options)


async def until(check: Callable[[ReplicaStats], bool], handle: Any) -> ReplicaStats:
    """Poll the replica's stats until ``check`` holds (or WAIT passes)."""
    deadline = time.monotonic() + WAIT
    while True:
        stats: ReplicaStats = await handle.stats.remote()
        if check(stats) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.1)


def arun(main: Awaitable[Any]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main, 2 * WAIT)

    return asyncio.run(bounded())


@pytest.fixture(scope="module")
def counting(cluster: int) -> Iterator[Any]:
    yield run_app(small(make_counting_batcher, max_batch_size=4), "counting")
    serve.delete("counting")


def test_tokens_stream_through_a_handle_and_errors_keep_their_types(counting: Any) -> None:
    async def main() -> None:
        response = counting.options(stream=True).run.remote(np.array([5, 7]), max_new_tokens=4)
        assert [int(t) async for t in response] == [8, 9, 10, 11]
        assert [int(t) for t in await stream(counting, np.array([1]), max_new_tokens=3).collect()]
        for prompt, kwargs, error in [
            (np.array([[1]]), {}, hibachi.InvalidRequest),
            (np.array([1]), {"max_new_tokens": 0}, hibachi.InvalidRequest),
            (np.array([POISON]), {}, hibachi.ModelError),
            (np.array([1]), {"max_new_tokens": 10**6, "timeout": 0.05}, hibachi.Timeout),
        ]:
            with pytest.raises(error) as caught:
                await stream(counting, prompt, **kwargs).collect()
            assert isinstance(caught.value, ray.exceptions.RayTaskError)

    arun(main())


def test_a_caller_that_leaves_frees_its_row(counting: Any) -> None:
    async def main() -> None:
        before = (await counting.stats.remote()).batcher.requests_cancelled
        async for _ in stream(counting, np.array([1]), max_new_tokens=10**6):
            break
        left = await until(lambda s: s.batcher.requests_in_flight == 0, counting)
        started = asyncio.Event()

        async def consume() -> None:
            async for _ in stream(counting, np.array([1]), max_new_tokens=10**6):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = await until(lambda s: s.batcher.requests_in_flight == 0, counting)
        assert (left.batcher.requests_in_flight, cancelled.batcher.requests_in_flight) == (0, 0)
        assert cancelled.batcher.requests_cancelled == before + 2

    arun(main())


def test_feedforward_through_a_handle_queue_full_crosses_too(cluster: int) -> None:
    gate = Gate.remote()
    make = functools.partial(make_doubling_batcher, gate)
    handle = run_app(small(make, max_batch_size=1, max_ongoing_requests=8), "doubling")

    async def main() -> None:
        assert (await call(handle, np.arange(1, 4))).tolist() == [2, 4, 6]
        with pytest.raises(hibachi.ModelError):
            await call(handle, np.array([-1]))
        with pytest.raises(hibachi.InvalidRequest):
            await call(handle, "not an array")
        held = handle.run.remote(np.array([0]))
        await until(lambda s: s.health.in_model_for is not None, handle)
        queued = handle.run.remote(np.array([3]))
        await until(lambda s: s.batcher.queue_depth == 1, handle)
        with pytest.raises(hibachi.QueueFull):
            await call(handle, np.array([4]))
        await gate.open.remote()
        assert ((await held).tolist(), (await queued).tolist()) == ([0], [6])

    try:
        arun(main())
    finally:
        serve.delete("doubling")


def test_a_replica_whose_engine_died_is_replaced(cluster: int) -> None:
    app = small(make_counting_batcher, max_batch_size=4, health_check_period_s=0.5)
    handle = run_app(app, "fragile")

    async def main() -> None:
        first: ReplicaStats = await handle.stats.remote()
        with pytest.raises(hibachi.HibachiError):
            await stream(handle, np.array([DEATH])).collect()
        after = await until(lambda s: s.replica != first.replica and s.health.ok(), handle)
        assert after.replica != first.replica and after.health.ok()
        assert [int(t) async for t in stream(handle, np.array([1]), max_new_tokens=2)] == [2, 3]

    try:
        arun(main())
    finally:
        serve.delete("fragile")


def gated_counting_model(gate: Any, tokens: Any, mask: Any) -> Any:
    """`counting_model` that holds the step after token 10 until the gate opens."""
    if (tokens[:, -1] == 10).any():
        ray.get(gate.wait.remote())
    return tokens[:, -1] + 1


def make_gated_batcher(gate: Any) -> hibachi.AutoregressiveBatcher:
    model = functools.partial(gated_counting_model, gate)
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(STOP), pad_value=np.int64(0), max_batch_size=4
    )


def test_shutdown_drains_the_requests_in_flight(cluster: int) -> None:
    gate = Gate.remote()
    make = functools.partial(make_gated_batcher, gate)
    handle = run_app(small(make, max_batch_size=4, graceful_shutdown_wait_loop_s=0.1), "draining")

    async def main() -> list[int]:
        loop = aiter(stream(handle, np.array([0]), max_new_tokens=20))
        first = int(await anext(loop))
        deleting = asyncio.create_task(asyncio.to_thread(serve.delete, "draining"))
        await asyncio.to_thread(wait_while_running, "draining")
        await gate.open.remote()
        rest = [int(t) async for t in loop]
        await deleting
        return [first, *rest]

    assert arun(main()) == list(range(1, 21))
    assert app_status("draining") is None


def wait_while_running(name: str) -> None:
    """Until Serve has begun deleting application ``name``."""
    deadline = time.monotonic() + WAIT
    while app_status(name) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.05)


def app_status(name: str) -> str | None:
    app = serve.status().applications.get(name)
    return None if app is None else str(app.status.value)


def build_small_app() -> Any:
    from hibachi.serve import ServeSettings, create_app, tiny_language_model

    settings = ServeSettings(max_batch_size=4, max_length=2048)
    return create_app(tiny_language_model(), None, settings=settings)


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the app's /metrics, read through Serve's proxy."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    raise AssertionError(f"no {name} {labels} in /metrics")


def until_metric(port: int, value: float, name: str, **labels: str) -> float:
    deadline = time.monotonic() + WAIT
    while (found := metric(port, name, **labels)) != value and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


def test_the_openai_app_serves_through_serves_http_ingress(cluster: int) -> None:
    openai = pytest.importorskip("openai")
    from hibachi.serve._ray import http_deployment

    app = http_deployment(
        build_small_app, max_batch_size=4, num_replicas=1, ray_actor_options={"num_cpus": 0.25}
    )
    serve.run(app, name="http", route_prefix="/")
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{cluster}/v1", api_key="unused")
        model = client.models.list().data[0].id
        whole = client.completions.create(model=model, prompt="hello", max_tokens=4, temperature=0)
        chunks = client.completions.create(
            model=model, prompt="hello", max_tokens=4, temperature=0, stream=True
        )
        streamed = "".join(chunk.choices[0].text for chunk in chunks)
        assert whole.usage is not None and whole.usage.completion_tokens == 4
        assert streamed == whole.choices[0].text
        left = client.completions.create(
            model=model, prompt="hello", max_tokens=2000, temperature=0, stream=True
        )
        next(iter(left))
        left.close()  # the client disconnects: the replica's row is freed
        cancelled = until_metric(cluster, 1, "hibachi_requests_ended_total", reason="cancelled")
        assert cancelled == 1
        assert until_metric(cluster, 0, "hibachi_requests_running") == 0
    finally:
        serve.delete("http")


async def replica_counts(handle: Any, replicas: int) -> dict[str, int]:
    """Requests each replica has finished (Serve routes each call to one replica:
    ask until every replica has answered)."""
    seen: dict[str, int] = {}
    deadline = time.monotonic() + WAIT
    while len(seen) < replicas and time.monotonic() < deadline:
        stats: ReplicaStats = await handle.stats.remote()
        seen[stats.replica] = stats.batcher.requests_completed
    return seen


def test_a_burst_from_two_handles_splits_evenly_over_the_replicas(cluster: int) -> None:
    """2 fresh replicas of batch 4, 8 requests at once from two handles (two
    routers), each long enough that all are in flight together: each replica
    takes 4, within 20%."""
    app = deployment(
        make_counting_batcher, max_batch_size=4, num_replicas=2,
        ray_actor_options={"num_cpus": 0.25},
    )  # fmt: skip
    first = run_app(app, "split")
    second = serve.get_app_handle("split")

    async def main() -> list[int]:
        await asyncio.gather(
            *(
                stream(first if i % 2 else second, np.array([100]), max_new_tokens=200).collect()
                for i in range(8)
            )
        )
        return sorted((await replica_counts(first, 2)).values())

    try:
        split = arun(main())
    finally:
        serve.delete("split")
    assert len(split) == 2 and all(3.2 <= n <= 4.8 for n in split), split


def test_a_stream_whose_replica_dies_raises_replica_lost(cluster: int) -> None:
    handle = run_app(small(make_counting_batcher, max_batch_size=4), "crashing")

    async def main() -> list[int]:
        got: list[int] = []
        with pytest.raises(ReplicaLost) as caught:
            async for token in stream(handle, np.array([EXIT - 3]), max_new_tokens=10):
                got.append(int(token))
        assert isinstance(caught.value.__cause__, ray.exceptions.RayActorError)
        return got

    try:
        assert arun(main()) == [EXIT - 2, EXIT - 1, EXIT]
    finally:
        serve.delete("crashing")
