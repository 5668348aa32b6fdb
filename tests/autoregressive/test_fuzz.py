"""Fuzzing the autoregressive batcher: whatever the caller passes or the model returns.

Invariants, for arbitrary arguments at ``run()``, the constructor, ``options`` and
``close``, and arbitrary model outputs (values, types, shapes, dtypes, exceptions of
every kind, `BaseException`s included):

- every caller gets tokens or a `HibachiError`, within a bounded time;
- a well-formed request served by other steps gets exactly its tokens;
- the batcher keeps serving, or, after `KeyboardInterrupt`/`SystemExit` from the
  model, every caller gets a `HibachiError` that names it and ``health()`` says why;
- nothing is left behind: no request or stream object outlives the examples.

Examples are derandomized so CI sees the same cases every run, and few enough that
the file runs in well under a minute; ``HIBACHI_FUZZ_EXPLORE=2000`` searches anew,
with that many examples.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import hibachi
from hibachi._autoregressive.request import Request

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]

EXPLORE = bool(os.environ.get("HIBACHI_FUZZ_EXPLORE"))  # a number of examples: search anew
FUZZ = settings(
    max_examples=int(os.environ.get("HIBACHI_FUZZ_EXPLORE", "0")) or 100,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
WITHIN = 10.0  # seconds: "a bounded time"
BAD = 5000  # the prompt of the request whose step the fuzzed model spoils
FATAL = (KeyboardInterrupt, SystemExit)

# -- arbitrary values -------------------------------------------------------------------

DTYPES = [
    np.bool_, np.int8, np.uint8, np.int16, np.int32, np.int64, np.uint64,
    np.float16, np.float32, np.float64, np.complex64,
]  # fmt: skip

huge_ints = st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**400, -(10**400)])
numbers = st.one_of(
    st.integers(-(2**70), 2**70),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(allow_nan=True),
    st.sampled_from([np.int64(3), np.float32(0.5), np.uint64(2**64 - 1), np.bool_(True)]),
)
numpy_arrays = hnp.arrays(
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
)
torch_tensors = numpy_arrays.filter(lambda a: a.dtype != np.uint64).map(
    lambda a: torch.from_numpy(np.array(a))
)
anything = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-5, 5), max_size=4),
    st.sampled_from([object(), [], {}, (), {"temperature": 1}, [[1]], np.int64, print]),
    numpy_arrays,
    torch_tensors,
)
good_prompts = hnp.arrays(np.int64, st.integers(1, 5), elements=st.integers(0, 999))


def next_int(tokens: Any, mask: Any) -> Any:
    return (tokens[:, -1] + 1) % 1000


def reference(prompt: Any, budget: int) -> list[int]:
    last, out = int(prompt[-1]), []
    for _ in range(budget):
        last = (last + 1) % 1000
        out.append(last)
    return out


# -- reading with a bound ------------------------------------------------------------------

_reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fuzz-reader")


def outcome(stream: hibachi.TokenStream, most: int = 8) -> tuple[list[int], BaseException | None]:
    """Up to ``most`` tokens and how the stream ended (None: normally, or cut), within WITHIN."""

    def read() -> tuple[list[int], BaseException | None]:
        tokens: list[int] = []
        try:
            for token in stream:
                tokens.append(int(token))
                if len(tokens) == most:
                    stream.cancel()
                    break
        except Exception as exc:
            return tokens, exc
        return tokens, None

    return _reader.submit(read).result(timeout=WITHIN)


def check_ending(error: BaseException | None) -> None:
    assert error is None or isinstance(error, hibachi.HibachiError), repr(error)


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """After every example of the file (a full gc pass is slow: once)."""
    yield
    gc.collect()
    leaked = [o for o in gc.get_objects() if type(o) in (Request, hibachi.TokenStream)]
    assert not leaked, f"{len(leaked)} requests or streams outlived the examples"


def batcher(model: Any = next_int, **options: Any) -> hibachi.AutoregressiveBatcher:
    return hibachi.AutoregressiveBatcher(
        model, stop_token=np.int64(-1), pad_value=np.int64(0), **options
    )


# -- run() -------------------------------------------------------------------------------------


def _float_sized(value: Any) -> bool:
    # ints past float's range wait for check_timeout to accept them (harden-ff, #16)
    return not isinstance(value, int) or abs(value) < 10**300


run_arguments = st.fixed_dictionaries(
    {},
    optional={
        "max_new_tokens": st.one_of(st.integers(-3, 12), anything),
        "timeout": st.one_of(st.none(), st.floats(0.001, 5), anything.filter(_float_sized)),
        "options": anything,
    },
)


@FUZZ
@given(prompt=st.one_of(good_prompts, anything), kwargs=run_arguments, witness=good_prompts)
def test_run_with_arbitrary_arguments(prompt: Any, kwargs: dict[str, Any], witness: Any) -> None:
    with batcher(max_batch_size=2, max_queue_size=8) as b:
        try:
            stream = b.run(prompt, **kwargs)
        except hibachi.HibachiError:
            stream = None
        fine = b.run(witness, max_new_tokens=4)
        if stream is not None:
            check_ending(outcome(stream)[1])
            del stream
        assert outcome(fine) == (reference(witness, 4), None)
        assert b.health().ok()


# -- what the model returns or raises -------------------------------------------------------------


class UsersBaseException(BaseException):
    pass


class NeedsTwoArguments(Exception):
    def __init__(self, a: Any, b: Any) -> None:
        super().__init__(a)


class UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


EXCEPTIONS = [
    ValueError("bad"), RuntimeError("bad"), MemoryError(), RecursionError(), StopIteration(),
    StopAsyncIteration(), asyncio.CancelledError(), GeneratorExit(), UsersBaseException(),
    KeyboardInterrupt(), SystemExit(2), hibachi.BatcherClosed("from the model"),
    hibachi.Timeout("from the model"), NeedsTwoArguments(1, 2), UnprintableError(),
    ValueError("x" * 100_000),
]  # fmt: skip
outputs = st.one_of(
    anything,
    hnp.arrays(st.sampled_from(DTYPES), st.just((1,))),
    hnp.arrays(np.int64, st.just((1,)), elements=st.integers(-(2**63), 2**63 - 1)),
    st.sampled_from([np.ma.masked_array([3], mask=[True]), torch.tensor([3])]),
)


class Spoiler:
    """next_int, except on the step of the BAD row: returns ``output`` or raises ``error``."""

    def __init__(self, output: Any, error: BaseException | None, is_async: bool) -> None:
        self.output, self.error, self.is_async = output, error, is_async

    def __call__(self, tokens: Any, mask: Any) -> Any:
        if self.is_async:
            return self._async(tokens, mask)
        return self._step(tokens, mask)

    async def _async(self, tokens: Any, mask: Any) -> Any:
        return self._step(tokens, mask)

    def _step(self, tokens: Any, mask: Any) -> Any:
        if int(tokens[0, -1]) != BAD:
            return next_int(tokens, mask)
        if self.error is not None:
            raise self.error
        return self.output


def serve_a_spoiled_step(model: Spoiler, witness: Any) -> tuple[Any, Any, Any]:
    """The spoiled request's and a witness's outcomes, and the batcher's health after."""
    b = batcher(model, max_batch_size=1)  # steps never shared: the witness has its own
    with b:
        spoiled = b.run(np.array([BAD]), max_new_tokens=3)
        fine = b.run(witness, max_new_tokens=4)
        spoiled_outcome, fine_outcome = outcome(spoiled), outcome(fine)
        b._engine.join(WITHIN if isinstance(model.error, FATAL) else 0)
        return spoiled_outcome, fine_outcome, b.health()


@FUZZ
@given(output=outputs, is_async=st.booleans(), witness=good_prompts)
def test_arbitrary_model_outputs(output: Any, is_async: bool, witness: Any) -> None:
    (_, ending), fine, health = serve_a_spoiled_step(Spoiler(output, None, is_async), witness)
    check_ending(ending)
    assert fine == (reference(witness, 4), None)
    assert health.ok()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda e: type(e).__name__)
def test_every_kind_of_exception_from_the_model(error: BaseException, is_async: bool) -> None:
    witness = np.array([3, 4])
    (tokens, ending), fine, health = serve_a_spoiled_step(Spoiler(None, error, is_async), witness)
    assert tokens == [] and isinstance(ending, hibachi.HibachiError)
    if isinstance(error, FATAL):
        name = type(error).__name__
        assert name in str(ending) and name in str(fine[1])
        assert health.failure is not None and name in health.failure
        return
    assert isinstance(ending, hibachi.ModelError)
    cause = ending.__cause__  # a coroutine turns StopIteration into RuntimeError (PEP 479)
    assert cause is error or (cause is not None and cause.__cause__ is error)
    assert fine == (reference(witness, 4), None)
    assert health.ok()


# -- the constructor and close ---------------------------------------------------------------

SETTINGS = [
    "max_batch_size", "max_queue_size", "max_new_tokens", "max_batch_tokens",
    "max_prompt_length", "max_unread_tokens", "stop_token", "pad_value", "backend",
]  # fmt: skip
settings_values = st.one_of(st.integers(-2, 70), anything)


@FUZZ
@given(
    kwargs=st.dictionaries(st.sampled_from(SETTINGS), settings_values, max_size=3),
    model=st.one_of(st.just(next_int), anything),
    cancel=anything,
)
@example(kwargs={}, model=next_int, cancel=np.array([]))  # found by the fuzz: close() half done
def test_arbitrary_settings(kwargs: dict[str, Any], model: Any, cancel: Any) -> None:
    options = {"stop_token": np.int64(-1), "pad_value": np.int64(0), **kwargs}
    try:
        b = hibachi.AutoregressiveBatcher(model, **options)
    except hibachi.ConfigurationError:
        return
    with b:
        try:
            stream = b.run(np.array([1]), max_new_tokens=3)
        except hibachi.HibachiError:
            pass
        else:
            check_ending(outcome(stream)[1])
            del stream
        close_with(b, cancel)
        close_with(b, cancel)
    assert b.health().state == "closed"


def close_with(b: hibachi.AutoregressiveBatcher, cancel: Any) -> None:
    """``close(cancel=cancel)``: a value with no truth is refused before anything changes."""
    try:
        bool(cancel)
    except Exception as exc:
        state = b.health().state
        with pytest.raises(type(exc)):
            b.close(cancel=cancel)
        assert b.health().state == state
    else:
        b.close(cancel=cancel)


# -- causal_lm_batcher: prompts and sampling options -------------------------------------------

transformers = pytest.importorskip("transformers")
from hibachi.integrations.transformers import causal_lm_batcher  # noqa: E402

VOCAB, EOS = 32, 3


@pytest.fixture(scope="module")
def tiny_lm() -> Any:
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=8, n_layer=1, n_head=2, n_positions=32,
        bos_token_id=1, eos_token_id=EOS, pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(config).double().eval()


@pytest.fixture(scope="module")
def lm_batcher(tiny_lm: Any) -> Iterator[hibachi.AutoregressiveBatcher]:
    """One batcher for every example: it must keep serving whatever came before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with causal_lm_batcher(tiny_lm, max_batch_size=2, max_length=16, eos_token_id=EOS) as b:
        yield b
    torch.set_num_threads(threads)


sampling_options = st.one_of(
    anything,
    st.dictionaries(
        st.sampled_from(["temperature", "top_k", "top_p", "seed", "beam"]),
        st.one_of(numbers, anything),
        max_size=4,
    ),
)
token_ids = st.lists(st.integers(-3, VOCAB + 3), min_size=1, max_size=6).map(torch.tensor)
LM_WITNESS = torch.tensor([7, 8, 9])


@settings(FUZZ, max_examples=60)
@given(prompt=st.one_of(token_ids, anything), options=sampling_options)
def test_causal_lm_run_with_arbitrary_prompts_and_options(
    lm_batcher: hibachi.AutoregressiveBatcher, prompt: Any, options: Any
) -> None:
    b = lm_batcher
    expected = outcome(b.run(LM_WITNESS, max_new_tokens=4))
    try:
        stream = b.run(prompt, max_new_tokens=4, options=options)
    except hibachi.HibachiError:
        stream = None
    fine = b.run(LM_WITNESS, max_new_tokens=4)
    if stream is not None:
        tokens, ending = outcome(stream)
        check_ending(ending)
        assert all(0 <= t < VOCAB for t in tokens)
        del stream
    assert outcome(fine) == expected
    assert b.health().ok()
