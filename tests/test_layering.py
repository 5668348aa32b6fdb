"""The package's folders keep their layers: neither batcher imports the other,
what both share (`_core`, `_backends`) imports neither, and each integration
(`integrations/transformers`, `integrations/ray`) stands alone below `serve`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "hibachi"
BATCHERS = ("_autoregressive", "_feedforward")
# serve/ (the HTTP server) sits on top: it may import both batchers, nothing imports it.
FORBIDDEN = {
    "_autoregressive": {"_feedforward", "serve"},
    "_feedforward": {"_autoregressive", "serve"},
    "_core": {*BATCHERS, "serve"},
    "_backends": {*BATCHERS, "serve"},
    "integrations": {"serve"},
    "integrations/transformers": {"serve", "integrations.ray"},
    "integrations/ray": {"serve", "integrations.transformers"},
    "_bench": {"serve"},
}


def imported_modules(path: Path, root: Path) -> set[str]:
    """Absolute names (``hibachi.x.y``) of every module ``path`` (under ``root``) imports."""
    package = ["hibachi", *path.relative_to(root).parent.parts]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(root: Path = PACKAGE) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        banned = [f"hibachi.{name}".split(".") for name in _forbidden(path.relative_to(root))]
        bad = [
            n
            for n in sorted(imported_modules(path, root))
            if any(n.split(".")[: len(b)] == b for b in banned)
        ]
        if bad:
            found.append(f"{path.relative_to(root)} imports {', '.join(bad)}")
    return found


def _forbidden(relative: Path) -> set[str]:
    """What the module at ``relative`` must not import: its folder's rules and its subfolder's."""
    parts = relative.parts[:-1]
    return {name for depth in (1, 2) for name in FORBIDDEN.get("/".join(parts[:depth]), ())}


def test_no_folder_imports_a_layer_it_must_not() -> None:
    assert violations() == []


@pytest.mark.parametrize(
    ("folder", "line"),
    [
        ("_feedforward", "from .._autoregressive.request import Request\n"),
        ("_autoregressive", "import hibachi._feedforward.core\n"),
        ("_core", "from hibachi._autoregressive import batcher\n"),
        ("_backends", "from .. import _feedforward\n"),
        ("integrations", "from ..serve import create_app\n"),
        ("integrations/transformers", "from ..ray import deployment\n"),
        ("integrations/ray", "import hibachi.integrations.transformers._sampling\n"),
    ],
)
def test_a_planted_wrong_import_is_caught(tmp_path: Path, folder: str, line: str) -> None:
    (tmp_path / folder).mkdir(parents=True)
    (tmp_path / folder / "planted.py").write_text(line)
    [found] = violations(tmp_path)
    assert found.startswith(f"{folder}/planted.py imports hibachi.")
