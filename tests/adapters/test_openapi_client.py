"""A client generated from ``/openapi.json`` by openapi-python-client imports and works."""

from __future__ import annotations

import json
import sys
import textwrap
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import attrs
import httpx
import pytest
from asyncjobs.adapters.asgi import JobsApp

from asyncjobs import JobContext
from asyncjobs.demo import build_demo_queue

from .conftest import Serve
from .support import opened

pytestmark = pytest.mark.slow


@attrs.frozen
class Remind:
    at: datetime
    note: str = "hello"


def _generator() -> str:
    found = Path(sys.executable).parent / "openapi-python-client"
    if not found.exists():
        pytest.fail("openapi-python-client is not installed (it is in the test extra)")
    return str(found)


# Run in a fresh interpreter: every generated module must import, and a submission built
# from the generated models must be accepted by the server.
_USE_CLIENT = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    from datetime import datetime, timezone
    sys.path.insert(0, sys.argv[1])
    import jobs_client
    for info in pkgutil.walk_packages(jobs_client.__path__, "jobs_client."):
        importlib.import_module(info.name)
    from jobs_client import Client
    from jobs_client.api.default import submit_job
    from jobs_client.models import CountdownParams, CountdownSubmission, RemindSubmission
    from jobs_client.models import RemindParams
    client = Client(base_url=sys.argv[2])
    job = submit_job.sync(client=client, body=CountdownSubmission(
        type_="countdown", params=CountdownParams(seconds=1)))
    print(job.id, job.status)
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    job = submit_job.sync(client=client, body=RemindSubmission(
        type_="remind", params=RemindParams(at=when)))
    print(job.id, job.params["at"])
    """
)


async def test_generated_client_imports_and_submits(serve: Serve, tmp_path: Path) -> None:
    queue = build_demo_queue()

    @queue.job_type("remind", max_attempts=1)
    async def remind(ctx: JobContext, params: Remind) -> str:
        return params.at.isoformat()

    async with opened(queue):
        url = await serve(JobsApp(queue))
        async with httpx.AsyncClient() as http:
            document: dict[str, Any] = (await http.get(f"{url}/openapi.json")).json()
        at = document["components"]["schemas"]["RemindParams"]["properties"]["at"]
        assert at == {"type": "string", "format": "date-time"}
        spec = tmp_path / "openapi.json"
        spec.write_text(json.dumps(document))
        out = str(tmp_path / "jobs_client")
        command = [_generator(), "generate", "--path", str(spec), "--meta", "none"]
        generated = await anyio.run_process([*command, "--output-path", out], check=False)
        output = generated.stdout.decode() + generated.stderr.decode()
        assert generated.returncode == 0, output
        assert "Unable to process schema" not in output, output
        used = await anyio.run_process(
            [sys.executable, "-c", _USE_CLIENT, str(tmp_path), url], check=False
        )
        assert used.returncode == 0, used.stderr.decode()
        lines = used.stdout.decode().splitlines()
        assert lines[0].endswith(" queued") or lines[0].endswith(" running")
        assert lines[1].endswith(" 2030-01-02T03:04:05+00:00")
