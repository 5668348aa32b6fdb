"""The engine's common step (every row decodes, none ends) takes a shorter path: the
same outcome as the general one, whatever the model returns or the tokens' library."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import hibachi
from support.harness import Driver
from support.incremental_models import SlotDriver, driver, tokens


def counting(dtype: Any) -> Any:
    def model(tokens: Any, mask: Any) -> Any:
        return (tokens[:, -1] + 1).astype(dtype)

    return model


def test_a_model_whose_output_dtype_changes_is_checked_again() -> None:
    calls = 0

    def model(tokens: Any, mask: Any) -> Any:
        nonlocal calls
        calls += 1
        return counting(np.int64 if calls < 3 else np.float64)(tokens, mask)

    d = Driver(model, stop=np.int64(99), pad=np.int64(0))
    _, sink = d.submit(np.array([1]), max_new_tokens=10)
    d.run_until_idle()
    assert sink.tokens() == [2, 3]
    assert isinstance(sink.error, hibachi.ModelError)
    assert "does not cast safely" in str(sink.error)


def test_a_model_whose_output_type_changes_is_checked_again() -> None:
    calls = 0

    def model(tokens: Any, mask: Any) -> Any:
        nonlocal calls
        calls += 1
        out = tokens[:, -1] + 1
        return out if calls < 3 else out.tolist()

    d = Driver(model, stop=np.int64(99), pad=np.int64(0))
    _, sink = d.submit(np.array([1]), max_new_tokens=10)
    d.run_until_idle()
    assert sink.tokens() == [2, 3]
    assert isinstance(sink.error, hibachi.ModelError)
    assert "expected a numpy array" in str(sink.error)


@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_tokens_stay_as_delivered_when_the_model_reuses_its_output(library: str) -> None:
    kept = np.zeros(2, dtype=np.int64) if library == "numpy" else torch.zeros(2, dtype=torch.int64)

    def model(tokens: Any, mask: Any) -> Any:
        kept[...] = tokens[:, -1] + 1
        return kept[: tokens.shape[0]]

    wrap = np.array if library == "numpy" else torch.tensor
    d = Driver(model, stop=wrap(99), pad=wrap(0))
    _, a = d.submit(wrap([1]), max_new_tokens=5)
    _, b = d.submit(wrap([10]), max_new_tokens=5)
    d.run_until_idle()
    assert a.tokens() == [2, 3, 4, 5, 6] and b.tokens() == [11, 12, 13, 14, 15]


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.uint8, torch.bfloat16, torch.float32], ids=str
)
@pytest.mark.parametrize("token_shape", [(), (2,)], ids=["scalar", "vector"])
def test_torch_rows_end_alone_at_the_stop_token_or_budget(
    dtype: torch.dtype, token_shape: tuple[int, ...]
) -> None:
    def model(tokens: Any, mask: Any) -> Any:
        return tokens[:, -1] + 1

    stop, pad = torch.full(token_shape, 9, dtype=dtype), torch.zeros(token_shape, dtype=dtype)
    runs = {"stops": (5, 100), "budget": (1, 3), "long": (3, 100)}
    with hibachi.AutoregressiveBatcher(model, stop_token=stop, pad_value=pad) as batcher:
        streams = {
            name: batcher.run(torch.full((1, *token_shape), start, dtype=dtype), max_new_tokens=n)
            for name, (start, n) in runs.items()
        }
        got = {name: list(stream) for name, stream in streams.items()}
    firsts = {name: [float(t.reshape(-1)[0]) for t in ts] for name, ts in got.items()}
    assert firsts == {"stops": [6, 7, 8, 9], "budget": [2, 3, 4], "long": [4, 5, 6, 7, 8, 9]}
    assert all(t.dtype == dtype and t.shape == token_shape for ts in got.values() for t in ts)


def test_a_row_cancelled_while_its_prompt_goes_in_leaves_the_others_decoding() -> None:
    d: SlotDriver = driver(slots=2, chunk=4)
    _, short = d.submit("short", [1, 2], budget=12)
    d.step()
    long_request, long = d.submit("long", list(range(1, 21)), budget=3)
    d.step()  # a prefill step of the long prompt
    d.step()  # a decode step of the short row
    d.cancel(long_request)
    d.run_until_idle()
    assert long.ended and long.items == []
    assert tokens(short) == tokens_alone([1, 2], 12)
    after = [call.tags for call in d.model.calls[4:]]
    assert after and all(tags == ["short"] for tags in after)
    assert all(call.widths == [1] for call in d.model.calls[4:])


def tokens_alone(prompt: list[int], budget: int) -> list[int]:
    d = driver(slots=1)
    _, sink = d.submit("alone", prompt, budget=budget)
    d.run_until_idle()
    return tokens(sink)


class TorchRunningSum(hibachi.IncrementalModel):
    """Next token: (sum of what the slot has seen + how many) mod 97, in torch."""

    def __init__(self, slots: int) -> None:
        self.sums = [0] * slots
        self.counts = [0] * slots

    def step(self, tokens: Any, mask: Any, slots: Any, options: list[Any]) -> Any:
        assert isinstance(tokens, torch.Tensor) and tokens.shape == mask.shape
        out = torch.empty(tokens.shape[0], dtype=tokens.dtype)
        for i, slot in enumerate(slots.tolist()):
            self.sums[slot] += int(tokens[i][mask[i]].sum())
            self.counts[slot] += int(mask[i].sum())
            out[i] = (self.sums[slot] + self.counts[slot]) % 97
        return out

    def release(self, slot: int) -> None:
        self.sums[slot] = self.counts[slot] = 0


def test_torch_prompts_fed_in_chunks_beside_decoding_rows_get_what_they_get_alone() -> None:
    prompts = [torch.arange(1, 1 + length) % 50 + 1 for length in (3, 17, 40, 5, 29, 11)]

    def serve(batch: list[torch.Tensor], size: int) -> list[list[int]]:
        batcher = hibachi.AutoregressiveBatcher(
            TorchRunningSum(size),
            stop_token=torch.tensor(0),
            pad_value=torch.tensor(0),
            max_batch_size=size,
            max_batch_tokens=16,
        )
        with batcher:
            streams = [batcher.run(prompt, max_new_tokens=12) for prompt in batch]
            return [[int(t) for t in stream] for stream in streams]

    alone = [serve([prompt], 1)[0] for prompt in prompts]
    assert serve(prompts, 3) == alone
    assert serve(prompts, 6) == alone


def test_slot_writes_through_the_backend_are_those_through_numpy_views(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hibachi._autoregressive import slots

    prompts = [list(range(1, 1 + n)) for n in (3, 17, 9, 1, 12, 6)]

    def serve() -> tuple[list[list[int]], list[Any]]:
        d = driver(slots=3, chunk=8)
        sinks = [d.submit(i, prompt, budget=5 + i)[1] for i, prompt in enumerate(prompts)]
        d.run_until_idle()
        return [tokens(sink) for sink in sinks], d.model.calls

    assert isinstance(slots.writes_for(*slot_storage()), slots._HostWrites)
    through_views = serve()
    monkeypatch.setattr(slots, "writes_for", lambda backend, padding: slots._BackendWrites())
    assert serve() == through_views


def slot_storage() -> tuple[Any, Any]:
    from hibachi._backends import backend_of

    pad = np.int64(0)
    backend = backend_of(np.zeros(()))
    assert backend is not None
    return backend, backend.to_storage(pad, pad)
