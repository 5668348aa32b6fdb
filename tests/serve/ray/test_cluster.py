"""``hibachi serve --replicas 2 --ray-address`` on a real cluster of two raylets on
this host (`LocalCluster`: ``ray start --head``, ``ray start --address``, token
authentication on), one CPU per node, so one replica per node.

The tests run in order on one deployment, as an operator would meet it:
joined, an even burst, a node lost, then SIGINT. Starting the cluster and the
server takes 30 to 60 s on a shared 2-core machine.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("fastapi")

from prometheus_client.parser import text_string_to_metric_families

from support.ray_cluster import LocalCluster, free_port
from support.serve import RawStream

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")]

HIBACHI = str(Path(sys.executable).with_name("hibachi"))
BATCH = 4
GRACE = 2.0
WAIT = 120.0  # the most a test waits for the cluster or the server to act
STOPPED = ("stop", "budget")  # a completion that ran to its end


@dataclass
class Stream:
    """One streamed completion, read on a thread: its events, and how it ended."""

    events: list[str] = field(default_factory=list)
    status: int = 0
    begun: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0
    failure: str | None = None

    @property
    def last(self) -> str:
        return self.events[-1] if self.events else ""

    @property
    def error_code(self) -> str | None:
        if not self.last.startswith('{"error"'):
            return None
        code: str = json.loads(self.last)["error"]["code"]
        return code

    @property
    def ended_cleanly(self) -> bool:
        """With ``[DONE]`` or an error event: never a connection cut short."""
        return self.failure is None and (self.last == "[DONE]" or self.error_code is not None)


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=WAIT)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def health(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/health")
        return status, json.loads(body)

    def until_health(self, check: Callable[[int, dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                status, body = self.health()
                if check(status, body):
                    return body
            except OSError:
                assert self.process.poll() is None, "the server exited"
            assert time.monotonic() < deadline, "the server did not reach the awaited health"
            time.sleep(0.5)

    def samples(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        status, body = self.get("/metrics")
        assert status == 200
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples
        }

    def finished_by_replica(self) -> dict[str, float]:
        """Completions each replica finished (at a stop token or their budget)."""
        finished: dict[str, float] = {}
        for (name, labels), value in self.samples().items():
            label = dict(labels)
            ended = name == "hibachi_requests_ended_total" and label.get("reason") in STOPPED
            if ended and label.get("model") == "hibachi-llama":
                finished[label["replica"]] = finished.get(label["replica"], 0.0) + value
        return finished

    def streams(self, *budgets: int) -> tuple[list[Stream], list[threading.Thread]]:
        """One streamed completion per budget, each on its own thread."""
        streams = [Stream() for _ in budgets]
        threads = [
            threading.Thread(target=self._read, args=(s, n), daemon=True)
            for s, n in zip(streams, budgets, strict=True)
        ]
        for thread in threads:
            thread.start()
        return streams, threads

    def _read(self, stream: Stream, budget: int) -> None:
        body = {"prompt": "hello", "max_tokens": budget, "temperature": 0, "stream": True}
        data = json.dumps(body).encode()
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=WAIT) as sock:
                sock.sendall(
                    f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                    f"application/json\r\nContent-Length: {len(data)}\r\nConnection: close"
                    "\r\n\r\n".encode()
                    + data
                )
                raw = RawStream(sock)
                raw.read_head()
                stream.status = raw.status
                for event in raw.events():
                    stream.events.append(event)
                    stream.begun.set()
        except OSError as exc:
            stream.failure = repr(exc)
        finally:
            stream.ended_at = time.monotonic()
            stream.begun.set()


def join(threads: list[threading.Thread]) -> None:
    deadline = time.monotonic() + WAIT
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), "a stream did not end"


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster((1, 1)) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def server(cluster: LocalCluster) -> Iterator[Server]:
    port = free_port()
    args = [
        HIBACHI,
        "serve",
        "--model",
        "tiny",
        "--replicas",
        "2",
        "--ray-address",
        cluster.address,
    ]
    args += ["--port", str(port), "--max-batch-size", str(BATCH), "--max-length", "4096"]
    args += ["--shutdown-grace", str(GRACE)]
    with (cluster.temp / "serve.log").open("wb") as log:
        process = subprocess.Popen(args, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield Server(port, process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_the_cli_joins_a_token_cluster_by_its_address(
    cluster: LocalCluster, server: Server
) -> None:
    assert "RAY_AUTH_MODE" not in cluster.env  # as Ray's CLI, the token alone is enough
    body = server.until_health(lambda status, body: body.get("status") == "ok")
    assert body["deployment"] == {"status": "HEALTHY", "replicas": {"RUNNING": 2}, "message": ""}
    assert len(body["replicas"]) == 2


def test_a_wrong_token_is_refused_with_the_fix_named(cluster: LocalCluster) -> None:
    wrong = cluster.temp / "wrong-token"
    wrong.write_text("0" * 64)
    env = {**cluster.env, "RAY_AUTH_TOKEN_PATH": str(wrong)}
    env["RAY_gcs_server_port_wait_time_s"] = "2"  # Ray retries 20 s by default
    code = "import sys; from hibachi.integrations.ray import connect; connect(sys.argv[1])"
    joined = subprocess.run(
        [sys.executable, "-c", code, cluster.address],
        env=env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=False,
    )
    assert joined.returncode != 0
    assert "ClusterUnreachable" in joined.stderr and "refused this process's token" in joined.stderr
    assert "ray get-auth-token" in joined.stderr


def test_a_burst_of_replicas_times_batch_streams_splits_evenly(server: Server) -> None:
    server.until_health(lambda status, body: body.get("status") == "ok")
    before = server.finished_by_replica()
    streams, threads = server.streams(*[300] * (2 * BATCH))
    join(threads)
    assert all(s.last == "[DONE]" for s in streams)
    after = server.finished_by_replica()
    split = sorted(after[r] - before.get(r, 0.0) for r in after)
    assert len(split) == 2 and all(0.8 * BATCH <= n <= 1.2 * BATCH for n in split), split


def test_losing_a_node_ends_its_streams_with_an_error_event(
    cluster: LocalCluster, server: Server
) -> None:
    streams, threads = server.streams(*[1500] * (2 * BATCH))
    for stream in streams:
        assert stream.begun.wait(WAIT)
    cluster.kill_node(1)
    join(threads)
    assert all(s.ended_cleanly for s in streams), [s.last[:80] or s.failure for s in streams]
    lost = [s for s in streams if s.error_code == "replica_lost"]
    assert lost and all(s.last == "[DONE]" for s in streams if s not in lost)
    body = server.until_health(lambda status, body: body.get("status") == "degraded")
    assert server.health()[0] == 200 and body["replicas"]
    front = server.samples()[("hibachi_front_requests_ended_total", (("outcome", "replica_lost"),))]
    assert front == len(lost)


def test_sigint_drains_then_exits_0_and_leaves_no_actors(
    cluster: LocalCluster, server: Server
) -> None:
    streams, threads = server.streams(20, 20, 4000, 4000)
    for stream in streams:
        assert stream.begun.wait(WAIT)
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGINT)
    try:
        refused = server.get("/v1/models")[0]
    except OSError:
        refused = 503  # the listener is closed already
    join(threads)
    short, long = streams[:2], streams[2:]
    assert refused == 503
    assert all(s.last == "[DONE]" for s in short)
    assert all(s.error_code == "shutdown" for s in long)
    assert all(s.ended_at - signalled >= GRACE - 0.5 for s in long)
    assert server.process.wait(WAIT) == 0
    assert named_actors(cluster) == []


def named_actors(cluster: LocalCluster) -> list[Any]:
    """Every named actor alive in the cluster (Serve's controller and replicas are)."""
    code = (
        "import sys, ray; from hibachi.integrations.ray import connect; "
        "connect(sys.argv[1], log_to_driver=False); "
        "print(repr(ray.util.list_named_actors(all_namespaces=True)))"
    )
    listed = subprocess.run(
        [sys.executable, "-c", code, cluster.address],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=WAIT,
        check=True,
    )
    actors: list[Any] = eval(listed.stdout.strip().splitlines()[-1])
    return actors
