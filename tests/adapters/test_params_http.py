"""Params errors over HTTP: a cross-field validator is a 422 field error, never a 500."""

from __future__ import annotations

from typing import Any

import attrs
import httpx
from asyncjobs.adapters.asgi import JobsApp

from asyncjobs import JobContext, Queue

from .conftest import Serve
from .support import opened


def _above_low(instance: Any, attribute: Any, value: int) -> None:
    if value < instance.low:
        raise ValueError("high must not be below low")


@attrs.frozen
class Span:
    low: int
    high: int = attrs.field(validator=_above_low)


async def test_a_cross_field_validator_answers_422_and_stores_nothing(serve: Serve) -> None:
    queue = Queue()

    @queue.job_type("span", params=Span)
    async def span(ctx: JobContext, params: Span) -> int:
        return params.high - params.low

    async with opened(queue):
        base = await serve(JobsApp(queue))
        async with httpx.AsyncClient(base_url=base) as client:
            bad = await client.post("/jobs", json={"type": "span", "params": {"low": 5, "high": 1}})
            assert bad.status_code == 422, bad.text
            [detail] = bad.json()["error"]["details"]
            assert detail == {"loc": ["high"], "msg": "high must not be below low"}
            assert (await queue.stats()).total == 0
            good = await client.post(
                "/jobs?wait=10", json={"type": "span", "params": {"low": 1, "high": 5}}
            )
            assert good.status_code == 200, good.text
            assert good.json()["result"] == 4
