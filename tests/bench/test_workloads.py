"""The measuring code behind ``hibachi bench``: correctness of each path, skips, failures."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hibachi._bench import NullProgress, generation, overhead, preset, run_bench
from hibachi._bench.embeddings import Unavailable, load_sentence_transformer
from hibachi._bench.environment import busy_cpus, busy_warning, free_cpus
from hibachi._bench.llm import build_llama, hibachi_label, make_requests, trim
from hibachi._bench.plot import write_plot
from hibachi._bench.report import section_table
from hibachi._bench.results import Column, Report, Section
from hibachi._bench.timing import best_of, run_async
from hibachi._cli import main

pytestmark = pytest.mark.slow

TINY = preset("tiny")


def test_trim_stops_at_the_budget_and_at_the_first_eos() -> None:
    assert trim([5, 6, 7, 8], 3, eos=9) == [5, 6, 7]
    assert trim([5, 9, 7, 9], 4, eos=9) == [5, 9]
    assert trim([5, 6, 9], 2, eos=9) == [5, 6]


def test_best_of_keeps_the_best_run_and_stops_once_time_is_up() -> None:
    runs = iter([3.0, 5.0, 4.0])
    assert best_of(lambda: next(runs), float, repeat=3, within=float("inf")) == 5.0
    calls: list[int] = []
    assert best_of(lambda: calls.append(1) or 1.0, float, repeat=3, within=0.0) == 1.0
    assert len(calls) == 1


def test_a_run_that_hangs_fails_at_its_deadline() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    with pytest.raises(TimeoutError, match="did not finish within"):
        run_async(hangs(), seconds=0.05)
    assert run_async(asyncio.sleep(0, result=7)) == 7


def test_threads_go_to_the_cpus_other_processes_leave_free() -> None:
    cpus = os.cpu_count() or 1
    assert free_cpus(0.0) == cpus
    assert free_cpus(0.7) == cpus  # a CPU counts as taken when 3/4 busy
    assert free_cpus(1.0) == max(1, cpus - 1)
    assert free_cpus(1000.0) == 1
    assert 0.0 <= busy_cpus(window=0.05) <= cpus + 0.5
    assert busy_warning(0.2) is None
    assert "--threads N" in (busy_warning(1.5) or "")


def test_preset_overrides() -> None:
    settings = preset("quick", device="cuda", concurrency=(2, 8), workloads=("scaling",))
    assert (settings.preset, settings.device) == ("quick", "cuda")
    assert settings.concurrency == (2, 8)
    assert settings.workloads == ("scaling",)
    assert preset("quick").workloads == ("generation", "embeddings", "overhead", "scaling")


@pytest.fixture(scope="module")
def llama() -> object:
    size = replace(TINY.generation, vocab=512, hidden=64)
    return build_llama(size, "cpu", seed=1)


@pytest.mark.parametrize("path", ["stateless fallback", "transformers adapter"])
def test_hibachi_gets_the_same_greedy_tokens_as_generate(
    llama: object, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "stateless fallback":
        monkeypatch.setitem(sys.modules, "hibachi.integrations.transformers", None)
        assert hibachi_label() == "hibachi (stateless)"
    else:
        pytest.importorskip("hibachi.integrations.transformers")
        assert hibachi_label() == "hibachi (KV cache)"
    # Mixed lengths and budgets, more clients than rows: left padding and row reuse both happen.
    requests = make_requests(7, (1, 12), (1, 9), vocab=512, seed=3)
    alone = generation.one_at_a_time(llama, requests, "cpu")
    batched = generation.with_hibachi(llama, requests, batch_size=3, device="cpu")
    assert batched.tokens == alone.tokens
    assert [len(t) for t in alone.tokens] != [1] * 7


def test_static_batches_and_transformers_agree_with_generate(llama: object) -> None:
    requests = make_requests(5, (1, 10), (1, 6), vocab=512, seed=4)
    alone = generation.one_at_a_time(llama, requests, "cpu")
    assert generation.static_batches(llama, requests, 2, "cpu").tokens == alone.tokens
    assert generation.continuous_batching(llama, requests, 2).tokens == alone.tokens


def test_missing_peers_are_skipped_with_the_extra_that_installs_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for module in ["batched", "batched.aio", "async_batcher", "async_batcher.batcher"]:
        monkeypatch.setitem(sys.modules, module, None)
    section = overhead.measure(TINY, NullProgress())
    rows = {row.method: row for row in section.rows}
    for peer in ["batched", "async-batcher", "async-batcher, model in executor"]:
        assert rows[peer].status == "skipped"
        assert "pip install 'hibachi-batch[peers]'" in rows[peer].note
    assert rows["hibachi AutoregressiveBatcher"].status == "ok"


def test_missing_sentence_transformers_names_the_bench_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(Unavailable, match=r"pip install 'hibachi-batch\[bench\]'"):
        load_sentence_transformer("cpu")


def test_a_failing_method_is_reported_and_the_exit_status_is_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object) -> generation.Outcome:
        raise RuntimeError("boom")

    monkeypatch.setattr(generation, "static_batches", boom)
    out = tmp_path / "b.json"
    argv = ["bench", "--tiny", "--workloads", "generation", "--json", str(out)]
    assert main([*argv, "--plot", str(tmp_path / "b.png")]) == 1
    rows = json.loads(out.read_text())["sections"]["generation"]["rows"]
    failed = [row for row in rows if row["status"] == "failed"]
    assert [(r["method"], r["note"]) for r in failed] == [
        ("generate(), static batches", "RuntimeError: boom")
    ]
    assert "failed" in capsys.readouterr().out


def test_a_workload_that_crashes_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    from hibachi._bench import embeddings

    def no_model(device: str) -> None:
        raise OSError("weights not found")

    monkeypatch.setattr(embeddings, "load_minilm", no_model)
    settings = replace(TINY, workloads=("embeddings", "overhead"))
    report = run_bench(settings)
    crashed, ran = report.sections
    assert [(r.status, r.note) for r in crashed.rows] == [("failed", "OSError: weights not found")]
    assert all(r.status == "ok" for r in ran.rows if "FeedforwardBatcher" not in r.method)
    assert report.failed


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


def test_one_call_per_text_runs_on_the_texts_hibachi_embeds_at_each_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scaling workload's reference is measured at every concurrency on that
    concurrency's texts (their lengths differ), not once on the first few."""
    from hibachi._bench import scaling
    from hibachi._bench.feedforward_embeddings import Timed

    alone_on: list[list[str]] = []
    served_on: list[list[str]] = []

    def embed_alone(minilm: object, texts: list[str]) -> Timed:
        alone_on.append(list(texts))
        return Timed([None] * len(texts), 1.0)

    async def embedding_curve(minilm: object, texts: list[str], callers: int, size: int) -> float:
        served_on.append(list(texts))
        return 2.0 * len(texts)

    monkeypatch.setattr(scaling, "load_minilm", lambda device: object())
    monkeypatch.setattr(scaling, "embed_alone", embed_alone)
    monkeypatch.setattr(scaling, "embedding_curve", embedding_curve)
    settings = replace(TINY, scaling=replace(TINY.scaling, repeat=1))
    section = Section("scaling", "Scaling", [])
    served, alone = scaling._embedding_series(settings, NullProgress(), section)
    assert alone_on == served_on and len(alone_on) == len(settings.concurrency)
    assert alone.y == [float(len(texts)) for texts in alone_on] and not alone.reference
    assert served.y == [2.0 * y for y in alone.y]
