"""Every Python example in README.md and docs/*.md runs, as written.

Each ```python block is a test of its own: it runs as a script in a fresh Python
process, in a temporary folder, with a time limit, and fails if the process fails.
An HTML comment on the line just above a fence (invisible once rendered) says more:

    <!-- docs-test: slow -->      run only in the full suite (the real model, Ray)
    <!-- docs-test: continue -->  run after the page's python block above it (its setup)
    <!-- docs-test: server -->    `hibachi serve`'s default app listens on a free port of
                                  127.0.0.1 meanwhile; "127.0.0.1:8000" in the block is
                                  replaced by its address
    <!-- docs-test: output -->    on a ```text block right after a python block: what that
                                  block prints; a line "..." stands for any lines
    <!-- docs-test: not run: WHY -->  a python block that must not run; NOT_RUN lists them

Nothing is skipped silently: `test_every_block_is_accounted_for` counts every fence, refuses
an unknown language, a text block that reads as Python code, and a "not run" block that
NOT_RUN does not name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"python", "bash", "text"}
NOT_RUN: dict[str, int] = {"docs/scaling.md": 1}  # page -> python blocks marked "not run"
FAST_LIMIT = 120.0  # seconds an example may take
SLOW_LIMIT = 600.0
SERVER_ADDRESS = "127.0.0.1:8000"

_FENCE = re.compile(r"^(\s*)```(\S*)\s*$")
_MARK = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    marks: set[str]
    reason: str = ""
    output: list[str] | None = None  # what it prints, from the output block after it
    before: Block | None = None  # the block it continues

    @property
    def id(self) -> str:
        return f"{self.page}:{self.line}"

    def chain(self) -> list[Block]:
        return [*(self.before.chain() if self.before else []), self]


def blocks(path: Path) -> list[Block]:
    """Every fenced block of a page, with the marks of the comment above it."""
    page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    lines = path.read_text().splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, language = fence.groups()
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[len(indent) :] for line in lines[i + 1 : end]) + "\n"
        mark = _MARK.match(lines[i - 1]) if i else None
        marks, reason = _marks(mark.group(1) if mark else "")
        found.append(Block(page, i + 1, language, code, marks, reason))
        i = end + 1
    _link(found)
    return found


def _marks(text: str) -> tuple[set[str], str]:
    if text.startswith("not run"):
        return {"not run"}, text.removeprefix("not run").strip(" :")
    return set(text.split()), ""


def _link(found: list[Block]) -> None:
    """Outputs to the python block above them, continued blocks to theirs."""
    last_python: Block | None = None
    for block in found:
        if block.language == "python":
            if "continue" in block.marks:
                assert last_python, f"{block.id}: nothing above to continue"
                block.before = last_python
            last_python = block
        elif "output" in block.marks:
            assert last_python, f"{block.id}: an output with no python block above"
            assert last_python.output is None, f"{block.id}: a second output for one block"
            last_python.output = block.code.splitlines()


ALL = [block for path in PAGES for block in blocks(path)]
EXAMPLES = [b for b in ALL if b.language == "python" and "not run" not in b.marks]


def _param(block: Block) -> Any:
    slow = any("slow" in b.marks for b in block.chain())
    limit = pytest.mark.timeout((SLOW_LIMIT if slow else FAST_LIMIT) + 60)
    return pytest.param(block, id=block.id, marks=[pytest.mark.slow, limit] if slow else [limit])


@pytest.fixture(scope="module")
def server_address() -> Iterator[str]:
    """`hibachi serve`'s app with its default models, as the command builds it, on a free port."""
    from hibachi.serve import create_app, default_embedding_model, default_language_model
    from support.serve import running

    app = create_app(default_language_model(), default_embedding_model())
    with running(app) as server:
        yield f"{server.host}:{server.port}"


@pytest.mark.parametrize("block", [_param(b) for b in EXAMPLES])
def test_example_runs(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    chain = block.chain()
    source = "\n".join(b.code for b in chain)
    if any("server" in b.marks for b in chain):
        source = source.replace(SERVER_ADDRESS, request.getfixturevalue("server_address"))
    script = tmp_path / "example.py"
    script.write_text(source)
    slow = any("slow" in b.marks for b in chain)
    returncode, out, err = run_script(script, SLOW_LIMIT if slow else FAST_LIMIT)
    assert returncode == 0, f"{block.id} failed:\n{err[-4000:]}"
    if block.output is not None:
        expected = [line for b in chain for line in (b.output or ["..."])]
        printed = out.rstrip("\n").splitlines()
        assert matches(printed, expected), f"{block.id} printed:\n{out}"


def run_script(script: Path, limit: float) -> tuple[int, str, str]:
    """Run ``script`` in a session of its own, and end whatever it leaves behind (Ray's
    processes) with it; its exit status, stdout and stderr."""
    ray_files = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's sockets live there
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_TMPDIR": ray_files}
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=script.parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        err += f"\n(killed after {limit:.0f} s)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        shutil.rmtree(ray_files, ignore_errors=True)
    return process.returncode, out, err


def matches(printed: list[str], expected: list[str]) -> bool:
    """Whether the lines printed are the lines expected, "..." matching any lines."""
    if not expected:
        return not printed
    if expected[0] == "...":
        return any(matches(printed[i:], expected[1:]) for i in range(len(printed) + 1))
    return (
        bool(printed)
        and printed[0].rstrip() == expected[0].rstrip()
        and (matches(printed[1:], expected[1:]))
    )


def looks_like_python(code: str) -> bool:
    """Code, not a program's output: it compiles, and defines, imports or awaits something."""
    try:
        compile(code, "<block>", "exec")
    except SyntaxError:
        return False
    return bool(re.search(r"^\s*(import|from|def|class|async|await)\b", code, re.M))


def test_every_block_is_accounted_for() -> None:
    languages = {b.id: b.language for b in ALL if b.language not in LANGUAGES}
    assert languages == {}, "a fence with no language, or one this test does not know"
    text = [b for b in ALL if b.language == "text" and not b.marks]
    hidden = [b.id for b in text if looks_like_python(b.code)]
    assert hidden == [], "Python in a text fence: make it run, or mark it 'not run: why'"
    not_run = [b for b in ALL if b.language == "python" and "not run" in b.marks]
    assert all(b.reason for b in not_run), "a 'not run' mark says why"
    counts: dict[str, int] = {}
    for b in not_run:
        counts[b.page] = counts.get(b.page, 0) + 1
    assert counts == NOT_RUN
    python = [b for b in ALL if b.language == "python"]
    assert len(python) == len(EXAMPLES) + len(not_run)


def test_an_output_is_matched_line_by_line() -> None:
    assert matches(["0", "1", "2"], ["0", "1", "2"])
    assert not matches(["0", "1"], ["0", "1", "2"])
    assert not matches(["0", "1", "3"], ["0", "1", "2"])
    assert matches(["a", "x", "y", "b"], ["a", "...", "b"])
    assert matches(["a", "b"], ["a", "...", "b"])
    assert not matches(["a", "x"], ["a", "...", "b"])


PAGE = """\
```python
x = 1
```

<!-- docs-test: continue slow -->
```python
print(x + 1)
```

<!-- docs-test: output -->
```text
2
```

<!-- docs-test: not run: pseudo-code -->
```python
serve(forever)
```
"""


def test_a_page_s_blocks_carry_their_marks(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(PAGE)
    first, second, output, pseudo = blocks(page)
    assert (second.before, second.marks, second.output) == (first, {"continue", "slow"}, ["2"])
    assert (output.language, pseudo.marks, pseudo.reason) == ("text", {"not run"}, "pseudo-code")
    assert second.chain() == [first, second]


def test_an_example_that_fails_or_hangs_fails(tmp_path: Path) -> None:
    script = tmp_path / "example.py"
    script.write_text("raise SystemExit(3)\n")
    assert run_script(script, FAST_LIMIT)[0] == 3
    script.write_text("import time\ntime.sleep(60)\n")
    returncode, _, err = run_script(script, 1.0)
    assert returncode != 0
    assert "killed after 1 s" in err


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them."""
    headings = re.findall(r"^#+\s+(.*)$", _outside_fences(page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _outside_fences(text: str) -> str:
    return re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.M | re.S)


def test_every_link_between_the_pages_lands() -> None:
    broken = []
    for page in PAGES:
        for link in re.findall(r"\]\(([^)\s]+)\)", _outside_fences(page.read_text())):
            if re.match(r"[a-z]+:", link):
                continue
            target, _, anchor = link.partition("#")
            path = (page.parent / target).resolve() if target else page
            if not path.exists() or (anchor and anchor not in anchors(path)):
                broken.append(f"{page.relative_to(ROOT)}: {link}")
    assert broken == []


def test_no_merge_conflict_markers_are_left_in_the_sources() -> None:
    texts = [*PAGES, *ROOT.glob("*.toml")]
    texts += [*ROOT.glob("src/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    marker = re.compile(r"^(<<<<<<< |=======$|>>>>>>> )", re.M)
    left = [str(path.relative_to(ROOT)) for path in texts if marker.search(path.read_text())]
    assert left == []
