"""The worker logs every attempt's start and end with the job's fields."""

from __future__ import annotations

import json
import logging

import anyio
import pytest

from asyncjobs import JobContext, Queue
from asyncjobs.joblog import JsonFormatter
from asyncjobs.registry import Backoff


def job_records(caplog: pytest.LogCaptureFixture, job_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "job_id", None) == job_id]


async def wait_for_record(
    caplog: pytest.LogCaptureFixture, job_id: str, status: str
) -> logging.LogRecord:
    with anyio.fail_after(10):
        while True:
            for record in job_records(caplog, job_id):
                if getattr(record, "status", None) == status:
                    return record
            await anyio.sleep(0.01)


async def test_start_completion_retry_failure_and_timeout_are_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncjobs.jobs")
    queue = Queue()

    @queue.job_type("ok")
    async def ok(ctx: JobContext, params: dict) -> int:
        return 1

    @queue.job_type("flaky", max_attempts=2, backoff=Backoff(base=0.01))
    async def flaky(ctx: JobContext, params: dict) -> None:
        raise ValueError("no luck this time")

    @queue.job_type("slow", timeout=0.05, max_attempts=1)
    async def slow(ctx: JobContext, params: dict) -> None:
        await anyio.sleep(10)

    async with queue:
        good = await queue.submit("ok", {})
        bad = await queue.submit("flaky", {})
        late = await queue.submit("slow", {})
        for job in (good, bad, late):
            await queue.wait(job.id, timeout=10)
        done = await wait_for_record(caplog, good.id, "completed")
        retry = await wait_for_record(caplog, bad.id, "scheduled")
        failed = await wait_for_record(caplog, bad.id, "failed")
        timeout = await wait_for_record(caplog, late.id, "failed")

    started = [r for r in job_records(caplog, good.id) if r.status == "running"]  # type: ignore[attr-defined]
    assert [r.levelno for r in started] == [logging.DEBUG]
    assert done.levelno == logging.INFO
    assert (done.job_type, done.attempt, done.max_attempts) == ("ok", 1, 3)  # type: ignore[attr-defined]
    assert done.duration >= 0 and good.id in done.getMessage()  # type: ignore[attr-defined]

    assert retry.levelno == logging.WARNING and retry.attempt == 1  # type: ignore[attr-defined]
    assert "will retry" in retry.getMessage() and "no luck this time" in retry.getMessage()
    assert failed.levelno == logging.ERROR and failed.attempt == 2  # type: ignore[attr-defined]
    # The traceback keeps its lines, down to the raise in the handler.
    assert 'raise ValueError("no luck this time")' in failed.getMessage()
    assert failed.error_type == "ValueError"  # type: ignore[attr-defined]

    assert timeout.levelno == logging.ERROR
    assert "timed out" in timeout.getMessage() and timeout.error_type == "JobTimeout"  # type: ignore[attr-defined]


def test_json_formatter_carries_the_job_fields() -> None:
    record = logging.LogRecord("asyncjobs.jobs", logging.INFO, __file__, 1, "done", None, None)
    record.job_id, record.job_type, record.attempt, record.duration = "01J", "ok", 1, 0.25
    out = json.loads(JsonFormatter().format(record))
    assert out["message"] == "done" and out["level"] == "INFO"
    assert (out["job_id"], out["job_type"], out["attempt"], out["duration"]) == (
        "01J",
        "ok",
        1,
        0.25,
    )
