"""Where a bench runs: the CPUs it may use, the machine a results document names."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from hibachi._bench.environment import (
    busy_cpus,
    busy_warning,
    free_cpus,
    release_openmp_pool,
    source_commit,
)


def test_threads_go_to_the_cpus_other_processes_leave_free() -> None:
    cpus = os.cpu_count() or 1
    assert free_cpus(0.0) == cpus
    assert free_cpus(0.7) == cpus  # a CPU counts as taken when 3/4 busy
    assert free_cpus(1.0) == max(1, cpus - 1)
    assert free_cpus(1000.0) == 1
    assert 0.0 <= busy_cpus(window=0.05) <= cpus + 0.5
    assert busy_warning(0.2) is None
    assert "--threads N" in (busy_warning(1.5) or "")


def test_the_commit_is_this_checkouts() -> None:
    commit = source_commit()
    if commit is None:
        pytest.skip("hibachi does not run from a git checkout here")
    assert re.fullmatch(r"[0-9a-f]{7,40}(\+dirty)?", commit)


def test_the_machine_names_cpu_memory_gpu_load_and_commit() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from hibachi._bench.environment import describe_machine

    machine = describe_machine("cpu")
    keys = {"cpu", "cpu_count", "memory_gib", "gpu", "load_average", "commit", "torch"}
    assert keys <= set(machine)
    assert machine["device"] == "cpu" and machine["cpu_count"] == os.cpu_count()


def test_releasing_the_openmp_pool_leaves_torch_working() -> None:
    """Where torch bundles libgomp, the call succeeds and the next parallel region still runs."""
    torch = pytest.importorskip("torch")

    x = torch.ones(1 << 17)
    assert float(x.add(1).sum()) == 2.0 * (1 << 17)  # a parallel region: this thread's pool
    released = release_openmp_pool()
    assert isinstance(released, bool)
    assert float(x.add(2).sum()) == 3.0 * (1 << 17)


def test_an_installed_hibachi_inside_another_repository_names_no_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hibachi._bench.environment import machine

    folder = tmp_path / "venv" / "site-packages" / "hibachi" / "_bench" / "environment"
    folder.mkdir(parents=True)
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    if subprocess.run([*git, "init", "-q"], check=False).returncode:
        pytest.skip("no git here")
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "theirs"], check=True)
    monkeypatch.setattr(machine, "__file__", str(folder / "machine.py"))
    assert machine.source_commit() is None
