"""The ``hibachi`` command line: arguments, help, ``hibachi bench`` end to end on tiny settings."""

from __future__ import annotations

import json
import re
import shlex
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
    flags = ["--quick", "--device", "--concurrency", "--json", "--plot", "--threads", "--results"]
    flags += ["--clients", "--batch-size", "--repeat", "--rounds", "--texts", "--words"]
    flags += ["--callers", "--worker-reference", "--release-loop-pool", "--stage-work"]
    flags += ["--model", "--url", "--rates", "--max-tokens", "--slo"]
    for word in [*WORKLOADS, "pipeline", "serving", "SmolLM2-135M-Instruct", *flags]:
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
        pytest.param(["--words", "9,3"], "1 <= LO <= HI", id="words-backwards"),
        pytest.param(["--words", "9"], "expected LO,HI", id="words-one"),
        pytest.param(["--stage-work", "blas,gpu"], "unknown stage work gpu", id="stage-work"),
        pytest.param(["--rounds", "0"], ">= 1", id="rounds"),
        pytest.param(["--batch-size", "8,32"], "embeddings workload", id="batch-sizes"),
        pytest.param(["--url", "localhost:8000"], "http://host:port", id="url"),
        pytest.param(["--rates", "1,0"], "rates > 0", id="rates-zero"),
        pytest.param(["--rates", "fast"], "rates like", id="rates-word"),
        pytest.param(["--slo", "ttft:x"], "ttft:MS,tpot:MS", id="slo-number"),
        pytest.param(["--slo", "e2el:100"], "ttft:MS,tpot:MS", id="slo-name"),
        pytest.param(["--max-tokens", "0"], ">= 1", id="max-tokens"),
    ],
)
def test_bad_arguments_are_refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    status, _, err = run_cli(capsys, "bench", *argv)
    assert status == 2
    assert message in err


def test_concurrency_and_workloads_are_normalised() -> None:
    from hibachi._cli import _counts, _stage_work, _workloads

    assert _counts("16,1,4,4") == (1, 4, 16)
    assert _workloads("scaling, generation") == ("generation", "scaling")
    assert _stage_work("noop, blas,noop") == ("noop", "blas")


def test_the_workload_options_become_overrides() -> None:
    from hibachi._bench.settings import Overrides
    from hibachi._cli import _overrides, _parser

    argv = ["bench", "--workloads", "embeddings", "--batch-size", "32,8", "--rounds", "5"]
    argv += ["--texts", "128", "--words", "4,400", "--release-loop-pool"]
    args = _parser().parse_args(argv)
    assert _overrides(args) == Overrides(
        batch_sizes=(8, 32), rounds=5, texts=128, words=(4, 400), release_loop_pool=True
    )


def test_the_serving_options_become_overrides_and_reach_the_settings() -> None:
    from hibachi._bench import preset
    from hibachi._bench.settings import Overrides
    from hibachi._cli import _overrides, _parser

    argv = ["bench", "--workloads", "serving", "--model", "tiny", "--url", "http://a:1/"]
    argv += ["--url", "http://b:2", "--rates", "4,0.5", "--max-tokens", "32", "--slo", "tpot:90"]
    overrides = _overrides(_parser().parse_args(argv))
    assert overrides == Overrides(
        model="tiny",
        urls=("http://a:1", "http://b:2"),
        rates=(0.5, 4.0),
        max_tokens=32,
        slo_tpot_ms=90.0,
    )
    settings = preset("full", concurrency=(2, 64), overrides=overrides)
    serving = settings.serving
    assert (serving.urls, serving.rates, serving.max_tokens) == (overrides.urls, (0.5, 4.0), 32)
    assert (serving.slo_ttft_ms, serving.slo_tpot_ms) == (3000.0, 90.0)
    assert serving.concurrency == (2, 64) == settings.concurrency
    assert settings.generation.model == "tiny"
    assert (
        preset("quick").generation.model == "smollm2" and preset("tiny").generation.model == "tiny"
    )


def test_cuda_without_a_gpu_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, out, _ = run_cli(capsys, "bench", "--tiny", "--device", "cuda")
    assert status == 2
    assert "no CUDA device" in out


# -- hibachi bench end to end -----------------------------------------------------------


BENCH_ARGV = ["bench", "--quick", "--tiny", "--concurrency", "1,3"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One tiny ``hibachi bench`` run with every workload, shared by the tests below: its
    results document in ``results/``, with the JSON and the plot beside it."""
    folder = tmp_path_factory.mktemp("bench")
    files = ["--results", str(folder / "results"), "--markdown", str(folder / "b.md")]
    capture = pytest.MonkeyPatch()
    out_file = folder / "stdout.txt"
    with out_file.open("w") as out:
        capture.setattr(sys, "stdout", out)
        try:
            status = main([*BENCH_ARGV, *files])
        finally:
            capture.undo()
    (document,) = (folder / "results").glob("*.md")
    yield {
        "status": status,
        "folder": folder,
        "stdout": out_file.read_text(),
        "document": document,
        "json": document.with_suffix(".json"),
        "png": document.with_suffix(".png"),
    }


@pytest.mark.slow
def test_bench_exits_0_and_prints_a_table_per_workload(bench_run: dict[str, Any]) -> None:
    assert bench_run["status"] == 0, bench_run["stdout"]
    out = bench_run["stdout"]
    for title in ["Generation:", "Embeddings:", "Overhead:", "Scaling:"]:
        assert title in out
    assert "generate(), one at a time" in out
    assert "figures:" in out and "plot:" in out and "results:" in out


@pytest.mark.slow
def test_bench_writes_a_png(bench_run: dict[str, Any]) -> None:
    data = bench_run["png"].read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


@pytest.mark.slow
def test_bench_writes_a_results_document(bench_run: dict[str, Any]) -> None:
    document = bench_run["document"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d-\d{4}-[a-z0-9-]+-\d+cpu-tiny\.md", document.name)
    text = document.read_text()
    assert text.count("| method |") == len(WORKLOADS)
    assert "| generate(), one at a time |" in text
    assert "tiny preset" in text.splitlines()[-1]
    command = shlex.join(["hibachi", *BENCH_ARGV])
    assert f"| command | `{command} --results " in text
    for row in ["| date |", "| code | hibachi ", "| machine |", "| load average at start |"]:
        assert row in text
    stem = document.stem
    assert f"[json]({stem}.json)" in text and f"![the charts of this run]({stem}.png)" in text
    # --markdown writes the same document elsewhere, its links relative to where it is.
    copy = (bench_run["folder"] / "b.md").read_text()
    assert f"[json](results/{stem}.json)" in copy


@pytest.mark.slow
def test_bench_json_schema(bench_run: dict[str, Any]) -> None:
    report = json.loads(bench_run["json"].read_text())
    assert report["version"] == hibachi.__version__
    assert isinstance(report["created"], str)
    assert isinstance(report["seconds"], float)
    assert report["command"].startswith("hibachi bench --quick --tiny")
    assert {"device", "device_name", "cpu_count", "python", "torch"} <= set(report["machine"])
    assert report["settings"]["preset"] == "tiny"
    assert report["settings"]["concurrency"] == [1, 3]
    assert list(report["sections"]) == WORKLOADS
    rows = {r["method"]: r["values"] for r in report["sections"]["generation"]["rows"]}
    mine = rows["hibachi (KV cache)"]
    assert 1 <= mine["rows_at_once"] <= report["settings"]["generation"]["batch_size"]
    assert mine["peak_kv_bytes"] > 0 and 0 <= mine["prefix_hit_rate"] <= 1
    assert rows["hibachi (KV cache, no prefix caching)"]["prefix_hit_rate"] == 0
    assert rows["generate(), one at a time"]["peak_kv_bytes"] is None
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
    section = json.loads(bench_run["json"].read_text())["sections"]["generation"]
    rows = {row["method"]: row for row in section["rows"]}
    assert rows["generate(), one at a time"]["values"]["speedup"] == 1.0
    hibachi_rows = [row for method, row in rows.items() if method.startswith("hibachi")]
    assert "hibachi (KV cache)" in rows  # and, in the full preset, the same without prefix caching
    assert len(hibachi_rows) <= 2
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
    assert all(row["values"]["matched"] is True for row in hibachi_rows)


@pytest.mark.slow
def test_scaling_series_cover_every_concurrency(bench_run: dict[str, Any]) -> None:
    section = json.loads(bench_run["json"].read_text())["sections"]["scaling"]
    panels = {s["panel"] for s in section["series"]}
    assert panels == {"generation", "embeddings"}
    for series in section["series"]:
        assert series["x"] == [1, 3]
        assert len(series["y"]) == 2
        assert all(y > 0 for y in series["y"])
        assert isinstance(series["reference"], bool)
