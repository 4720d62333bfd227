"""The curl + jq worker of docs/remote-workers.md answers a held ``POST /jobs?wait=``."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal

from asyncjobs import Queue

from .conftest import Serve
from .support import build_queue, opened

DOC = Path(__file__).resolve().parents[2] / "docs" / "remote-workers.md"
TOKEN = "shell-worker-token"


def shell_worker() -> str:
    match = re.search(
        r"<!-- test: shell-worker -->\n```bash\n(.*?)^```", DOC.read_text(), re.M | re.S
    )
    assert match, "docs/remote-workers.md lost its shell worker"
    return match.group(1)


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    async with opened(build_queue(concurrency=0)) as q:
        yield q


@pytest.mark.slow
async def test_the_shell_worker_from_the_docs_runs_jobs(
    serve: Serve, queue: Queue, tmp_path: Path
) -> None:
    for tool in ("bash", "curl", "jq"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed for this test (apt-get install -y {tool})")
    auth = BearerTokens(
        {
            TOKEN: Principal("sh", frozenset({"worker"})),
            "client-token": Principal("app", frozenset({"read", "submit", "cancel"})),
        }
    )
    url = await serve(JobsApp(queue, auth=auth))
    script = tmp_path / "worker.sh"
    script.write_text(shell_worker())
    env = {**os.environ, "ASYNCJOBS_URL": url, "ASYNCJOBS_TOKEN": TOKEN}
    # A new session, so the teardown can stop bash with its subshells and a held curl.
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once; the server runs meanwhile
        ["bash", str(script)], env=env, start_new_session=True
    )
    try:
        headers = {"Authorization": "Bearer client-token"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=40) as client:
            for n in range(3):
                response = await client.post(
                    "/jobs?wait=30", json={"type": "echo", "params": {"n": n}}
                )
                assert response.status_code == 200, response.text
                job = response.json()
                assert job["status"] == "completed"
                assert job["result"] == {"echoed": {"n": n}}
        assert proc.poll() is None  # still claiming
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # bash, its subshells and a held curl
        proc.wait(timeout=10)
