"""A request's options through the batcher: penalties, bias, min_tokens, ignore_eos.

Greedy rows with logit changes must equal ``model.generate()`` with the
matching processors (``repetition_penalty``, ``sequence_bias``,
``min_new_tokens``) on each prompt alone; seeded rows must get the same tokens
alone and in a crowd fed in other chunks; bad values are refused in ``run()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import hibachi  # noqa: E402
from hibachi.integrations.transformers import causal_lm_batcher  # noqa: E402
from support.models import TIMEOUT, run_async  # noqa: E402
from support.tiny_lms import EOS, VOCAB, tiny_llama  # noqa: E402
from support.torch_threads import one_torch_thread  # noqa: E402, F401 (autouse: one PyTorch thread)


@pytest.fixture(scope="module")
def llama() -> Any:
    return tiny_llama()


def serve(batcher: hibachi.AutoregressiveBatcher, jobs: list[dict[str, Any]]) -> list[list[int]]:
    async def one(job: dict[str, Any]) -> list[int]:
        return [int(t) for t in await batcher.run(**job).collect()]

    async def main() -> list[list[int]]:
        async with batcher:
            return await asyncio.wait_for(asyncio.gather(*map(one, jobs)), TIMEOUT * 3)

    return run_async(main())


def generate(model: Any, prompt: Any, budget: int, **processors: Any) -> list[int]:
    """Greedy ``generate()`` with ``processors``' settings; ``eos_token_id=None``: no stop."""
    out = model.generate(
        prompt[None],
        attention_mask=torch.ones_like(prompt)[None],
        max_new_tokens=budget,
        do_sample=False,
        pad_token_id=0,
        **{"eos_token_id": EOS, **processors},
    )
    return [int(t) for t in out[0, prompt.shape[0] :]]


PROMPTS = [[11, 12, 13, 11], [40, 41], [7] * 9, [60, 61, 62, 63, 64, 65, 66]]


@pytest.mark.parametrize(
    ("options", "processors"),
    [
        pytest.param(
            {"repetition_penalty": 1.8}, {"repetition_penalty": 1.8}, id="repetition-penalty"
        ),
        pytest.param(
            {"repetition_penalty": 0.6}, {"repetition_penalty": 0.6}, id="repetition-reward"
        ),
        pytest.param(
            {"logit_bias": {EOS: 8.0, 30: 3.5}},
            {"sequence_bias": {(EOS,): 8.0, (30,): 3.5}},
            id="logit-bias",
        ),
        pytest.param(
            {"logit_bias": {EOS: 30.0}, "min_tokens": 4},
            {"sequence_bias": {(EOS,): 30.0}, "min_new_tokens": 4},
            id="min-tokens",
        ),
        pytest.param(
            {"logit_bias": {EOS: 6.0, 50: -40.0}, "min_tokens": 2, "repetition_penalty": 1.3},
            {
                "sequence_bias": {(EOS,): 6.0, (50,): -40.0},
                "min_new_tokens": 2,
                "repetition_penalty": 1.3,
            },
            id="all-three",
        ),
    ],
)
def test_greedy_rows_with_logit_changes_equal_generate_with_its_processors(
    llama: Any, options: dict[str, Any], processors: dict[str, Any]
) -> None:
    jobs = [
        {"prompt": torch.tensor(p), "max_new_tokens": 12, "options": options if i % 2 else None}
        for i, p in enumerate(PROMPTS * 2)
    ]
    batcher = causal_lm_batcher(
        llama, max_batch_size=5, max_length=64, eos_token_id=EOS, max_batch_tokens=6
    )
    got = serve(batcher, jobs)
    for job, tokens in zip(jobs, got, strict=True):
        extra = processors if job["options"] else {}
        assert tokens == generate(llama, job["prompt"], 12, **extra)


def test_frequency_and_presence_penalties_steer_greedy_rows_off_their_repeats(
    llama: Any,
) -> None:
    prompt = torch.tensor([7] * 9)
    plain = generate(llama, prompt, 16)
    assert len(set(plain)) < 8  # the tiny model repeats itself
    batcher = causal_lm_batcher(llama, max_batch_size=2, max_length=64, eos_token_id=EOS)
    penalised, rewarded = serve(
        batcher,
        [
            {"prompt": prompt, "max_new_tokens": 16, "options": {"frequency_penalty": 2.0}},
            {"prompt": prompt, "max_new_tokens": 16, "options": {"presence_penalty": -2.0}},
        ],
    )
    assert len(set(penalised)) > len(set(plain)) >= len(set(rewarded))
    assert penalised[0] == plain[0]  # nothing was generated before the first token


def test_min_tokens_never_yields_the_stop_token_early(llama: Any) -> None:
    options = {"logit_bias": {EOS: 100.0}, "temperature": 1.0, "seed": 1}  # EOS at once…
    batcher = causal_lm_batcher(llama, max_batch_size=4, max_length=64, eos_token_id=EOS)
    jobs = [
        {"prompt": torch.tensor(p), "max_new_tokens": 10, "options": {**options, "min_tokens": n}}
        for n, p in zip([0, 1, 5, 10], PROMPTS, strict=True)
    ]
    got = serve(batcher, jobs)
    assert [len(tokens) for tokens in got] == [1, 2, 6, 10]  # …but not before min_tokens
    assert all(EOS not in tokens[:-1] for tokens in got)
    assert [tokens[-1] == EOS for tokens in got] == [True, True, True, False]


def test_ignore_eos_runs_to_the_budget_through_stop_tokens(llama: Any) -> None:
    prompt = torch.tensor([20, 21, 22])
    eager = {"logit_bias": {EOS: 0.1}}  # the stop token now and then
    batcher = causal_lm_batcher(llama, max_batch_size=3, max_length=64, eos_token_id=EOS)
    ignoring, stopping, no_bias = serve(
        batcher,
        [
            {"prompt": prompt, "max_new_tokens": 20, "options": {**eager, "ignore_eos": True}},
            {"prompt": prompt, "max_new_tokens": 20, "options": eager},
            {"prompt": prompt, "max_new_tokens": 20, "options": {"ignore_eos": True}},
        ],
    )
    want = generate(llama, prompt, 20, sequence_bias={(EOS,): 0.1}, eos_token_id=None)
    assert ignoring == want and len(ignoring) == 20 and ignoring.count(EOS) >= 2
    assert stopping == want[: want.index(EOS) + 1]
    assert len(no_bias) == 20 and no_bias[:4] == generate(llama, prompt, 4)


def test_a_seeded_row_with_every_option_is_the_same_alone_and_chunked_in_a_crowd(
    llama: Any,
) -> None:
    everything = {
        "temperature": 0.9,
        "top_k": 30,
        "top_p": 0.9,
        "seed": 77,
        "logit_bias": {3: 2.0, EOS: -5.0},
        "min_tokens": 3,
        "repetition_penalty": 1.2,
        "frequency_penalty": 0.4,
        "presence_penalty": 0.3,
    }
    job = {"prompt": torch.arange(30, 51), "max_new_tokens": 14, "options": everything}

    def batcher(chunk: int) -> hibachi.AutoregressiveBatcher:
        return causal_lm_batcher(
            llama, max_batch_size=4, max_length=96, eos_token_id=EOS, max_batch_tokens=chunk
        )

    [alone] = serve(batcher(512), [job])
    others = [
        {"prompt": torch.tensor(p), "max_new_tokens": 14, "options": o}
        for p, o in zip(
            PROMPTS,
            [None, {"temperature": 1.3}, {**everything, "seed": 78}, {"presence_penalty": 1.0}],
            strict=True,
        )
    ]
    crowded = serve(batcher(5), [others[0], job, *others[1:]])  # the prompt in chunks
    assert crowded[1] == alone and crowded[3] != alone


def test_a_seeded_sampled_row_is_the_same_alone_and_chunked_in_a_crowd(llama: Any) -> None:
    job = {
        "prompt": torch.arange(30, 51),
        "max_new_tokens": 12,
        "options": {"temperature": 1.0, "seed": 5},
    }
    [alone] = serve(
        causal_lm_batcher(llama, max_batch_size=1, max_length=64, eos_token_id=EOS), [job]
    )
    crowd = causal_lm_batcher(
        llama, max_batch_size=3, max_length=64, eos_token_id=EOS, max_batch_tokens=4
    )
    other = {"prompt": torch.tensor([9, 9]), "max_new_tokens": 12}
    assert serve(crowd, [other, job, other])[1] == alone


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"logit_bias": {VOCAB: 1.0}},
            rf"token id {VOCAB}, outside the model's vocabulary \[0, {VOCAB}\)",
            id="bias-outside-vocab",
        ),
        pytest.param(
            {"min_tokens": 9},
            "option min_tokens must be at most max_new_tokens=8, got 9",
            id="min-over-budget",
        ),
        pytest.param(
            {"presence_penalty": 2.5}, r"presence_penalty must be in \[-2, 2\]", id="presence"
        ),
        pytest.param({"ignore_eos": "true"}, "ignore_eos must be a bool", id="ignore-eos-str"),
    ],
)
def test_bad_options_are_refused_at_run(llama: Any, options: Any, message: str) -> None:
    with causal_lm_batcher(llama, max_batch_size=1, max_length=16, eos_token_id=EOS) as b:
        with pytest.raises(hibachi.InvalidRequest, match=message):
            b.run(torch.tensor([7]), max_new_tokens=8, options=options)
        assert b.stats().queue_depth == 0


def test_ignore_eos_with_min_tokens_holds_the_stop_token_back_then_lets_it_repeat(
    llama: Any,
) -> None:
    options = {"ignore_eos": True, "min_tokens": 3, "logit_bias": {EOS: 100.0}}
    batcher = causal_lm_batcher(llama, max_batch_size=1, max_length=64, eos_token_id=EOS)
    [got] = serve(
        batcher, [{"prompt": torch.tensor([8, 9]), "max_new_tokens": 7, "options": options}]
    )
    assert EOS not in got[:3] and got[3:] == [EOS] * 4
