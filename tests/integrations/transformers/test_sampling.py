"""Sampling options: every `Sampling` is checked, however made, each field naming its range."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import numpy as np
import pytest

import hibachi
from hibachi.integrations.transformers import Sampling

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
    pytest.param({"min_tokens": -1}, r"min_tokens must be an int in 0 … 2\*\*63-1", id="neg-min"),
    pytest.param({"min_tokens": 3.0}, "min_tokens must be an int", id="float-min-tokens"),
    pytest.param({"min_tokens": True}, "min_tokens must be an int", id="bool-min-tokens"),
    pytest.param({"ignore_eos": 1}, "ignore_eos must be a bool, got 1", id="int-ignore-eos"),
    pytest.param({"ignore_eos": "yes"}, "ignore_eos must be a bool", id="str-ignore-eos"),
    pytest.param({"ignore_eos": None}, "ignore_eos must be a bool", id="none-ignore-eos"),
    pytest.param({"repetition_penalty": 0.0}, "repetition_penalty must be > 0", id="zero-rep"),
    pytest.param({"repetition_penalty": -1.2}, "repetition_penalty must be > 0", id="neg-rep"),
    pytest.param(
        {"repetition_penalty": float("inf")}, "repetition_penalty must be a finite", id="inf-rep"
    ),
    pytest.param(
        {"repetition_penalty": "1.1"}, "repetition_penalty must be a finite", id="str-rep"
    ),
    pytest.param(
        {"frequency_penalty": 2.5}, r"frequency_penalty must be in \[-2, 2\]", id="freq-high"
    ),
    pytest.param(
        {"frequency_penalty": -2.01}, r"frequency_penalty must be in \[-2, 2\]", id="freq-low"
    ),
    pytest.param(
        {"frequency_penalty": float("nan")}, "frequency_penalty must be a finite", id="nan-freq"
    ),
    pytest.param(
        {"presence_penalty": 3}, r"presence_penalty must be in \[-2, 2\]", id="presence-high"
    ),
    pytest.param(
        {"presence_penalty": False}, "presence_penalty must be a finite", id="bool-presence"
    ),
    pytest.param({"logit_bias": [1, 2]}, "logit_bias must be a mapping", id="bias-list"),
    pytest.param({"logit_bias": None}, "logit_bias must be a mapping", id="bias-none"),
    pytest.param(
        {"logit_bias": {"5": 1.0}},
        r"logit_bias's keys must be token ids \(ints in 0 … 2\*\*63-1\), got '5'",
        id="bias-str-key",
    ),
    pytest.param(
        {"logit_bias": {True: 1.0}}, "logit_bias's keys must be token ids", id="bias-bool-key"
    ),
    pytest.param(
        {"logit_bias": {-3: 1.0}},
        r"logit_bias's keys must be token ids \(ints in 0 … 2\*\*63-1\), got -3",
        id="bias-neg-key",
    ),
    pytest.param(
        {"logit_bias": {5: 100.5}},
        r"logit_bias\[5\] must be in \[-100, 100\], got 100.5",
        id="bias-high",
    ),
    pytest.param(
        {"logit_bias": {5: -101}}, r"logit_bias\[5\] must be in \[-100, 100\]", id="bias-low"
    ),
    pytest.param(
        {"logit_bias": {5: float("nan")}}, r"logit_bias\[5\] must be a finite", id="bias-nan"
    ),
    pytest.param({"logit_bias": {5: "1"}}, r"logit_bias\[5\] must be a finite", id="bias-str"),
    pytest.param(
        {"logit_bias": {10**40: 1.0}},
        "logit_bias's keys must be token ids .*, got an int of 133 bits",
        id="bias-huge-key",
    ),
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


def test_the_defaults_are_greedy_with_no_logit_changes() -> None:
    settings = Sampling.parse(None)
    assert settings.greedy and not settings.adjusts_logits and not settings.ignore_eos


@pytest.mark.parametrize(
    "fields",
    [
        {"logit_bias": {3: 0.5}},
        {"min_tokens": 2},
        {"repetition_penalty": 1.1},
        {"frequency_penalty": -0.5},
        {"presence_penalty": 0.1},
    ],
    ids=lambda fields: next(iter(fields)),
)
def test_each_logit_change_is_noticed(fields: dict[str, Any]) -> None:
    assert Sampling.parse(fields).adjusts_logits


def test_logit_bias_is_a_copy_with_plain_numbers_and_a_sampling_pickles() -> None:
    given = {np.int64(7): np.float32(-1.5), 3: 100}
    settings = Sampling(logit_bias=given, temperature=0.5)
    assert settings.logit_bias == {7: -1.5, 3: 100.0}
    assert all(type(k) is int and type(v) is float for k, v in settings.logit_bias.items())
    given[9] = 1.0  # the caller's dict stays the caller's
    assert 9 not in settings.logit_bias
    assert pickle.loads(pickle.dumps(settings)) == settings
    assert len({settings, Sampling(logit_bias={3: 100, 7: -1.5}, temperature=0.5)}) == 1
    assert dataclasses.replace(settings, seed=3).logit_bias == settings.logit_bias


def test_an_unknown_option_is_named_with_every_known_one() -> None:
    with pytest.raises(hibachi.InvalidRequest, match="unknown options") as error:
        Sampling.parse({"temprature": 0.5})
    assert "'temprature'" in str(error.value)
    for name in ["temperature", "logit_bias", "min_tokens", "ignore_eos", "presence_penalty"]:
        assert name in str(error.value)
