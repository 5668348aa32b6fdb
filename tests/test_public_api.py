"""The public API: ``hibachi.__all__`` is exactly what the package exposes."""

from __future__ import annotations
import __future__

import inspect

import pytest

import hibachi


def public_names() -> set[str]:
    """Names a user would take for API: not private, not a submodule, not a compiler directive."""
    return {
        name
        for name, value in vars(hibachi).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and not isinstance(value, __future__._Feature)
    }


def test_all_lists_exactly_the_public_names() -> None:
    assert set(hibachi.__all__) - {"__version__"} == public_names()


def test_all_is_sorted_without_duplicates() -> None:
    assert hibachi.__all__ == sorted(set(hibachi.__all__))


@pytest.mark.parametrize("name", hibachi.__all__)
def test_every_name_in_all_exists_and_is_documented(name: str) -> None:
    value = getattr(hibachi, name)
    if name != "__version__":
        assert inspect.getdoc(value), f"hibachi.{name} has no docstring"


def test_the_version_is_a_string() -> None:
    assert isinstance(hibachi.__version__, str) and hibachi.__version__


EXCEPTIONS = [
    value
    for name in hibachi.__all__
    if isinstance(value := getattr(hibachi, name), type) and issubclass(value, BaseException)
]


@pytest.mark.parametrize("error", EXCEPTIONS, ids=lambda error: error.__name__)
def test_every_exception_is_a_hibachi_error(error: type[BaseException]) -> None:
    assert issubclass(error, hibachi.HibachiError)
    assert issubclass(error, Exception)


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (hibachi.InvalidRequest, ValueError),
        (hibachi.ConfigurationError, ValueError),
        (hibachi.BatcherClosed, RuntimeError),
        (hibachi.ModelError, RuntimeError),
        (hibachi.Timeout, TimeoutError),
    ],
    ids=lambda value: value.__name__,
)
def test_exceptions_subclass_the_builtin_they_resemble(
    error: type[BaseException], builtin: type[BaseException]
) -> None:
    assert issubclass(error, builtin)


def test_the_issue_names_are_public() -> None:
    contract = {
        "AutoregressiveBatcher",
        "Backend",
        "BatcherClosed",
        "ConfigurationError",
        "HibachiError",
        "InvalidRequest",
        "ModelError",
        "QueueFull",
        "Timeout",
        "register_backend",
    }
    assert contract <= set(hibachi.__all__)
    assert {"run", "stats", "close", "aclose"} <= set(dir(hibachi.AutoregressiveBatcher))
