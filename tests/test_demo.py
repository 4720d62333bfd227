"""The demo job types return what their descriptions promise."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from asyncjobs import JobStatus
from asyncjobs.demo import PRIME_LIST_CAP, build_demo_queue


async def run(job_type: str, params: dict[str, Any]) -> Any:
    queue = build_demo_queue()
    async with queue:
        job = await queue.submit(job_type, params)
        done = await queue.wait(job.id, timeout=30)
    assert done.status is JobStatus.COMPLETED, done.error
    return done


async def test_prime_returns_the_primes_it_found() -> None:
    done = await run("prime", {"limit": 30})
    assert done.result == {
        "limit": 30,
        "count": 10,
        "largest": 29,
        "primes": [2, 3, 5, 7, 11, 13, 17, 19, 23, 29],
        "truncated": False,
    }


async def test_prime_caps_the_list_for_a_large_limit() -> None:
    result = (await run("prime", {"limit": 100_000})).result
    assert result["count"] == 9592 and result["largest"] == 99991
    assert len(result["primes"]) == PRIME_LIST_CAP and result["truncated"] is True
    assert result["primes"][:5] == [2, 3, 5, 7, 11] and result["primes"][-1] == 7919


async def test_fibonacci_returns_the_sequence(monkeypatch: pytest.MonkeyPatch) -> None:
    real_sleep = anyio.sleep
    monkeypatch.setattr(anyio, "sleep", lambda _: real_sleep(0))  # 0.1 s a term otherwise
    short = (await run("fibonacci", {"terms": 10})).result
    assert short["sequence"] == [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]
    assert short["last"] == "55" and short["truncated"] is False
    # Past 2**53 a JSON number would lose digits in a browser: those terms are strings.
    long = (await run("fibonacci", {"terms": 80})).result["sequence"]
    assert long[77] == 8944394323791464 and long[78] == "14472334024676221"


@pytest.mark.parametrize(
    ("job_type", "params"),
    [("echo", {"delay": 0.2}), ("prime", {"limit": 50}), ("countdown", {"seconds": 1})],
)
async def test_a_finished_job_does_not_keep_a_waiting_message(
    job_type: str, params: dict[str, Any]
) -> None:
    done = await run(job_type, params)
    assert done.progress == 1.0
    assert done.message and not done.message.startswith("waiting"), done.message
