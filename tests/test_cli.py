"""The ``hibachi`` command line: arguments, help, ``hibachi bench`` end to end on tiny settings."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import hibachi
from hibachi._cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
WORKLOADS = ["generation", "embeddings", "overhead", "scaling"]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``hibachi *argv``, whether it returns or exits."""
    try:
        status = main(list(argv))
    except SystemExit as exc:
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out, err


# -- arguments ------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "--version")
    assert status == 0
    assert out.strip() == f"hibachi {hibachi.__version__}"


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).with_name("hibachi")
    result = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hibachi {hibachi.__version__}"


def test_the_cli_imports_nothing_heavy() -> None:
    code = (
        "import sys, hibachi, hibachi._cli\n"
        "heavy = {'torch', 'transformers', 'rich', 'matplotlib', 'jax', 'sentence_transformers'}\n"
        "print(sorted(heavy & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_bench_help_explains_every_workload_and_flag(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "bench", "--help")
    assert status == 0
    flags = ["--quick", "--device", "--concurrency", "--json", "--plot", "--threads"]
    for word in [*WORKLOADS, *flags]:
        assert word in out
    assert "--tiny" not in out  # a test-only flag stays hidden


def test_no_command_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys)
    assert status == 2
    assert "bench" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(["--concurrency", "1,x"], "whole numbers", id="concurrency-not-a-number"),
        pytest.param(["--concurrency", "0,4"], ">= 1", id="concurrency-zero"),
        pytest.param(["--concurrency", ""], ">= 1", id="concurrency-empty"),
        pytest.param(["--workloads", "generation,nope"], "unknown workload nope", id="workload"),
        pytest.param(["--device", "tpu"], "invalid choice", id="device"),
        pytest.param(["--threads", "0"], ">= 1", id="threads"),
    ],
)
def test_bad_arguments_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = run_cli(capsys, "bench", *argv)
    assert status == 2
    assert message in err


def test_concurrency_and_workloads_are_normalised() -> None:
    from hibachi._cli import _counts, _workloads

    assert _counts("16,1,4,4") == (1, 4, 16)
    assert _workloads("scaling, generation") == ("generation", "scaling")


def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, out, _ = run_cli(capsys, "bench", "--tiny", "--device", "cuda")
    assert status == 2
    assert "no CUDA device" in out


# -- hibachi bench end to end -----------------------------------------------------------


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One tiny ``hibachi bench`` run with every workload, shared by the tests below."""
    folder = tmp_path_factory.mktemp("bench")
    files = ["--json", str(folder / "b.json"), "--plot", str(folder / "b.png")]
    files += ["--markdown", str(folder / "b.md")]
    capture = pytest.MonkeyPatch()
    out_file = folder / "stdout.txt"
    with out_file.open("w") as out:
        capture.setattr(sys, "stdout", out)
        try:
            status = main(["bench", "--quick", "--tiny", "--concurrency", "1,3", *files])
        finally:
            capture.undo()
    yield {"status": status, "folder": folder, "stdout": out_file.read_text()}


@pytest.mark.slow
def test_bench_exits_0_and_prints_a_table_per_workload(bench_run: dict[str, Any]) -> None:
    assert bench_run["status"] == 0, bench_run["stdout"]
    out = bench_run["stdout"]
    for title in ["Generation:", "Embeddings:", "Overhead:", "Scaling:"]:
        assert title in out
    assert "generate(), one at a time" in out
    assert "figures:" in out and "plot:" in out


@pytest.mark.slow
def test_bench_writes_a_png(bench_run: dict[str, Any]) -> None:
    data = (bench_run["folder"] / "b.png").read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


@pytest.mark.slow
def test_bench_writes_markdown_tables(bench_run: dict[str, Any]) -> None:
    text = (bench_run["folder"] / "b.md").read_text()
    assert text.count("| method |") == len(WORKLOADS)
    assert "| generate(), one at a time |" in text
    assert "tiny preset" in text.splitlines()[-1]


@pytest.mark.slow
def test_bench_json_schema(bench_run: dict[str, Any]) -> None:
    report = json.loads((bench_run["folder"] / "b.json").read_text())
    assert report["version"] == hibachi.__version__
    assert isinstance(report["created"], str)
    assert isinstance(report["seconds"], float)
    assert {"device", "device_name", "cpu_count", "python", "torch"} <= set(report["machine"])
    assert report["settings"]["preset"] == "tiny"
    assert report["settings"]["concurrency"] == [1, 3]
    assert list(report["sections"]) == WORKLOADS
    for name, section in report["sections"].items():
        assert section["workload"] == name
        assert isinstance(section["title"], str)
        assert isinstance(section["notes"], list)
        assert all(set(c) == {"key", "header", "fmt"} for c in section["columns"])
        for row in section["rows"]:
            assert set(row) == {"method", "values", "status", "note"}
            assert row["status"] in {"ok", "skipped"}, row
            if row["status"] == "skipped":
                assert row["note"], row


@pytest.mark.slow
def test_generation_figures(bench_run: dict[str, Any]) -> None:
    section = json.loads((bench_run["folder"] / "b.json").read_text())["sections"]["generation"]
    rows = {row["method"]: row for row in section["rows"]}
    assert rows["generate(), one at a time"]["values"]["speedup"] == 1.0
    hibachi_rows = [row for method, row in rows.items() if method.startswith("hibachi")]
    assert len(hibachi_rows) == 1
    for row in rows.values():
        if row["status"] != "ok":
            continue
        values = row["values"]
        assert values["tokens_per_s"] > 0
        assert 0 <= values["ttft_p50_ms"] <= values["ttft_p95_ms"]
        matched, total = map(int, values["same_as_generate"].split("/"))
        assert total == 4
        assert values["matched"] is (matched == total)
    # hibachi's greedy tokens are exactly generate()'s, whichever hibachi path ran.
    assert hibachi_rows[0]["values"]["matched"] is True


@pytest.mark.slow
def test_scaling_series_cover_every_concurrency(bench_run: dict[str, Any]) -> None:
    section = json.loads((bench_run["folder"] / "b.json").read_text())["sections"]["scaling"]
    panels = {s["panel"] for s in section["series"]}
    assert panels == {"generation", "embeddings"}
    for series in section["series"]:
        assert series["x"] == [1, 3]
        assert len(series["y"]) == 2
        assert all(y > 0 for y in series["y"])
        assert isinstance(series["reference"], bool)
