"""The public API lives in ``asyncjobs.__all__``: sorted, complete, and importable."""

from __future__ import annotations

import inspect

import asyncjobs
from asyncjobs import errors


def test_all_is_sorted_and_unique() -> None:
    assert asyncjobs.__all__ == sorted(set(asyncjobs.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in asyncjobs.__all__ if not hasattr(asyncjobs, name)]
    assert missing == []


def test_nothing_public_is_missing_from_all() -> None:
    public = {
        name
        for name, value in vars(asyncjobs).items()
        if not name.startswith("_") and not inspect.ismodule(value)
    }
    assert public - set(asyncjobs.__all__) == set()


def test_every_exception_is_exported() -> None:
    exceptions = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value) and issubclass(value, errors.AsyncJobsError)
    }
    assert exceptions <= set(asyncjobs.__all__)
    for name in exceptions:
        assert getattr(asyncjobs, name) is getattr(errors, name)


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from asyncjobs import *", namespace)
    namespace.pop("__builtins__")
    assert set(namespace) == set(asyncjobs.__all__)


def test_version_is_a_string() -> None:
    assert isinstance(asyncjobs.__version__, str)
    assert asyncjobs.__version__.count(".") >= 1
