"""The code in README.md and docs/ runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Until the docs follow RENAMES.md, their examples may use a deprecated name (which works).
OLD_NAMES = pytest.mark.filterwarnings("ignore:.* is deprecated .*:DeprecationWarning")


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), re.S)


@OLD_NAMES
def test_readme_quick_start_prints_the_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    quick_start, threads = python_blocks(ROOT / "README.md")[:2]
    namespace: dict[str, object] = {}
    exec(compile(quick_start, "README quick start", "exec"), namespace)
    assert capsys.readouterr().out.split() == ["0", "1", "2"]
    exec(compile(threads, "README threads", "exec"), namespace)
    assert capsys.readouterr().out.split() == ["0", "1", "2"]


@OLD_NAMES
def test_backends_worked_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    import hibachi._backends as backends

    (example,) = python_blocks(ROOT / "docs" / "backends.md")
    saved = list(backends._registered)
    try:
        exec(compile(example, "docs/backends.md", "exec"), {})
    finally:
        backends._registered[:] = saved
        backends._by_type.clear()
    assert capsys.readouterr().out.strip() == "[7, 8, 9]"


def test_no_merge_conflict_markers_are_left_in_the_sources() -> None:
    texts = [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*.toml")]
    texts += [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/*.py"), *ROOT.glob("benchmarks/*.py")]
    marker = re.compile(r"^(<<<<<<< |=======$|>>>>>>> )", re.M)
    left = [str(path.relative_to(ROOT)) for path in texts if marker.search(path.read_text())]
    assert left == []
