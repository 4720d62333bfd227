"""The webhook routes over real HTTP: admin scope, registration, the delivery log."""

from __future__ import annotations

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal

from asyncjobs import Queue
from webhook_receiver import receiver

from .conftest import Serve

ADMIN = "admin-token-0001"
SUBMITTER = "submit-token-0001"
TOKENS = BearerTokens(
    {ADMIN: Principal("ops", {"admin"}), SUBMITTER: Principal("app", {"read", "submit"})}
)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


async def test_register_list_deliver_and_delete(
    serve: Serve, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await serve(JobsApp(queue, auth=TOKENS))
    admin = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"})
    app = httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {SUBMITTER}"})
    async with admin, app, receiver(SECRET) as rx:
        body = {"url": rx.url, "events": ["job_completed"], "secret": SECRET}
        assert (await app.post("/webhooks", json=body)).status_code == 403
        refused = await admin.post("/webhooks", json=body)
        assert refused.status_code == 422  # loopback, not allowed yet
        assert "ASYNCJOBS_WEBHOOK_ALLOW" in refused.text
        monkeypatch.setenv("ASYNCJOBS_WEBHOOK_ALLOW", "127.0.0.1")
        made = await admin.post("/webhooks", json=body)
        assert made.status_code == 201, made.text
        hook = made.json()
        assert hook["secret"] == SECRET
        generated = (await admin.post("/webhooks", json={"url": rx.url + "/2"})).json()
        assert generated["secret"].startswith("whsec_")
        assert generated["events"] == ["job_cancelled", "job_completed", "job_failed"]
        listed = (await admin.get("/webhooks")).json()["webhooks"]
        assert [h["id"] for h in listed] == [hook["id"], generated["id"]]
        assert all("secret" not in h for h in listed)
        for bad in ({"url": "ftp://x"}, {"url": rx.url, "events": ["job_started"]}, {"x": 1}):
            assert (await admin.post("/webhooks", json=bad)).status_code == 422
        assert (await admin.delete(f"/webhooks/{generated['id']}")).status_code == 204

        done = await app.post("/jobs?wait=10", json={"type": "echo", "params": {"a": 1}})
        assert done.json()["status"] == "completed"
        (got,) = await rx.wait_for(1)
        assert got.valid
        log = f"/webhooks/{hook['id']}/deliveries"
        assert (await app.get(log)).status_code == 403
        deliveries: list[dict[str, object]] = []
        for _ in range(200):
            deliveries = (await admin.get(log, params={"status": "delivered"})).json()["deliveries"]
            if deliveries:
                break
            await anyio.sleep(0.05)
        (delivery,) = deliveries
        assert delivery["id"] == got.headers["webhook-id"]
        assert delivery["job_id"] == done.json()["id"]
        assert (await admin.get(log, params={"status": "nope"})).status_code == 422
        assert (await admin.delete("/webhooks/wh_nope")).status_code == 404
        assert (await admin.get("/webhooks/wh_nope/deliveries")).status_code == 404
