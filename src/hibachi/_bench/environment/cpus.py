"""How many CPUs the bench may use: those other processes leave free, as PyTorch's threads."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

__all__ = ["busy_cpus", "busy_warning", "free_cpus", "torch_threads"]


def busy_cpus(window: float = 0.3) -> float:
    """How many CPUs other processes keep busy right now (call it before starting work).

    Measured from ``/proc/stat`` over ``window`` seconds; where that file does
    not exist, the 1-minute load average stands in.
    """
    try:
        before = _cpu_times()
        time.sleep(window)
        after = _cpu_times()
    except (OSError, ValueError):
        return os.getloadavg()[0]
    busy, total = after[0] - before[0], after[1] - before[1]
    return (os.cpu_count() or 1) * busy / total if total else 0.0


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot, from the first line of /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(x) for x in stat.readline().split()[1:9]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def free_cpus(busy: float) -> int:
    """The CPUs left for the bench (a CPU counts as taken when 3/4 busy), at least one."""
    cpus = os.cpu_count() or 1
    return max(1, cpus - int(busy + 0.25))


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """PyTorch's intra-op threads inside the block; the previous count after it.

    More threads than free cores is far worse than fewer: each operation waits
    for its slowest thread, and small sequential calls (the one-at-a-time
    baselines) slow down many times more than batched ones.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def busy_warning(busy: float) -> str | None:
    """A warning when other processes keep at least half a CPU busy, else None."""
    if busy < 0.5:
        return None
    return (
        f"other processes keep {busy:.1f} of {os.cpu_count()} CPUs busy: PyTorch gets the CPUs "
        "they leave free (--threads N to choose), and figures will be noisier than on an idle "
        "machine"
    )
