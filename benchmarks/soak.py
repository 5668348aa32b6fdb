"""A soak with faults: every batcher, many callers, bad inputs, transient faults.

Drives a stateless autoregressive batcher, an incremental one (an
`IncrementalModel` with per-slot state) and a feedforward batcher, each with
``--requests`` requests from asyncio tasks on several event loops and from plain
threads: random arrivals, 10% cancelled at a random point, 5% bad inputs (the
model raises on them), a model that now and then raises on a good batch, and
random deadlines. Prints one row per batcher. The harness is the tests' own
(``tests/support/soak.py``; ``tests/core/test_soak.py`` runs it small).

Usage: python benchmarks/soak.py [--requests 100000] [--kinds stateless,incremental,feedforward]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.soak import KINDS, Settings, Tally, soak


def row(t: Tally) -> str:
    rss = t.memory["rss"]
    objects = t.memory["objects"]
    traced = t.memory["traced"]
    cells = [
        t.kind,
        f"{t.requests:,}",
        f"{t['ok']:,}",
        f"{t['bad_failed']:,}",
        f"{t['transient']:,} ({t.transient_faults} faults)",
        f"{t['timeout']:,}",
        f"{t['cancelled']:,}",
        f"**{t['innocent']}**",
        f"**{t['crosstalk']}**",
        f"**{t.hangs}**",
        f"{rss[0] / 2**20:.1f} → {rss[1] / 2**20:.1f}",
        f"{objects[0]:,} → {objects[1]:,}",
        f"{traced[0] / 2**10:,.0f} → {traced[1] / 2**10:,.0f}" if traced[0] else "-",
        f"{t.percentile(50) * 1e3:.1f} / {t.percentile(99) * 1e3:.1f}",
        f"{t.seconds:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


HEADER = (
    "| batcher | requests | answered | bad, failed | good, failed by a transient fault "
    "| own deadline | cancelled | innocent failed | cross-talk | hangs | RSS MiB start → end "
    "| GC objects start → end | traced KiB start → end | p50 / p99 ms | s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the tallies to this file")
    parser.add_argument(
        "--tracemalloc", action="store_true", help="trace allocations (slower): memory in KiB"
    )
    args = parser.parse_args()
    settings = Settings(requests=args.requests, seed=args.seed)
    if args.tracemalloc:
        tracemalloc.start()
    print(
        f"{args.requests:,} requests per batcher; {settings.loops} event loops x "
        f"{settings.tasks} tasks + {settings.threads} threads; max_batch_size "
        f"{settings.max_batch_size}; {platform.python_version()}, {os.cpu_count()} CPUs",
        file=sys.stderr,
    )
    tallies = []
    for kind in args.kinds.split(","):
        tallies.append(soak(kind, settings, progress=lambda line: print(line, file=sys.stderr)))
        print(f"{kind}: done in {tallies[-1].seconds:.0f} s", file=sys.stderr)
    print(HEADER)
    for tally in tallies:
        print(row(tally))
    if args.json:
        with open(args.json, "w") as out:
            json.dump([{**vars(t), "latencies": None} for t in tallies], out, indent=1)
    if any(t["innocent"] or t["crosstalk"] or t.hangs or t["bad_accepted"] for t in tallies):
        sys.exit(1)


if __name__ == "__main__":
    main()
