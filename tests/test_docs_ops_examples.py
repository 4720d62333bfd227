"""Run the examples of the operations pages (retry, webhooks, schedules, tracing)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_docs_examples import ROOT, Example, collect, test_example_runs

PAGES = ["retry.md", "webhooks.md", "schedules.md", "observability.md"]
EXAMPLES = [e for page in PAGES for e in collect(ROOT / "docs" / page)]


def test_each_page_has_examples() -> None:
    assert {e.path.name for e in EXAMPLES} == set(PAGES)
    assert all(e.output is not None for e in EXAMPLES)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: e.id)
def test_ops_example_runs(example: Example, tmp_path: Path) -> None:
    test_example_runs(example, tmp_path)
