"""``asyncjobs retry``, run for real against a demo server in a subprocess."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cli_server import cli_server, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_url() -> Iterator[str]:
    with cli_server(["demo", "--concurrency", "2"]) as url:
        yield url


def test_retry_a_cancelled_job_in_place_then_all(demo_url: str) -> None:
    made = run_cli("submit", "countdown", "-p", "seconds=60", "--delay", "600", "--url", demo_url)
    assert made.returncode == 0, made.stderr
    job_id = made.stdout.strip()
    assert run_cli("cancel", job_id, "--url", demo_url).returncode == 0
    retried = run_cli("retry", job_id, "--url", demo_url)
    assert retried.returncode == 0, retried.stderr
    assert f"retried {job_id} (run 2)" in retried.stdout
    shown = json.loads(run_cli("get", job_id, "--url", demo_url).stdout)
    assert shown["status"] in ("queued", "running")
    assert [run["status"] for run in shown["history"]] == ["cancelled"]
    # A live job cannot be retried: the server's 409 becomes exit code 4.
    again = run_cli("retry", job_id, "--url", demo_url)
    assert again.returncode == 4
    assert run_cli("cancel", job_id, "--url", demo_url).returncode == 0
    bulk = run_cli("retry", "--all", "--status", "cancelled", "--url", demo_url)
    assert bulk.returncode == 0, bulk.stderr
    assert bulk.stdout.strip() == "retried 1 jobs"
    assert run_cli("cancel", job_id, "--url", demo_url).returncode == 0
    assert run_cli("retry", "--url", demo_url).returncode == 64
