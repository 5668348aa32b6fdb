"""Sampling options: every `Sampling` is checked, however made; tiny temperatures act greedy."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import hibachi
from hibachi.integrations.transformers import Sampling
from hibachi.integrations.transformers._sampling import Sampler

BAD = [
    pytest.param({"temperature": -0.5}, "temperature must be >= 0", id="negative-temperature"),
    pytest.param({"temperature": float("nan")}, "temperature must be a finite", id="nan-temp"),
    pytest.param({"temperature": float("inf")}, "temperature must be a finite", id="inf-temp"),
    pytest.param({"temperature": 10**400}, "temperature must be a finite", id="huge-int-temp"),
    pytest.param({"temperature": "0.7"}, "temperature must be a finite", id="str-temp"),
    pytest.param({"temperature": True}, "temperature must be a finite", id="bool-temp"),
    pytest.param({"top_k": -1}, r"top_k must be an int in 0 … 2\*\*63-1", id="negative-top-k"),
    pytest.param({"top_k": 2.0}, "top_k must be an int", id="float-top-k"),
    pytest.param({"top_k": 10**400}, "an int of 1329 bits", id="huge-top-k"),
    pytest.param({"top_p": 0.0}, r"top_p must be in \(0, 1\]", id="zero-top-p"),
    pytest.param({"top_p": -0.1}, r"top_p must be in \(0, 1\]", id="negative-top-p"),
    pytest.param({"top_p": 1.0001}, r"top_p must be in \(0, 1\]", id="top-p-above-one"),
    pytest.param({"top_p": float("nan")}, "top_p must be a finite", id="nan-top-p"),
    pytest.param({"seed": -1}, "seed must be an int in 0", id="negative-seed"),
    pytest.param({"seed": 2**63}, "seed must be an int in 0", id="seed-too-large"),
    pytest.param({"seed": 10**5000}, "an int of 16610 bits", id="seed-unprintable"),
    pytest.param({"seed": 1.0}, "seed must be an int", id="float-seed"),
]


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_a_sampling_built_directly_is_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(hibachi.InvalidRequest, match=message):
        Sampling(**fields)


@pytest.mark.parametrize(("fields", "message"), BAD)
def test_options_are_checked(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(hibachi.InvalidRequest, match=message):
        Sampling.parse(fields)


def test_numpy_numbers_are_numbers() -> None:
    parsed = Sampling.parse(
        {"temperature": np.float32(0.5), "top_k": np.int64(3), "top_p": np.float64(0.5)}
    )
    assert parsed == Sampling(temperature=0.5, top_k=3, top_p=0.5)
    assert type(parsed.top_k) is int and type(parsed.temperature) is float


@pytest.mark.parametrize("temperature", [1e-39, 1e-50, 1e-300, 5e-324])
def test_a_temperature_too_small_for_float32_is_greedy(temperature: float) -> None:
    settings = Sampling(temperature=temperature, seed=1)
    assert settings.greedy
    sampler = Sampler(slots=64, device=torch.device("cpu"))
    for slot in range(64):
        sampler.start(slot, settings)
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sampler.pick(logits, np.arange(64)), logits.argmax(dim=-1))


@pytest.mark.parametrize("temperature", [1e-30, 1e-20])
def test_a_tiny_sampled_temperature_picks_the_top_token(temperature: float) -> None:
    sampler = Sampler(slots=64, device=torch.device("cpu"))
    for slot in range(64):
        sampler.start(slot, Sampling(temperature=temperature, seed=slot))
    logits = torch.randn(64, 50, generator=torch.Generator().manual_seed(0)) * 1e-3
    assert torch.equal(sampler._sample(logits, list(range(64))), logits.argmax(dim=-1))
