"""Feedforward results own their memory: ordinary tensors, not views of the batch's
output, unless the user opts into views with ``copy_results=False``."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import torch

import hibachi
from support.feedforward import TIMEOUT, Gate


class Recording:
    """A model that keeps a weak reference to every output it returns."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.outputs: list[weakref.ref[Any]] = []

    def __call__(self, batch: Any) -> Any:
        output = self.model(batch)
        self.outputs.append(weakref.ref(output))
        return output


def results_of(model: Any, xs: list[Any], **options: Any) -> list[Any]:
    """Run ``xs`` as one batch; their results."""
    gate = Gate(model)
    with hibachi.FeedforwardBatcher(gate, max_batch_size=len(xs), **options) as batcher:
        first = batcher.run(xs[0])
        gate.next_batch()
        rest = [batcher.run(x) for x in xs[1:]]
        gate.open()
        return [handle.result(timeout=TIMEOUT) for handle in [first, *rest]]


def test_a_result_does_not_keep_the_batch_output_alive() -> None:
    recording = Recording(lambda batch: np.tile(batch, 64))  # a 64 times larger output
    results = results_of(recording, [np.ones(4) for _ in range(3)])
    gc.collect()
    assert len(recording.outputs) == 2  # the first item alone, then the other two
    assert all(ref() is None for ref in recording.outputs), "a result keeps its batch alive"
    assert all(r.base is None and r.shape == (256,) for r in results)


def test_views_keep_the_batch_output_alive_when_asked_for() -> None:
    recording = Recording(lambda batch: batch * 2)
    results = results_of(recording, [np.ones(4) for _ in range(3)], copy_results=False)
    gc.collect()
    assert all(ref() is not None for ref in recording.outputs)
    assert all(r.base is not None for r in results)


def test_a_torch_result_is_an_ordinary_tensor() -> None:
    def model(batch: Any) -> Any:
        return {"y": batch * 2, "first": batch[:, 0]}

    results = results_of(model, [torch.ones(3), torch.zeros(3)])
    for result in results:
        for tensor in result.values():
            assert not tensor.is_inference()
            tensor += 1  # in place: refused for an inference tensor
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size()
    assert results[0]["y"].tolist() == [3.0, 3.0, 3.0]
    assert results[1]["first"].item() == 1.0
    assert results[0]["y"].requires_grad_().sum().backward() is None


def test_torch_views_are_inference_tensors_when_asked_for() -> None:
    (result,) = results_of(lambda batch: batch * 2, [torch.ones(3)], copy_results=False)
    assert result.is_inference()


def test_trimmed_results_own_their_memory() -> None:
    results = results_of(
        lambda batch: batch + 1,
        [np.ones(2, np.int64), np.ones(5, np.int64)],
        pad_value=0,
        trim_output=True,
    )
    assert [r.tolist() for r in results] == [[2, 2], [2, 2, 2, 2, 2]]
    assert all(r.base is None for r in results)
