"""Ray Serve on a cluster of raylets on this host: how bursts split, what losing a node does.

A `LocalCluster` (tests/support/ray_cluster.py): ``ray start --head`` and
``ray start --address``, token authentication on, one CPU per node. Parts:

1. **Burst split.** Bursts of ``replicas * batch`` streams (for each of
   ``--batches``; the front uses the first), each long enough
   that the whole burst is in flight at once, through Serve's default router
   ("power of two choices", preferring the caller's node) and through
   `FewestInFlightRouter`, alternating round by round: through a handle
   (`deployment` + `stream`), and through Serve's HTTP proxies, one per node,
   the burst sent all to the head's proxy, or 3:1 to the head's and the other
   node's. Reported: each round's split, and the largest departure from an
   equal share.
2. **The front** of ``hibachi serve --replicas 2 --ray-address``: its split of
   the same bursts; then a node killed mid-burst (a spare node with a free CPU
   joined after the deployment): when the lost streams got their
   ``replica_lost`` event, when ``/health`` said ``degraded``, when Serve
   marked the deployment, when it was whole again on the spare node; then
   SIGINT with short and long streams in flight: when each ended, how, and
   the exit.

Prints its figures and writes them, with the date, machine, commit and
command, to ``--out`` (benchmarks/results/ray_cluster.md).

Usage: python benchmarks/ray_cluster.py [--rounds 4] [--batches 4,8] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the cluster helper the tests use

import hibachi  # noqa: E402
from hibachi.integrations.ray import (  # noqa: E402
    FewestInFlightRouter,
    connect,
    deployment,
    stream,
)
from hibachi.serve._ray import http_deployment  # noqa: E402
from support.ray_cluster import LocalCluster, free_port  # noqa: E402
from support.serve import RawStream  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

STEP_S = 0.02  # the counting model's step, and the HTTP app's pause per chunk
TOKENS = 100  # per request in the burst parts: 2 s, so that a whole burst is in flight at once
ROUTERS = {
    "Serve default (power of two, local node first)": RequestRouterConfig(),
    "FewestInFlightRouter": RequestRouterConfig(request_router_class=FewestInFlightRouter),
}
HIBACHI = str(Path(sys.executable).with_name("hibachi"))


# -- part 1: handles and Serve's proxies ---------------------------------------------


def counting_model(tokens: Any, mask: Any) -> Any:
    time.sleep(STEP_S)
    return tokens[:, -1] + 1


def make_counting(batch: int) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        counting_model, stop_token=np.int64(-1), pad_value=np.int64(0), max_batch_size=batch
    )


def build_chunk_app() -> Any:
    """An app streaming TOKENS chunks, STEP_S apart, then the id of its replica."""
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def chunks(request: Any) -> StreamingResponse:
        async def body() -> Any:
            for _ in range(TOKENS):
                await asyncio.sleep(STEP_S)
                yield b"."
            yield f"\n{serve.get_replica_context().replica_id.unique_id}".encode()

        return StreamingResponse(body(), media_type="text/plain")

    return Starlette(routes=[Route("/", chunks, methods=["POST"])])


async def handle_split(handle: Any, burst: int) -> list[int]:
    """Requests each replica took from one burst through ``handle``."""
    before = await finished_by_replica(handle)
    await asyncio.sleep(0.5)  # the stats calls end too: the burst starts from idle
    calls = (stream(handle, np.array([1]), max_new_tokens=TOKENS).collect() for _ in range(burst))
    await asyncio.gather(*calls)
    after = await finished_by_replica(handle)
    return sorted(int(after[r] - before.get(r, 0)) for r in after)


async def finished_by_replica(handle: Any) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(200):
        stats = await handle.stats.remote()
        seen[stats.replica] = stats.batcher.requests_completed
        if len(seen) == 2:
            break
    return seen


def proxy_split(ports: list[int], prefix: str, burst: int) -> list[int]:
    """Requests each replica took from one burst over Serve's proxies on ``ports``
    (request i goes to ``ports[i % len(ports)]``: list a port twice to send it more)."""
    replicas: list[str] = [""] * burst

    def post(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", ports[i % len(ports)], timeout=60)
        try:
            connection.request("POST", f"{prefix}/", body=b"")
            replicas[i] = connection.getresponse().read().decode().rsplit("\n", 1)[-1]
        finally:
            connection.close()

    threads = [threading.Thread(target=post, args=(i,)) for i in range(burst)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    taken = list(Counter(replicas).values())
    return sorted(taken + [0] * (2 - len(taken)))


def part_routers(
    cluster: LocalCluster, proxies: list[int], args: argparse.Namespace
) -> dict[int, dict[str, dict[str, list[list[int]]]]]:
    """Per batch size: per router, per path, each round's split."""
    os.environ["RAY_AUTH_TOKEN_PATH"] = cluster.env["RAY_AUTH_TOKEN_PATH"]
    connect(cluster.address, log_to_driver=False)
    serve.start(proxy_location="EveryNode", http_options={"host": "127.0.0.1", "port": proxies[0]})
    splits = {batch: bursts(proxies, batch, args.rounds) for batch in args.batches}
    serve.shutdown()
    ray.shutdown()
    return splits


def bursts(proxies: list[int], batch: int, rounds: int) -> dict[str, dict[str, list[list[int]]]]:
    """Deploy each router's apps for ``batch``; alternate the routers round by round."""
    common = {
        "num_replicas": 2,
        "max_replicas_per_node": 1,
        "ray_actor_options": {"num_cpus": 0.25},
    }
    apps = {}
    for i, (name, router) in enumerate(ROUTERS.items()):
        handle_app = deployment(
            lambda: make_counting(batch), max_batch_size=batch,
            request_router_config=router, name=f"handle{i}", **common,
        )  # fmt: skip
        http_app = http_deployment(
            build_chunk_app, max_batch_size=batch,
            request_router_config=router, name=f"http{i}", **common,
        )  # fmt: skip
        handle = serve.run(handle_app, name=f"handle{i}", route_prefix=None)
        serve.run(http_app, name=f"http{i}", route_prefix=f"/http{i}")
        apps[name] = (handle, f"/http{i}")
    wait_for_proxies(proxies, [prefix for _, prefix in apps.values()])
    burst = 2 * batch
    uneven = [proxies[0], proxies[0], proxies[0], proxies[1]]
    splits: dict[str, dict[str, list[list[int]]]] = {name: {} for name in apps}
    for _ in range(rounds):
        for name, (handle, prefix) in apps.items():
            taken = splits[name]
            taken.setdefault("handle", []).append(asyncio.run(handle_split(handle, burst)))
            taken.setdefault("head proxy", []).append(proxy_split(proxies[:1], prefix, burst))
            taken.setdefault("both proxies, 3:1", []).append(proxy_split(uneven, prefix, burst))
    for i in range(len(apps)):
        serve.delete(f"handle{i}")
        serve.delete(f"http{i}")
    return splits


def wait_for_proxies(ports: list[int], prefixes: list[str]) -> None:
    deadline = time.monotonic() + 120
    for port in ports:
        for prefix in prefixes:
            while True:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                    connection.request("POST", f"{prefix}/", body=b"")
                    if connection.getresponse().status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no proxy answered {prefix} on port {port}")
                time.sleep(0.5)


# -- part 2: hibachi serve's front -----------------------------------------------------


@dataclass
class Watched:
    """A stream read on a thread: its last event and when it ended."""

    last: str = ""
    begun: threading.Event = field(default_factory=threading.Event)
    ended_at: float = 0.0
    failure: str | None = None

    @property
    def code(self) -> str:
        if self.failure is not None:
            return f"cut ({self.failure})"
        if self.last.startswith('{"error"'):
            return str(json.loads(self.last)["error"]["code"])
        return "done" if self.last == "[DONE]" else f"cut after {self.last[:20]!r}"


def watch(port: int, budgets: list[int]) -> tuple[list[Watched], list[threading.Thread]]:
    watched = [Watched() for _ in budgets]

    def read(w: Watched, budget: int) -> None:
        data = json.dumps({"prompt": "hi", "max_tokens": budget, "stream": True}).encode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                s.sendall(
                    b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    + b"Content-Type: application/json"
                    + f"\r\nContent-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                    + data
                )
                raw = RawStream(s)
                raw.read_head()
                for event in raw.events():
                    w.last = event
                    w.begun.set()
        except OSError as exc:
            w.failure = type(exc).__name__
        finally:
            w.ended_at = time.monotonic()
            w.begun.set()

    threads = [
        threading.Thread(target=read, args=(w, n)) for w, n in zip(watched, budgets, strict=True)
    ]
    for thread in threads:
        thread.start()
    return watched, threads


def health(port: int) -> dict[str, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/health")
        body: dict[str, Any] = json.loads(connection.getresponse().read())
        return body
    finally:
        connection.close()


def until_health(port: int, status: str, limit: float = 180.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        try:
            if health(port).get("status") == status:
                return time.monotonic()
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"/health never said {status!r}")


def front_split(port: int, burst: int) -> list[int]:
    before = replica_finished(port)
    _, threads = watch(port, [200] * burst)
    for thread in threads:
        thread.join()
    after = replica_finished(port)
    return sorted(int(after[r] - before.get(r, 0)) for r in after)


def finished_generation(labels: dict[str, str]) -> bool:
    return labels.get("model") == "hibachi-llama" and labels.get("reason") in ("budget", "stop")


def replica_finished(port: int) -> dict[str, int]:
    """Completions each replica finished (at a stop token or their budget)."""
    from prometheus_client.parser import text_string_to_metric_families

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    connection.close()
    finished: Counter[str] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "hibachi_requests_ended_total" and finished_generation(s.labels):
                finished[s.labels["replica"]] += int(s.value)
    return dict(finished)


def timeline_of_loss(cluster: LocalCluster, port: int, batch: int) -> dict[str, Any]:
    """Kill node 1 with 2 x batch long streams in flight; when each thing happened."""
    spare = cluster.add_node(1)
    watched, threads = watch(port, [1500] * (2 * batch))
    for w in watched:
        w.begun.wait(120)
    events: dict[str, float] = {}
    killed = time.monotonic()
    cluster.kill_node(1)
    while time.monotonic() - killed < 180 and "whole again" not in events:
        try:
            body = health(port)
        except OSError:
            continue
        now = time.monotonic() - killed
        if body.get("status") == "degraded":
            events.setdefault("/health says degraded", now)
        if body.get("deployment", {}).get("status") == "UNHEALTHY":
            events.setdefault("Serve marks the deployment UNHEALTHY", now)
        if body.get("status") == "ok" and "/health says degraded" in events:
            events["whole again"] = now
        time.sleep(0.25)
    for thread in threads:
        thread.join()
    ends = sorted((w.ended_at - killed, w.code) for w in watched)
    lost = [t for t, code in ends if code == "replica_lost"]
    return {
        "spare node": spare,
        "events": events,
        "streams": Counter(code for _, code in ends),
        "lost ended": (min(lost), max(lost)) if lost else None,
    }


def timeline_of_drain(process: subprocess.Popen[bytes], port: int, grace: float) -> dict[str, Any]:
    watched, threads = watch(port, [20, 20, 4000, 4000])
    for w in watched:
        w.begun.wait(120)
    signalled = time.monotonic()
    process.send_signal(signal.SIGINT)
    for thread in threads:
        thread.join()
    code = process.wait(120)
    return {
        "grace": grace,
        "streams": [(round(w.ended_at - signalled, 2), w.code) for w in watched],
        "exit": (round(time.monotonic() - signalled, 1), code),
    }


def part_front(cluster: LocalCluster, args: argparse.Namespace) -> dict[str, Any]:
    port, grace = free_port(), 3.0
    cli = [HIBACHI, "serve", "--model", "tiny", "--replicas", "2", "--ray-address", cluster.address]
    cli += ["--port", str(port), "--max-batch-size", str(args.batch), "--max-length", "4096"]
    cli += ["--shutdown-grace", str(grace)]
    started = time.monotonic()
    with (cluster.temp / "serve.log").open("wb") as log:
        process = subprocess.Popen(cli, env=cluster.env, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready = until_health(port, "ok") - started
        splits = [front_split(port, 2 * args.batch) for _ in range(args.rounds)]
        loss = timeline_of_loss(cluster, port, args.batch)
        drain = timeline_of_drain(process, port, grace)
    finally:
        if process.poll() is None:
            process.kill()
    return {"ready": ready, "splits": splits, "loss": loss, "drain": drain}


# -- report ----------------------------------------------------------------------------


def worst(splits: list[list[int]], burst: int) -> float:
    """The largest departure from an equal share, over all rounds (0.2 = 20%)."""
    share = burst / 2
    return max(abs(n - share) / share for split in splits for n in split)


def report(routers: dict[int, Any], front: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [f"## Burst split: {args.rounds} rounds of 2 x batch streams over 2 replicas", ""]
    lines += [
        "| batch | router | path | per-round split | worst departure from an equal share |",
        "|---|---|---|---|---|",
    ]
    for batch, by_router in routers.items():
        for name, paths in by_router.items():
            for path, splits in paths.items():
                shown = " ".join("/".join(map(str, s)) for s in splits)
                off = worst(splits, 2 * batch)
                lines.append(f"| {batch} | {name} | {path} | {shown} | {off:.0%} |")
    burst = 2 * args.batch
    shown = " ".join("/".join(map(str, s)) for s in front["splits"])
    off = worst(front["splits"], burst)
    name = "FewestInFlightRouter"
    lines.append(f"| {args.batch} | {name} | hibachi serve's front | {shown} | {off:.0%} |")
    loss = front["loss"]
    lines += ["", f"## A node lost with {burst} streams in flight (hibachi serve --replicas 2)", ""]
    lines += [f"- server ready (health ok) {front['ready']:.1f} s after start"]
    lines += [f"- streams: {dict(loss['streams'])}"]
    if loss["lost ended"]:
        first, last = loss["lost ended"]
        lines += [f"- its streams' replica_lost events: {first:.1f}-{last:.1f} s after the kill"]
    for what, when in loss["events"].items():
        lines += [f"- {what}: {when:.1f} s after the kill"]
    drain = front["drain"]
    lines += [
        "",
        f"## SIGINT with 2 short and 2 long streams in flight (grace {drain['grace']} s)",
        "",
    ]
    lines += [f"- stream ends (s after SIGINT, how): {drain['streams']}"]
    lines += [f"- exited {drain['exit'][0]} s after SIGINT with code {drain['exit'][1]}"]
    return "\n".join(lines)


def header(args: argparse.Namespace, started: datetime, load: str) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return "\n".join([
        "# Ray Serve on a two-raylet cluster: burst split, node loss, drain",
        "",
        f"- date: {started:%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, load average {load} at start",
        f"- commit: {commit}",
        f"- command: `python benchmarks/ray_cluster.py --rounds {args.rounds} "
        f"--batches {','.join(map(str, args.batches))}`",
        "- cluster: `ray start --head`, `ray start --address` on this host, 1 CPU per node",
        "",
        "",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batches", default="4,8", help="batch sizes of the burst part")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ray_cluster.md")
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.batch = args.batches[0]  # the front's
    started = datetime.now(UTC)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    proxies = [free_port(), free_port()]
    worker_proxy = {1: {"RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(proxies[1])}}
    with LocalCluster((1, 1), node_env=worker_proxy) as cluster:
        routers = part_routers(cluster, proxies, args)
        front = part_front(cluster, args)
    text = header(args, started, load) + report(routers, front, args) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
