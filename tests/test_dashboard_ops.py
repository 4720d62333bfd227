"""The dashboard's operations panel (static/ops.js) in a real headless Chromium."""

from __future__ import annotations

import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from cli_server import cli_server
from test_dashboard import Console, browser, open_dashboard, page, rest_submit, row

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
__all__ = ["browser", "page"]  # fixtures, imported for pytest

OPS_MODULE = textwrap.dedent(
    """
    from asyncjobs import JobContext
    from asyncjobs.demo import build_demo_queue
    from asyncjobs.webhooks import Webhook

    queue = build_demo_queue(concurrency=4)
    # A loopback target that is not allowed: its deliveries go dead at once.
    queue.webhooks = (Webhook(url="http://127.0.0.1:9/hook", events=["job_failed"]),)
    queue.schedule("echo", cron="0 9 * * 1", params={"message": "weekly"}, name="weekly")

    @queue.job_type("boom", max_attempts=1)
    async def boom(ctx: JobContext, params: dict) -> None:
        raise RuntimeError("kaboom")
    """
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("dashops")
    (path / "opsmod.py").write_text(OPS_MODULE)
    with cli_server(["serve", "opsmod:queue"], cwd=path) as url:
        yield url


def wait_status(url: str, job_id: str, wanted: str, *, history: int) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        job: dict[str, Any] = httpx.get(f"{url}jobs/{job_id}", timeout=10).json()
        if job["status"] == wanted and len(job["history"]) == history:
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


def test_retry_all_failed_of_a_type_and_one_in_place(
    page: tuple[Any, Console], server: str, tmp_path: Path
) -> None:
    pg, _ = page
    ids = [rest_submit(server, {"type": "boom", "params": {}}) for _ in range(2)]
    for job_id in ids:
        wait_status(server, job_id, "failed", history=0)
    open_dashboard(pg, server)
    button = pg.locator('#ops-failed li[data-type="boom"] button')
    button.wait_for()
    assert button.inner_text() == "Retry all 2 failed"
    pg.screenshot(path=str(tmp_path / "ops.png"))
    button.click()
    for job_id in ids:
        job = wait_status(server, job_id, "failed", history=1)
        assert job["history"][0]["error"]["message"] == "kaboom"

    # One job from its detail panel: the button shows for a failed job only.
    row(pg, ids[0]).click()
    pg.wait_for_selector("#detail:not([hidden])")
    retry = pg.locator("#detail-retry-in-place")
    retry.wait_for()
    retry.click()
    job = wait_status(server, ids[0], "failed", history=2)
    assert job["id"] == ids[0]
    done = rest_submit(server, {"type": "echo", "params": {"message": "hi"}})
    row(pg, done).click()
    pg.wait_for_function(
        "() => document.querySelector('#detail-badge').dataset.status === 'completed'"
    )
    assert retry.is_hidden()


def test_webhooks_and_their_failed_deliveries(page: tuple[Any, Console], server: str) -> None:
    pg, _ = page
    job_id = rest_submit(server, {"type": "boom", "params": {}})
    wait_status(server, job_id, "failed", history=0)
    open_dashboard(pg, server)
    item = pg.locator("#ops-webhooks li[data-webhook]")
    item.wait_for()
    assert "http://127.0.0.1:9/hook" in item.inner_text()
    pg.wait_for_function(
        "() => Number(document.querySelector('#ops-webhooks li[data-webhook]').dataset.dead) >= 1",
        timeout=20_000,
    )
    assert "private or loopback" in item.locator(".ops-dead").inner_text()


def test_schedules_with_their_next_run(page: tuple[Any, Console], server: str) -> None:
    pg, _ = page
    listed = httpx.get(server + "schedules", timeout=10).json()["schedules"]
    assert [(s["name"], s["cron"]) for s in listed] == [("weekly", "0 9 * * 1")]
    open_dashboard(pg, server)
    item = pg.locator('#ops-schedules li[data-schedule="weekly"]')
    item.wait_for()
    assert "cron 0 9 * * 1" in item.inner_text()
    assert item.locator(".ops-next").inner_text().startswith("next ")
