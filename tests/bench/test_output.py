"""A bench run for people: the terminal's tables, the plot, and the results document."""

from __future__ import annotations

import re
from pathlib import Path

from hibachi._bench.output.markdown import document_name, machine_slug, markdown
from hibachi._bench.output.plot import write_plot
from hibachi._bench.output.table import section_table
from hibachi._bench.results import Column, Report, Section

MACHINE = {
    "device": "cpu",
    "device_name": "Intel(R) Xeon(R) Processor",
    "cpu": "Intel(R) Xeon(R) Processor",
    "cpu_count": 2,
    "memory_gib": 23.4,
    "gpu": None,
    "load_average": 0.98,
    "platform": "Linux-6",
    "python": "3.11.7",
    "torch": "2.13.0+cpu",
    "transformers": "5.24.0",
    "commit": "1659172",
}


def _report() -> Report:
    section = Section("demo", "Demo: a workload", [Column("rate", "rate", "{:.1f}")])
    section.add("hibachi", rate=2.0)
    section.skip("peer", "peer is not installed: pip install 'hibachi-batch[peers]'")
    section.notes.append("rate: what the demo counts per second.")
    section.settings["torch_threads"] = 1
    return Report(
        "0.1.0",
        "2026-12-03T14:34:20+00:00",
        MACHINE,
        {"preset": "full"},
        [section],
        seconds=440.6,
        command="hibachi bench --threads 1 --results benchmarks/results",
    )


def test_table_shows_skips_and_failures_with_their_reasons() -> None:
    from rich.console import Console

    section = Section("demo", "Demo", [Column("rate", "rate", "{:.1f}")])
    section.add("fast", rate=2.0)
    section.skip("peer", "peer is not installed: pip install 'hibachi-batch[peers]'")
    section.fail("broken", ValueError("bad"))
    console = Console(record=True, width=120)
    console.print(section_table(section))
    text = console.export_text()
    assert "2.0" in text
    assert "peer: skipped, peer is not installed: pip install 'hibachi-batch[peers]'" in text
    assert "broken: failed, ValueError: bad" in text


def test_no_plot_is_written_when_nothing_was_measured(tmp_path: Path) -> None:
    section = Section("generation", "Generation", [])
    section.fail("generation", RuntimeError("no"))
    report = Report("0", "2026-01-01", {}, {"preset": "tiny"}, [section])
    assert write_plot(report, tmp_path / "p.png") is False
    assert not (tmp_path / "p.png").exists()


def test_a_results_document_is_named_by_date_time_machine_and_preset() -> None:
    assert document_name(_report()) == "2026-12-03-1434-intel-xeon-processor-2cpu-full"
    gpu = {**MACHINE, "device": "cuda", "device_name": "NVIDIA H100 80GB HBM3"}
    assert machine_slug(gpu) == "nvidia-h100-80gb-hbm3"
    odd = {**MACHINE, "cpu": "AMD EPYC 7B13 64-Core Processor @ 2.4GHz", "cpu_count": 16}
    assert machine_slug(odd) == "amd-epyc-7b13-64-core-processor-16cpu"


def test_the_results_document_says_when_where_on_what_code_and_how(tmp_path: Path) -> None:
    files = {"json": tmp_path / "run.json", "plot": tmp_path / "run.png"}
    text = markdown(_report(), files, here=tmp_path)
    lines = text.splitlines()
    assert lines[0] == "# hibachi bench: full preset, 2026-12-03 14:34 UTC"
    for row in [
        "| date | 2026-12-03 14:34:20 UTC (start), 441 s |",
        "| command | `hibachi bench --threads 1 --results benchmarks/results` |",
        "| code | hibachi 0.1.0, commit 1659172 |",
        "| machine | Intel(R) Xeon(R) Processor, 2 CPUs, 23.4 GiB memory, no GPU |",
        "| load average at start | 0.98 (1 minute, with 2 CPUs) |",
        "| PyTorch threads | 1 |",
        "| files | [json](run.json) · [plot](run.png) |",
    ]:
        assert row in lines
    assert "## Demo: a workload" in lines
    assert "| hibachi | 2.0 |" in lines
    assert "- peer: skipped, peer is not installed: pip install 'hibachi-batch[peers]'" in lines
    assert "- rate: what the demo counts per second." in lines
    assert "![the charts of this run](run.png)" in lines
    assert re.search(r"full preset · 441 s", lines[-1])


def test_a_document_without_files_or_command_still_reads() -> None:
    report = _report()
    report.command = None
    report.machine = {**MACHINE, "commit": None, "gpu": "NVIDIA H100"}
    text = markdown(report)
    assert "| command | — |" in text and "commit unknown" in text
    assert "GPU: NVIDIA H100" in text and "![" not in text
