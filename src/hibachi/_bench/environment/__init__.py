"""Where a bench runs: the machine it names, the CPUs it may use, the libraries it quiets."""

from .cpus import busy_cpus, busy_warning, free_cpus, torch_threads
from .libraries import quiet_libraries
from .machine import cuda_available, describe_machine, source_commit
from .openmp import release_openmp_pool

__all__ = [
    "busy_cpus",
    "busy_warning",
    "cuda_available",
    "describe_machine",
    "free_cpus",
    "quiet_libraries",
    "release_openmp_pool",
    "source_commit",
    "torch_threads",
]
