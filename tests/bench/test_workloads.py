"""The workloads: skips and failures reported, not raised; rounds and references wired right."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hibachi._bench import NullProgress, preset, run_bench
from hibachi._bench.methods.embed import Timed
from hibachi._bench.methods.outcome import Outcome
from hibachi._bench.results import Section
from hibachi._bench.settings import Overrides
from hibachi._bench.workloads import embeddings, generation, measure_of, overhead, scaling
from hibachi._cli import main

TINY = preset("tiny")


def test_every_workload_has_a_measure_and_no_other_name_does() -> None:
    for name in TINY.workloads:
        assert callable(measure_of(name))
    with pytest.raises(ValueError, match="unknown workload 'nope'"):
        measure_of("nope")


@pytest.mark.slow
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
    item = rows["hibachi FeedforwardBatcher"].values
    assert item["cpu_us"] > 0 and item["cpu_x_floor"] > 0  # the CPU time, beside the wall's
    assert any("CPU time of every thread" in note for note in section.notes)


@pytest.mark.slow
def test_a_failing_method_is_reported_and_the_exit_status_is_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(*args: object) -> Outcome:
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


@pytest.mark.slow
def test_a_workload_that_crashes_does_not_stop_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_model(device: str) -> None:
        raise OSError("weights not found")

    monkeypatch.setattr(embeddings, "load_minilm", no_model)
    settings = replace(TINY, workloads=("embeddings", "overhead"))
    report = run_bench(settings)
    crashed, ran = report.sections
    assert [(r.status, r.note) for r in crashed.rows] == [("failed", "OSError: weights not found")]
    assert all(r.status == "ok" for r in ran.rows if "FeedforwardBatcher" not in r.method)
    assert report.failed


def _timed(seconds: float, texts: int = 4) -> Timed:
    return Timed([None] * texts, seconds)


def test_embeddings_in_rounds_keep_the_bests_and_one_side_by_side_ratio_per_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round 2 is slow for both (a busy machine): the bests skip it, its ratio counts."""
    loop_seconds = {8: iter([2.0, 8.0, 2.2]), 32: iter([1.0, 4.0, 1.2])}
    served_seconds = {8: iter([1.5, 5.0, 1.0]), 32: iter([2.0, 5.0, 2.0])}
    order: list[str] = []

    def sorted_loop(minilm: object, texts: list[str], size: int) -> Timed:
        order.append(f"loop {size}")
        return _timed(next(loop_seconds[size]))

    def served(minilm: object, texts: list[str], size: int) -> Timed:
        order.append(f"hibachi {size}")
        return _timed(next(served_seconds[size]))

    monkeypatch.setattr(embeddings, "load_minilm", lambda device: object())
    monkeypatch.setattr(embeddings, "make_texts", lambda count, words, seed: ["a"] * 4)
    monkeypatch.setattr(embeddings, "embed_alone", lambda minilm, texts: _timed(4.0))
    monkeypatch.setattr(embeddings, "embed_sorted_batches", sorted_loop)
    monkeypatch.setattr(embeddings, "with_hibachi", served)
    monkeypatch.setattr(embeddings, "load_sentence_transformer", lambda device: object())
    monkeypatch.setattr(
        embeddings, "encode_with_sentence_transformers", lambda model, texts, size: _timed(3.0)
    )
    monkeypatch.setattr(embeddings, "min_cosine", lambda a, b: 0.99)
    released: list[int] = []
    monkeypatch.setattr(embeddings, "release_openmp_pool", lambda: released.append(1) or True)
    overrides = Overrides(batch_sizes=(8, 32), rounds=3, release_loop_pool=True)
    section = embeddings.measure(preset("tiny", overrides=overrides), NullProgress())
    assert len(released) == 6  # before each hibachi run: 2 sizes, 3 rounds
    assert order[:4] == ["hibachi 8", "hibachi 32", "loop 8", "loop 32"]
    assert order[8:] == ["hibachi 32", "loop 8", "loop 32", "hibachi 8"]  # the order turns
    best = {row.method: row.values["seconds"] for row in section.rows}
    assert best == {
        "one call per text": 4.0,
        "hibachi FeedforwardBatcher, batch 8": 1.0,
        "hibachi FeedforwardBatcher, batch 32": 2.0,
        "sorted padded batches, batch 8": 2.0,
        "sorted padded batches, batch 32": 1.0,
        "sentence-transformers encode": 3.0,
    }
    # Round by round: the loop's best seconds over hibachi's, 1/1.5, 4/5, 1.2/1.
    assert "0.80x [0.67-1.20]" in section.notes[0]
    assert "batch sizes 8, 32" in section.title


def test_embeddings_in_turn_report_a_missing_library_as_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hibachi._bench.methods.embed import Unavailable

    def missing(device: str) -> object:
        raise Unavailable("sentence-transformers is not installed")

    monkeypatch.setattr(embeddings, "load_minilm", lambda device: object())
    monkeypatch.setattr(embeddings, "embed_alone", lambda minilm, texts: _timed(4.0, len(texts)))
    monkeypatch.setattr(
        embeddings, "embed_sorted_batches", lambda m, texts, size: _timed(2.0, len(texts))
    )
    monkeypatch.setattr(embeddings, "with_hibachi", lambda m, texts, size: _timed(1.0, len(texts)))
    monkeypatch.setattr(embeddings, "load_sentence_transformer", missing)
    monkeypatch.setattr(embeddings, "min_cosine", lambda a, b: 1.0)
    section = embeddings.measure(TINY, NullProgress())
    rows = {row.method: row for row in section.rows}
    assert list(rows) == [
        "one call per text",
        "hibachi FeedforwardBatcher",
        "sorted padded batches",
        "sentence-transformers encode",
    ]
    assert rows["hibachi FeedforwardBatcher"].values["speedup"] == 4.0
    assert rows["sentence-transformers encode"].status == "skipped"


def test_the_scaling_curves_are_medians_of_alternating_rounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order: list[str] = []
    alone_rates = iter([10.0, 30.0, 12.0] * 2)
    served_rates = iter([11.0, 36.0, 9.0] * 2)

    def embed_alone(minilm: object, texts: list[str]) -> Timed:
        order.append("alone")
        return Timed([None] * len(texts), len(texts) / next(alone_rates))

    async def embedding_curve(minilm: object, texts: list[str], callers: int, size: int) -> float:
        order.append("hibachi")
        return next(served_rates)

    monkeypatch.setattr(scaling, "load_minilm", lambda device: object())
    monkeypatch.setattr(scaling, "embed_alone", embed_alone)
    monkeypatch.setattr(scaling, "embedding_curve", embedding_curve)
    settings = replace(TINY, scaling=replace(TINY.scaling, rounds=3))
    section = Section("scaling", "Scaling", [])
    served, alone = scaling._embedding_series(settings, NullProgress(), section)
    assert order[:6] == ["alone", "hibachi", "hibachi", "alone", "alone", "hibachi"]
    assert alone.y == [pytest.approx(12.0)] * 2 and served.y == [11.0] * 2
    assert "1: 1.10x [0.75-1.20], 4: 1.10x [0.75-1.20]" in section.notes[-1]


def test_the_worker_thread_reference_is_a_third_curve_off_the_main_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    released: list[int] = []

    async def embedding_curve(minilm: object, texts: list[str], callers: int, size: int) -> float:
        return 20.0

    async def on_worker(minilm: object, texts: list[str], callers: int) -> float:
        return 8.0

    monkeypatch.setattr(scaling, "load_minilm", lambda device: object())
    monkeypatch.setattr(scaling, "embed_alone", lambda m, texts: Timed([None] * len(texts), 0.1))
    monkeypatch.setattr(scaling, "embedding_curve", embedding_curve)
    monkeypatch.setattr(scaling, "alone_on_worker_curve", on_worker)
    monkeypatch.setattr(scaling, "release_openmp_pool", lambda: released.append(1) or True)
    overrides = Overrides(rounds=2, worker_reference=True, release_loop_pool=True)
    settings = preset("tiny", overrides=overrides)
    section = Section("scaling", "Scaling", [])
    series = scaling._embedding_series(settings, NullProgress(), section)
    assert [s.label for s in series] == [
        "hibachi",
        "one call per text",
        "one call per text, on a worker thread",
    ]
    assert series[2].y == [8.0, 8.0]
    assert len(released) == 2 * 2 * len(settings.concurrency)  # both methods off the main thread
    assert "on a worker thread by clients: 1: 2.50x" in section.notes[-1]


def test_one_call_per_text_runs_on_the_texts_hibachi_embeds_at_each_concurrency(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scaling workload's reference is measured at every concurrency on that
    concurrency's texts (their lengths differ), not once on the first few."""
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


def test_generation_rounds_alternate_the_methods_and_note_hibachis_ratios(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []

    def fake(name: str, seconds: float) -> object:
        def run(*args: object, prefix_caching: bool = True) -> Outcome:
            calls.append(name if prefix_caching else f"{name} off")
            return Outcome([[5, 6]] * 4, [0.1] * 4, seconds, last_token=[0.2] * 4)

        return run

    def missing(*args: object) -> Outcome:
        calls.append("generate_batch")
        raise generation.Missing("needs transformers >= 4.56")

    monkeypatch.setattr(generation, "one_at_a_time", fake("alone", 8.0))
    monkeypatch.setattr(generation, "with_hibachi", fake("hibachi", 1.0))
    monkeypatch.setattr(generation, "static_batches", fake("static", 2.0))
    monkeypatch.setattr(generation, "continuous_batching", missing)
    monkeypatch.setattr(generation, "one_batch", fake("limit", 1.0))
    settings = preset("tiny", overrides=Overrides(rounds=3))
    section = generation.measure(settings, NullProgress())
    assert calls[:6] == ["alone", "hibachi", "hibachi off", "static", "generate_batch", "limit"]
    assert calls[6:11] == ["hibachi", "hibachi off", "static", "limit", "alone"]  # turned by one
    assert calls.count("generate_batch") == 1 and len(calls) == 16  # and not retried
    rows = {row.method: row for row in section.rows}
    assert rows[generation.CONTINUOUS].status == "skipped"
    assert rows[generation.STATIC].values["speedup"] == pytest.approx(4.0)
    (note,) = [n for n in section.notes if "rounds' ratios" in n]
    assert "generate(), static batches 2.00x [2.00-2.00]" in note
    assert "one padded batch (the limit) 1.00x" in note and "generate_batch" not in note
    assert "hibachi (KV cache, no prefix caching) 1.00x" in note
