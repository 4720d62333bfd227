"""OpenTelemetry across two real processes: the worker continues the submitter's trace.

Each process installs the SDK with an in-memory exporter and prints its finished spans
as JSON; the test compares them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SETUP = """
import json, sys
import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from asyncjobs import JobContext, Queue

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

def dump():
    out = []
    for s in exporter.get_finished_spans():
        out.append({
            "name": s.name, "kind": s.kind.name,
            "trace_id": format(s.context.trace_id, "032x"),
            "span_id": format(s.context.span_id, "016x"),
            "parent": None if s.parent is None else format(s.parent.span_id, "016x"),
            "attributes": dict(s.attributes or {}),
            "status": s.status.status_code.name,
        })
    print(json.dumps(out), flush=True)

path, mode = sys.argv[1], sys.argv[2]
queue = Queue(f"sqlite:///{path}", concurrency=1 if mode == "work" else 0)

@queue.job_type("resize", max_attempts=2)
async def resize(ctx: JobContext, params: dict) -> dict:
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"ok": True}
"""

SUBMIT = (
    SETUP
    + """
async def main():
    async with queue:
        with trace.get_tracer("web").start_as_current_span("POST /upload"):
            job = await queue.submit("resize", {"w": 10})
    print(job.id, flush=True)
    dump()

anyio.run(main)
"""
)

WORK = (
    SETUP
    + """
async def main():
    async with queue:
        while True:
            jobs = (await queue.list(limit=10)).jobs
            if jobs and all(j.is_terminal for j in jobs):
                break
            await anyio.sleep(0.05)
    dump()

anyio.run(main)
"""
)


async def _run(script: str, *args: str) -> list[str]:
    done = await anyio.run_process([sys.executable, "-c", script, *args], check=False)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode().splitlines()


async def test_a_worker_in_another_process_continues_the_submitters_trace(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.db")
    job_id, submitted = await _run(SUBMIT, path, "submit")
    with anyio.fail_after(60):
        (worked,) = await _run(WORK, path, "work")
    spans: dict[str, list[dict[str, Any]]] = {
        "submit": json.loads(submitted),
        "work": json.loads(worked),
    }
    by_name = {s["name"]: s for s in spans["submit"]}
    request, send = by_name["POST /upload"], by_name["send resize"]
    assert send["kind"] == "PRODUCER"
    assert send["parent"] == request["span_id"]
    assert send["attributes"] == {
        "messaging.system": "asyncjobs",
        "messaging.operation.type": "send",
        "messaging.operation.name": "submit",
        "messaging.destination.name": "resize",
        "messaging.message.id": job_id,
    }
    attempts = [s for s in spans["work"] if s["name"] == "process resize"]
    assert len(attempts) == 2  # the failed attempt and its retry
    for number, span in enumerate(attempts, start=1):
        assert span["kind"] == "CONSUMER"
        assert span["trace_id"] == request["trace_id"]  # one trace across both processes
        assert span["parent"] == send["span_id"]
        assert span["attributes"]["messaging.message.id"] == job_id
        assert span["attributes"]["messaging.operation.type"] == "process"
        assert span["attributes"]["asyncjobs.job.attempt"] == number
    assert attempts[0]["status"] == "ERROR"
    assert attempts[0]["attributes"]["asyncjobs.job.outcome"] == "scheduled"
    assert attempts[1]["attributes"]["asyncjobs.job.outcome"] == "completed"
