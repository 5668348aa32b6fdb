"""Scale-out on Ray Serve: 2 replicas against 1, at saturation, in one run (loopback only).

A local Ray cluster (``--cpus`` CPUs); each configuration is a fresh Serve
application of ``hibachi.integrations.ray.deployment`` over an
AutoregressiveBatcher, driven through a DeploymentHandle by ``--concurrency``
callers, each streaming requests of ``--tokens`` new tokens one after the other.

- ``device``: each step waits ``--step-ms`` (a sleep stands for a GPU): the
  replica's CPU is idle while it waits, so replicas add throughput as
  devices would. Target: 2 replicas >= 1.8x one replica's tokens/s, batches full.
- ``cpu``: each step burns ``--step-ms`` of Python CPU time (holding the GIL).
  Two replicas need two free cores to scale; the CPU share the replicas used
  is reported next to the figure (on a 2-core machine shared with other work
  they cannot show compute scaling).

Prints per configuration: tokens/s, request latency p50/p99, and per replica
the requests it finished and its mean batch fill; writes the same, with the
date, machine, commit and command, to ``--out``
(benchmarks/results/ray_scaling.md).

Usage: python benchmarks/ray_scaling.py [--models device,cpu] [--batch-size 8]
       [--step-ms 50] [--tokens 16] [--requests 64] [--concurrency 32] [--cpus 2]
       [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import ray
from ray import serve

import hibachi
from hibachi.integrations.ray import ReplicaStats, deployment, stream

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

STOP = -1


def device_model(step_s: float) -> Any:
    def model(tokens: Any, mask: Any) -> Any:
        time.sleep(step_s)  # the device computes; this process waits
        return tokens[:, -1] + 1

    return model


def cpu_model(step_s: float) -> Any:
    def model(tokens: Any, mask: Any) -> Any:
        end = time.thread_time() + step_s
        while time.thread_time() < end:  # Python work, holding the GIL
            pass
        return tokens[:, -1] + 1

    return model


def make_batcher(kind: str, step_s: float, batch: int) -> hibachi.AutoregressiveBatcher:
    model = device_model(step_s) if kind == "device" else cpu_model(step_s)
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(STOP), pad_value=np.int64(0), max_batch_size=batch
    )


@dataclass
class Result:
    tokens_per_s: float
    p50: float
    p99: float
    replicas: list[ReplicaStats]
    cpu_share: float  # replica processes' CPU seconds per second of wall time


async def drive(handle: Any, args: argparse.Namespace) -> tuple[float, list[float]]:
    """All requests through ``args.concurrency`` callers: (wall seconds, latencies)."""
    todo = iter(range(args.requests))
    latencies: list[float] = []

    async def caller() -> None:
        for _ in todo:
            start = time.perf_counter()
            got = await stream(handle, np.array([1]), max_new_tokens=args.tokens).collect()
            assert len(got) == args.tokens
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(args.concurrency)))
    return time.perf_counter() - start, latencies


async def replica_stats(handle: Any, count: int) -> list[ReplicaStats]:
    """Each replica's stats (Serve routes each call to one replica: ask until all answered)."""
    seen: dict[str, ReplicaStats] = {}
    for _ in range(200):
        stats: ReplicaStats = await handle.stats.remote()
        seen[stats.replica] = stats
        if len(seen) == count:
            break
    return sorted(seen.values(), key=lambda s: s.replica)


def replica_cpu_seconds() -> float:
    """CPU seconds used so far by this machine's Serve replica processes (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for proc in Path("/proc").iterdir():
        try:
            if b"ServeReplica" not in (proc / "cmdline").read_bytes():
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def measure(kind: str, replicas: int, args: argparse.Namespace) -> Result:
    name = f"{kind}-{replicas}"
    app = deployment(
        lambda: make_batcher(kind, args.step_ms / 1000, args.batch_size),
        max_batch_size=args.batch_size,
        num_replicas=replicas,
        ray_actor_options={"num_cpus": args.cpus / 2 / replicas},
        name=name,
    )
    handle = serve.run(app, name=name, route_prefix=None)
    asyncio.run(drive(handle, argparse.Namespace(**{**vars(args), "requests": replicas * 4})))
    cpu_before = replica_cpu_seconds()
    seconds, latencies = asyncio.run(drive(handle, args))
    cpu = (replica_cpu_seconds() - cpu_before) / seconds
    stats = asyncio.run(replica_stats(handle, replicas))
    serve.delete(name)
    q = statistics.quantiles(latencies, n=100)
    return Result(args.requests * args.tokens / seconds, q[49], q[98], stats, cpu)


def report(kind: str, results: dict[int, Result]) -> list[str]:
    """The rows of one model's table (markdown), printed as they are made."""
    one, two = results[1], results[2]
    ratio = two.tokens_per_s / one.tokens_per_s
    rows = []
    for count, r in results.items():
        split = ", ".join(
            f"{s.batcher.requests_completed} ({s.batcher.mean_batch_fill:.2f})" for s in r.replicas
        )
        shown = f"**{ratio:.2f}x**" if count == 2 else ""
        rows.append(
            f"| {kind} | {count} | {r.tokens_per_s:.1f} | {shown} | {r.p50:.2f} s / {r.p99:.2f} s "
            f"| {r.cpu_share:.2f} cores | {split} |"
        )
    print("\n".join(rows), flush=True)
    return rows


def header(args: argparse.Namespace) -> list[str]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=Path(__file__).resolve().parent,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    command = " ".join(["python benchmarks/ray_scaling.py", *sys.argv[1:]])
    return [
        "# Ray Serve scale-out: 2 replicas against 1, at saturation",
        "",
        f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"- machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at start",
        f"- commit: {commit}",
        f"- command: `{command}`",
        f"- batch {args.batch_size}, step {args.step_ms} ms, {args.requests} requests of "
        f"{args.tokens} tokens, {args.concurrency} callers, {args.cpus} Ray CPUs",
        "",
        "| model | replicas | tokens/s | ratio | latency p50 / p99 | replica CPU "
        "| requests per replica (mean batch fill) |",
        "|---|---|---|---|---|---|---|",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="device,cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--step-ms", type=float, default=50.0)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "results" / "ray_scaling.md",
    )
    args = parser.parse_args()
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(num_cpus=args.cpus, include_dashboard=False, _temp_dir=temp, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        lines = header(args)
        print("\n".join(lines), flush=True)
        for kind in args.models.split(","):
            lines += report(kind, {n: measure(kind, n, args) for n in (1, 2)})
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
