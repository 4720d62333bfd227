"""The core imports no web framework, optional driver or adapter at module level."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import asyncjobs

FORBIDDEN = (
    "starlette",
    "fastapi",
    "uvicorn",
    "httpx",
    "asyncpg",
    "redis",
    "websockets",
    "prometheus_client",
    "asyncjobs.adapters",
)
CORE = Path(asyncjobs.__file__).parent
MODULES = sorted(CORE.rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module, package: str) -> list[tuple[int, str]]:
    """Imports executed when the module is imported: not inside functions or classes'
    methods, nor under ``if TYPE_CHECKING:``. Relative imports are made absolute."""
    found: list[tuple[int, str]] = []

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((node.lineno, alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found.append((node.lineno, base))
                found.extend((node.lineno, f"{base}.{alias.name}") for alias in node.names)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body)
                for handler in node.handlers:
                    visit(handler.body)
                visit(node.orelse)
                visit(node.finalbody)
            elif isinstance(node, ast.With | ast.ClassDef):
                visit(node.body)  # class bodies run at import time too

    visit(tree.body)
    return found


def is_forbidden(name: str) -> bool:
    return any(name == f or name.startswith(f + ".") for f in FORBIDDEN)


def package_of(path: Path) -> str:
    relative = path.relative_to(CORE.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    else:
        parts.pop()  # a module's package is its folder
    return ".".join(parts)


def test_the_core_has_modules() -> None:
    names = {p.name for p in MODULES}
    assert {"__init__.py", "queue.py", "registry.py", "events.py", "janitor.py"} <= names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(CORE)))
def test_no_forbidden_import_at_module_level(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"{path.name}:{line} imports {name}"
        for line, name in module_level_imports(tree, package_of(path))
        if is_forbidden(name)
    ]
    assert bad == []


def test_the_checker_catches_what_it_should() -> None:
    source = """
import os
import starlette.routing
from fastapi import FastAPI
from .. import adapters
from ..adapters.asgi import JobsApp
if TYPE_CHECKING:
    import asyncpg
try:
    import redis
except ImportError:
    redis = None
def later():
    import httpx
class K:
    import uvicorn
"""
    found = {name for _, name in module_level_imports(ast.parse(source), "asyncjobs.stores")}
    flagged = {name for name in found if is_forbidden(name)}
    assert {"starlette.routing", "fastapi", "asyncjobs.adapters", "redis", "uvicorn"} <= flagged
    assert "asyncjobs.adapters.asgi" in flagged
    assert "asyncpg" not in found  # type-checking only
    assert "httpx" not in found  # imported lazily inside a function
    assert "os" in found
    assert not is_forbidden("os")


@pytest.mark.timeout(60)
def test_import_asyncjobs_loads_none_of_them() -> None:
    code = (
        "import asyncjobs, asyncjobs.testing, json, sys; "
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r} "
        "or m.startswith('asyncjobs.adapters'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=50, check=True
    )
    assert json.loads(result.stdout) == []
