"""The OpenAPI document: valid 3.1, complete, and true to the server (schemathesis)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import BearerTokens, JobsApp, Principal, openapi_document
from openapi_spec_validator import validate
from starlette.routing import Route

from asyncjobs import Queue

from .conftest import Serve
from .support import build_queue, opened


async def test_the_document_is_valid_openapi_3_1(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    validate(document)
    assert "security" not in document  # no auth configured


@pytest.mark.parametrize("dashboard", [True, False])
def test_every_variant_validates(dashboard: bool) -> None:
    queue = build_queue()
    for secured in (True, False):
        validate(
            openapi_document(
                root_path="/x",
                dashboard=dashboard,
                secured=secured,
                job_types=queue.registry.describe(),
            )
        )
    validate(openapi_document())


def test_every_route_is_documented(queue: Queue) -> None:
    app = JobsApp(queue)
    document = openapi_document(job_types=queue.registry.describe())
    served: dict[str, set[str]] = {}
    for route in app.api.routes() + app.workers.routes():
        assert isinstance(route, Route)
        assert route.methods is not None
        served[route.path] = {m.lower() for m in route.methods} - {"head"}
    served["/openapi.json"] = {"get"}
    served["/"] = {"get"}
    documented = {
        path: {m for m in item if m in {"get", "post", "put", "delete", "patch"}}
        for path, item in document["paths"].items()
    }
    assert documented == served


def test_submission_schema_follows_the_registered_types(queue: Queue) -> None:
    document = openapi_document(job_types=queue.registry.describe())
    schemas = document["components"]["schemas"]
    submission = schemas["Submission"]
    # Named components, so code generators make one class per type.
    variants = [schemas[v["$ref"].rsplit("/", 1)[1]] for v in submission["oneOf"]]
    by_type = {v["properties"]["type"]["const"]: v for v in variants}
    assert set(by_type) == {"echo", "sleep", "fail", "block"}
    assert submission["discriminator"]["mapping"]["sleep"] == "#/components/schemas/SleepSubmission"
    sleep_params = schemas["SleepParams"]
    assert by_type["sleep"]["properties"]["params"]["anyOf"][0] == {
        "$ref": "#/components/schemas/SleepParams"
    }
    assert sleep_params["properties"]["seconds"]["maximum"] == 30


async def test_secured_document_names_the_schemes(serve: Serve, queue: Queue) -> None:
    auth = BearerTokens({"reader-token": Principal("r", {"read"})})
    url = await serve(JobsApp(queue, auth=auth))
    async with httpx.AsyncClient(base_url=url) as client:
        document = (await client.get("/openapi.json")).json()
    validate(document)
    assert set(document["components"]["securitySchemes"]) == {"bearer", "accessToken"}


def _schemathesis() -> str:
    found = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
    if not Path(found).exists():
        pytest.fail("schemathesis is not installed (it is in the test extra)")
    return found


@pytest.mark.timeout(240)
async def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(serve: Serve) -> None:
    queue = Queue("memory://", max_queued=50)

    @queue.job_type("echo", max_attempts=1)
    async def echo(ctx: Any, params: dict[str, Any]) -> dict[str, Any]:
        return params

    @queue.job_type("fail", max_attempts=1)
    async def fail(ctx: Any, params: dict[str, Any]) -> None:
        raise RuntimeError("this job always fails")

    async with opened(queue):
        # max_wait bounds every ?wait= request; the SSE routes never end, so they are
        # left out (tests/adapters/test_sse.py covers them). The fenced worker routes
        # need a live claim's token, which fuzzing cannot make up; test_worker_routes.py
        # covers their bodies and answers.
        url = await serve(JobsApp(queue, max_wait=1.0))
        result = await anyio.run_process(
            [
                _schemathesis(),
                "run",
                f"{url}/openapi.json",
                "--checks",
                "all",
                "--exclude-path",
                "/events",
                "--exclude-path",
                "/jobs/{job_id}/events",
                "--exclude-path-regex",
                "^/worker/jobs/",
                "--max-examples",
                "25",
                "--seed",
                "1",
                "--request-timeout",
                "15",
                "--no-color",
                # Every warning but missing_test_data and low_valid_rate: a generated job
                # id has the right shape (a ULID) and so names no job, a 404 by design.
                "--warnings",
                "missing_auth,base_url_mismatch,validation_mismatch,missing_deserializer,"
                "unused_openapi_auth,unsupported_regex,method_not_allowed,unmatched_filter,"
                "unresolvable_reference,dictionary_mismatch,timeout_units",
            ],
            check=False,
        )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output[-6000:]
    assert "No issues found" in output, output[-4000:]
