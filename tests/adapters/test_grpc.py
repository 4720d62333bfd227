"""The gRPC WorkerService, driven by a client built from server reflection."""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import grpc
import httpx
import pytest
from asyncjobs.adapters.asgi import BearerTokens, Principal
from asyncjobs.adapters.grpc import PROTO_PATH, start_grpc_server

from asyncjobs import JanitorConfig, Queue
from cli_server import cli_server, free_port

from .grpc_reflect import SERVICE, ReflectedClient
from .support import build_queue, opened

TOKEN = "grpc-worker-token"


@pytest.fixture
async def queue() -> AsyncIterator[Queue]:
    async with opened(build_queue(concurrency=0, janitor=JanitorConfig(interval=0.05))) as q:
        yield q


@pytest.fixture
async def target(queue: Queue) -> AsyncIterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    auth = BearerTokens(
        {
            TOKEN: Principal("w", frozenset({"worker"})),
            "reader-token": Principal("r", frozenset({"read"})),
        }
    )
    server = await start_grpc_server(queue, port=port, auth=auth)
    yield f"127.0.0.1:{port}"
    await server.stop(1)


async def client(target: str, token: str | None = TOKEN) -> ReflectedClient:
    return await anyio.to_thread.run_sync(ReflectedClient, target, token)


async def call(c: ReflectedClient, method: str, **fields: Any) -> dict[str, Any]:
    return await anyio.to_thread.run_sync(lambda: c.call(method, **fields))


async def code_of(c: ReflectedClient, method: str, **fields: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        await call(c, method, **fields)
    return caught.value.code()  # type: ignore[attr-defined, no-any-return]


def test_the_proto_ships_in_the_package() -> None:
    assert "service WorkerService" in PROTO_PATH.read_text()


async def test_a_reflection_client_drives_a_job_end_to_end(target: str, queue: Queue) -> None:
    c = await client(target)
    try:
        assert SERVICE in c.services
        assert "grpc.reflection.v1alpha.ServerReflection" in c.services
        job = await queue.submit("sleep", {"seconds": 1, "steps": 2}, max_attempts=2)
        reply = await call(c, "Claim", worker="grpc-1", limit=5, wait=10, lease=10)
        (claimed,) = reply["jobs"]
        assert claimed["id"] == job.id
        assert claimed["type"] == "sleep"
        assert json.loads(claimed["params_json"]) == {"seconds": 1, "steps": 2}
        assert claimed["attempt"] == 1
        token = claimed["token"]
        beat = await call(c, "Heartbeat", id=job.id, token=token)
        assert beat["cancel_requested"] is False and beat["lease_expires_at"]
        await call(c, "Progress", id=job.id, token=token, progress=0.5, message="half")
        running = await queue.get(job.id)
        assert (running.progress, running.message) == (0.5, "half")
        assert await code_of(c, "Complete", id=job.id, token="forged") is (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        done = await call(c, "Complete", id=job.id, token=token, result_json='{"ok": true}')
        assert json.loads(done["job_json"])["status"] == "completed"
        assert (await queue.get(job.id)).result == {"ok": True}
        # The token is spent: the same call again is a lost lease, and nothing changes.
        assert await code_of(c, "Complete", id=job.id, token=token, result_json="1") is (
            grpc.StatusCode.FAILED_PRECONDITION
        )
        assert (await queue.get(job.id)).result == {"ok": True}
    finally:
        c.close()


async def test_cancel_fail_and_release_over_grpc(target: str, queue: Queue) -> None:
    c = await client(target)
    try:
        job = await queue.submit("echo", {}, max_attempts=3)
        (claimed,) = (await call(c, "Claim", worker="g"))["jobs"]
        await queue.cancel(job.id)
        beat = await call(c, "Heartbeat", id=job.id, token=claimed["token"])
        assert beat["cancel_requested"] is True
        reply = await call(
            c, "Fail", id=job.id, token=claimed["token"], error_type="Cancelled", error_message=""
        )
        assert json.loads(reply["job_json"])["status"] == "cancelled"

        job = await queue.submit("echo", {}, max_attempts=1)
        (claimed,) = (await call(c, "Claim", worker="g", types=["echo"]))["jobs"]
        reply = await call(c, "Release", id=job.id, token=claimed["token"])
        assert json.loads(reply["job_json"])["status"] == "queued"
        (claimed,) = (await call(c, "Claim", worker="g"))["jobs"]
        reply = await call(
            c, "Fail", id=job.id, token=claimed["token"], error_type="E", error_message="m"
        )
        assert json.loads(reply["job_json"])["status"] == "failed"
        assert (await call(c, "Claim", worker="g", wait=0.2))["jobs"] == []
    finally:
        c.close()


async def test_status_codes(target: str) -> None:
    c = await client(target)
    try:
        missing = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
        assert await code_of(c, "Heartbeat", id=missing, token="t") is grpc.StatusCode.NOT_FOUND
        bad = grpc.StatusCode.INVALID_ARGUMENT
        assert await code_of(c, "Claim", worker="") is bad
        assert await code_of(c, "Claim", worker="w", types=["nope"]) is bad
        assert await code_of(c, "Claim", worker="w", lease=-1) is bad
        assert await code_of(c, "Progress", id=missing, token="t", progress=2) is bad
        assert await code_of(c, "Complete", id=missing, token="t", result_json="{") is bad
        assert await code_of(c, "Heartbeat", id="", token="") is bad
    finally:
        c.close()
    anonymous = await client(target, None)
    reader = await client(target, "reader-token")
    try:
        assert await code_of(anonymous, "Claim", worker="w") is grpc.StatusCode.UNAUTHENTICATED
        assert await code_of(reader, "Claim", worker="w") is grpc.StatusCode.PERMISSION_DENIED
    finally:
        anonymous.close()
        reader.close()


@pytest.mark.slow
async def test_serve_grpc_port_runs_the_service_beside_http(tmp_path: Path) -> None:
    grpc_port = free_port()
    args = ["serve", "remote_app:web", "--grpc-port", str(grpc_port)]
    log = tmp_path / "serve.log"
    with cli_server(args, cwd=Path(__file__).parent, log=log) as url:
        async with httpx.AsyncClient(base_url=url, timeout=20) as http:
            response = await http.post("/jobs?wait=0", json={"type": "steps", "params": {"n": 1}})
            job_id = response.json()["id"]
            c = await client(f"127.0.0.1:{grpc_port}", None)
            try:
                (claimed,) = (await call(c, "Claim", worker="cli", wait=10))["jobs"]
                assert claimed["id"] == job_id
                await call(c, "Complete", id=job_id, token=claimed["token"], result_json='"ok"')
            finally:
                c.close()
            job = (await http.get(f"/jobs/{job_id}")).json()
    assert job["status"] == "completed"
    assert job["result"] == "ok"
    assert "gRPC WorkerService on" in log.read_text()


def test_the_committed_generated_code_matches_the_proto(tmp_path: Path) -> None:
    """Regenerate from worker.proto (as docs/decisions.md says) and compare."""
    from grpc_tools import protoc

    package = tmp_path / "asyncjobs" / "adapters" / "grpc"
    package.mkdir(parents=True)
    (package / "worker.proto").write_text(PROTO_PATH.read_text())
    proto = str(package / "worker.proto")
    args = ["protoc", f"-I{tmp_path}", f"--python_out={tmp_path}", f"--grpc_python_out={tmp_path}"]
    assert protoc.main([*args, proto]) == 0
    for name in ("worker_pb2.py", "worker_pb2_grpc.py"):
        fresh = _generated((package / name).read_text())
        assert fresh == _generated((PROTO_PATH.parent / name).read_text()), (
            f"regenerate {name} from worker.proto"
        )


def _generated(code: str) -> list[str]:
    # Another grpcio-tools release stamps other version numbers; the rest must agree.
    return [
        line
        for line in code.splitlines()
        if not line.startswith("#") and "VERSION" not in line and not re.search(r"\d+,\s*$", line)
    ]
