"""scripts/gpu-check.sh: without CUDA (or with --cpu) it says so and its CPU fallback passes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu-check.sh"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_cpu_fallback_says_so_and_passes() -> None:
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu"],
        capture_output=True,
        text=True,
        timeout=880,
        check=False,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "no CUDA device here: the CPU fallback" in out
    for step in ("== the zoo on cpu", "== SmolLM2-135M-Instruct on cpu", "== hibachi bench on cpu"):
        assert step in out
    assert "6 passed" in out and "gpu-check: passed on cpu" in out
