"""Ending the calling thread's OpenMP workers, for the workloads that show what it changes.

PyTorch's Linux CPU wheels bundle GNU libgomp. Each thread that runs a
parallel region owns a pool of workers until it exits. A waiting worker spins
about 300,000 times before it sleeps, unless the process's libgomp workers
outnumber its CPUs: then only 100 times (``do_spin`` in libgomp's
``config/linux/wait.h``). With as many torch threads as CPUs, a second thread
running the model (hibachi's engine thread, an executor's thread) puts one
pool too many in the process once the event-loop thread has run the model:
every team then sleeps and wakes at each of a forward's parallel regions.
``omp_pause_resource_all`` ends the calling thread's pool (libgomp's
``gomp_pause_host``); its next parallel region starts a new one.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

__all__ = ["release_openmp_pool"]

OMP_PAUSE_SOFT = 1


def release_openmp_pool() -> bool:
    """End the calling thread's OpenMP workers; False where no bundled libgomp could."""
    libgomp = _torch_libgomp()
    return libgomp is not None and libgomp.omp_pause_resource_all(OMP_PAUSE_SOFT) == 0


@functools.cache
def _torch_libgomp() -> ctypes.CDLL | None:
    """The libgomp that torch loaded (same file, same handle), if it has the OpenMP 5.0 call."""
    try:
        import torch
    except ImportError:
        return None
    path = Path(torch.__file__).parent / "lib" / "libgomp.so.1"
    try:
        libgomp = ctypes.CDLL(str(path))
    except OSError:
        return None
    return libgomp if hasattr(libgomp, "omp_pause_resource_all") else None
