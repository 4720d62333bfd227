"""``kill -9`` of a process after a job's end is stored, mid-delivery: the next process
on the same SQLite file delivers it, with the same ``webhook-id`` (at least once)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import anyio
import pytest

from asyncjobs import Queue
from asyncjobs.job import JobStatus
from asyncjobs.webhooks import Webhook, WebhookConfig
from webhook_receiver import receiver

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# argv: database path, receiver URL. Runs one job, then sits in its delivery attempt
# (the receiver holds the request) until it is killed.
APP = """
import sys
import anyio
from asyncjobs import JobContext, Queue
from asyncjobs.webhooks import Webhook, WebhookConfig

path, url, secret = sys.argv[1], sys.argv[2], sys.argv[3]
queue = Queue(
    f"sqlite:///{path}",
    webhooks=[Webhook(url=url, secret=secret)],
    webhook_config=WebhookConfig(lease=2.0, poll=0.1, timeout=60.0),
)

@queue.job_type("echo")
async def echo(ctx: JobContext, params: dict) -> dict:
    return params

async def main() -> None:
    async with queue:
        job = await queue.submit("echo", {"n": 42})
        await queue.wait(job.id, timeout=30)
        print(job.id, flush=True)
        await anyio.sleep_forever()

anyio.run(main)
"""


async def test_kill_9_mid_delivery_then_the_next_process_delivers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNCJOBS_WEBHOOK_ALLOW", "127.0.0.1")
    path = tmp_path / "jobs.db"
    async with receiver(SECRET, delay=60.0) as rx:
        child = await anyio.open_process(
            [sys.executable, "-c", APP, str(path), rx.url, SECRET],
            cwd=Path(__file__).parent,
        )
        try:
            assert child.stdout is not None
            with anyio.fail_after(30):
                line = b""
                while not line.endswith(b"\n"):
                    line += await child.stdout.receive()
            job_id = line.decode().strip()
            (first,) = await rx.wait_for(1)  # the child is inside its attempt now
            child.send_signal(signal.SIGKILL)
            assert await child.wait() == -signal.SIGKILL
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await child.aclose()
        rx.delay = 0.0
        hook = Webhook(url=rx.url, secret=SECRET)
        # The next process: same file, same webhook given in code; it has never seen the
        # job end, only the outbox row that the end's transaction wrote.
        queue = Queue(
            f"sqlite:///{path}",
            concurrency=0,
            webhooks=[hook],
            webhook_config=WebhookConfig(poll=0.1),
        )
        async with queue:
            assert (await queue.get(job_id)).status is JobStatus.COMPLETED
            second = (await rx.wait_for(2))[1]
            with anyio.fail_after(20):
                while not (delivered := await queue.deliveries(hook.id, status="delivered")):
                    await anyio.sleep(0.05)
    assert first.valid and second.valid
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == delivered[0].id
    assert first.body == second.body
    assert second.json["data"]["id"] == job_id
    assert second.json["data"]["result"] == {"n": 42}
