"""Run the Python examples of the documentation, each as its own script.

A fenced ```python block is an example when the line before it is a marker comment:

* ``<!-- test: run -->``: run it as ``python example.py``; it must exit with status 0.
* ``<!-- test: import -->``: import it as a module (``__name__`` is not ``"__main__"``),
  for examples that would otherwise start a server.

A ```text block marked ``<!-- test: output -->`` is the exact standard output of the
nearest example above it. Blocks with no marker are prose and are not run.

The last test checks that mkdocs.yml's nav lists every page under docs/, and only those.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import attrs
import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [
    ROOT / "docs" / "quickstart.md",
    ROOT / "docs" / "concepts.md",
    ROOT / "docs" / "executors.md",
    ROOT / "docs" / "logging.md",
    ROOT / "README.md",
]

_FENCE = re.compile(
    r"^(?:<!-- test: (?P<mark>run|import|output) -->\n)?"
    r"```(?P<lang>[\w-]*)\n(?P<body>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@attrs.frozen
class Example:
    path: Path
    line: int
    mode: str  # "run" or "import"
    code: str
    output: str | None = None

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def collect(path: Path) -> list[Example]:
    """The marked examples of one markdown file, with their expected output."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    examples: list[Example] = []
    for match in _FENCE.finditer(text):
        mark, lang, body = match["mark"], match["lang"], match["body"]
        line = text.count("\n", 0, match.start()) + 1
        if mark in ("run", "import"):
            if lang != "python":
                raise AssertionError(f"{path.name}:{line}: a {mark} marker on a {lang!r} block")
            examples.append(Example(path, line, mark, body))
        elif mark == "output":
            if not examples:
                raise AssertionError(f"{path.name}:{line}: an output block with no example")
            if examples[-1].output is not None:
                raise AssertionError(f"{path.name}:{line}: a second output block for one example")
            examples[-1] = attrs.evolve(examples[-1], output=body)
    return examples


EXAMPLES = [example for path in DOCS for example in collect(path)]


def test_the_docs_have_examples() -> None:
    # The collector must keep finding them: a broken marker would silently skip a page.
    pages = {example.path.name for example in EXAMPLES}
    assert {"quickstart.md", "concepts.md"} <= pages
    assert sum(1 for example in EXAMPLES if example.output is not None) >= 5


def test_the_collector_reads_markers(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n<!-- test: run -->\n```python\nprint(1)\n```\n\n"
        "<!-- test: output -->\n```text\n1\n```\n\n```python\nnot run\n```\n"
        "<!-- test: import -->\n```python\nx = 2\n```\n",
        encoding="utf-8",
    )
    found = collect(page)
    assert [(e.mode, e.code, e.output) for e in found] == [
        ("run", "print(1)\n", "1\n"),
        ("import", "x = 2\n", None),
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_example_runs(example: Example, tmp_path: Path) -> None:
    script = tmp_path / "doc_example.py"
    script.write_text(example.code, encoding="utf-8")
    if example.mode == "run":
        argv = [sys.executable, str(script)]
    else:
        argv = [sys.executable, "-c", "import doc_example"]
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=45, check=False
    )
    assert proc.returncode == 0, f"{example.id} exited {proc.returncode}:\n{proc.stderr}"
    if example.output is not None:
        assert proc.stdout == example.output, f"{example.id} printed:\n{proc.stdout}"


def nav_pages(config: str) -> list[str]:
    """The ``.md`` targets of the ``nav:`` section of an mkdocs.yml text."""
    _, _, nav = config.partition("\nnav:\n")
    return re.findall(r"^\s+- (?:[^:\n]+: )?([\w./-]+\.md)\s*$", nav, re.MULTILINE)


def test_nav_pages_parse() -> None:
    config = "site_name: x\nnav:\n  - Home: index.md\n  - Guides:\n      - A: a/b.md\n  - c.md\n"
    assert nav_pages(config) == ["index.md", "a/b.md", "c.md"]


def test_mkdocs_nav_lists_every_page() -> None:
    listed = nav_pages((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = ROOT / "docs"
    pages = sorted(p.relative_to(docs).as_posix() for p in docs.rglob("*.md"))
    assert len(listed) == len(set(listed)), "a page is listed twice in mkdocs.yml"
    assert sorted(listed) == pages, (
        f"not in the nav: {sorted(set(pages) - set(listed))}; "
        f"in the nav but missing: {sorted(set(listed) - set(pages))}"
    )
