"""The presets' sizes, and the command line's changes to them."""

from __future__ import annotations

import pytest

from hibachi._bench.settings import Overrides, ScalingSize, preset


@pytest.mark.parametrize(
    ("clients", "texts"), [(1, 32), (2, 32), (3, 33), (8, 32), (16, 64), (64, 256)]
)
def test_few_clients_embed_enough_texts_to_measure(clients: int, texts: int) -> None:
    size = ScalingSize(prompt_length=1, budget=1, texts_per_client=4, repeat=1, min_texts=32)
    assert size.texts_at(clients) == texts


def test_the_full_preset_alternates_rounds_over_at_least_32_texts() -> None:
    scaling = preset("full").scaling
    assert scaling.rounds >= 3 and scaling.texts_at(1) >= 32
    assert preset("tiny").scaling.texts_at(4) == 4  # the workload's own size, unchanged


def test_the_quick_preset_leaves_out_the_row_without_prefix_caching() -> None:
    """It would be a whole hibachi run more; quick keeps the prefix hit rate column."""
    assert preset("full").generation.prefix_caching_row
    assert not preset("quick").generation.prefix_caching_row
    assert preset("tiny").generation.prefix_caching_row  # the tests run every row


def test_preset_overrides() -> None:
    settings = preset("quick", device="cuda", concurrency=(2, 8), workloads=("scaling",))
    assert (settings.preset, settings.device) == ("quick", "cuda")
    assert settings.concurrency == (2, 8)
    assert settings.workloads == ("scaling",)
    assert preset("quick").workloads == ("generation", "embeddings", "overhead", "scaling")


def test_no_overrides_leave_the_preset_as_it_is() -> None:
    full = preset("full")
    assert Overrides().apply(full) == full
    assert full.embeddings.batch_size == 32 and full.embeddings.rounds == 0
    assert full.pipeline.work == ("blas",) and not full.release_loop_pool


def test_each_override_reaches_the_workloads_that_have_its_figure() -> None:
    overrides = Overrides(
        clients=8,
        batch_sizes=(16,),
        rounds=5,
        texts=40,
        words=(4, 400),
        callers=999,
        worker_reference=True,
        release_loop_pool=True,
        stage_work=("sleep", "noop"),
    )
    settings = preset("full", overrides=overrides)
    assert (settings.generation.clients, settings.generation.batch_size) == (8, 16)
    embeddings = settings.embeddings
    assert (embeddings.batch_sizes, embeddings.rounds, embeddings.texts) == ((16,), 5, 40)
    assert embeddings.words == (4, 400)
    assert (settings.overhead.callers, settings.overhead.batch_size) == (999, 16)
    assert settings.scaling.rounds == 5 and settings.scaling.worker_reference
    assert settings.pipeline.work == ("sleep", "noop") and settings.pipeline.batch_size == 16
    assert settings.release_loop_pool
    assert settings.repeat_within == preset("full").repeat_within


def test_several_batch_sizes_go_to_embeddings_alone() -> None:
    settings = preset("full", overrides=Overrides(batch_sizes=(8, 32)))
    assert settings.embeddings.batch_sizes == (8, 32) and settings.embeddings.batch_size == 32
    assert settings.generation.batch_size == preset("full").generation.batch_size


def test_repeat_runs_every_method_that_often_whatever_it_takes() -> None:
    settings = preset("quick", overrides=Overrides(repeat=3))
    sizes = [settings.generation, settings.embeddings, settings.overhead, settings.scaling]
    assert {size.repeat for size in [*sizes, settings.pipeline]} == {3}
    assert settings.repeat_within is None
    assert settings.as_json()["repeat_within"] is None
