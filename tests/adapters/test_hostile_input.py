"""Hostile JSON never reaches a store and never breaks a later read.

Invalid Unicode is 400, out-of-range numbers 422 with field errors, over HTTP; over the
WebSocket each gets an error reply and the connection stays open. Whatever is refused
leaves the stats unchanged, and ``/jobs``, ``/ws`` and ``/events`` keep working.
"""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest
from asyncjobs.adapters.asgi import JobsApp
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from asyncjobs import InvalidSubmission, Queue

from .support import build_queue, opened
from .test_live_ordering import served

JSON = {"Content-Type": "application/json"}
HUGE = "9" * 400


async def post(client: httpx.AsyncClient, text: str) -> httpx.Response:
    return await client.post("/jobs", content=text.encode("utf-8", "surrogatepass"), headers=JSON)


async def test_lone_surrogate_in_params_is_400_and_nothing_is_stored(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    response = await post(client, '{"type": "echo", "params": {"x": "\\ud800"}}')
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_unicode"
    key = await post(client, '{"type": "echo", "params": {"\\udfff": 1}}')
    assert key.status_code == 400
    assert (await queue.stats()).counts == {s: 0 for s in (await queue.stats()).counts}
    assert (await client.get("/jobs")).json()["jobs"] == []


async def test_invalid_utf8_bytes_are_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs", content=b'{"type": "echo", "params": {"x": "\xff\xfe"}}', headers=JSON
    )
    assert response.status_code == 400


@pytest.mark.parametrize("field", ["priority", "delay", "timeout", "max_attempts"])
async def test_400_digit_numbers_are_422_with_the_field(
    client: httpx.AsyncClient, queue: Queue, field: str
) -> None:
    for number in (HUGE, "-" + HUGE, "1e400", "1.5e308"):
        response = await post(client, f'{{"type": "echo", "{field}": {number}}}')
        assert response.status_code == 422, (number, response.text)
        assert [e["loc"] for e in response.json()["error"]["details"]] == [[field]]
    assert (await queue.stats()).counts[next(iter((await queue.stats()).counts))] == 0


@pytest.mark.parametrize(
    ("value", "loc"),
    [
        ("1e400", ["params", "v"]),
        ("-1e400", ["params", "v"]),
        ('"a\\u0000b"', ["params", "v"]),
        ("[" * 100 + "]" * 100, None),
        (HUGE * 2, ["params", "v"]),
    ],
)
async def test_params_no_store_can_hold_are_422(
    client: httpx.AsyncClient, queue: Queue, value: str, loc: list[Any] | None
) -> None:
    response = await post(client, f'{{"type": "echo", "params": {{"v": {value}}}}}')
    assert response.status_code == 422, response.text
    if loc is not None:
        assert loc in [e["loc"] for e in response.json()["error"]["details"]]
    assert sum((await queue.stats()).counts.values()) == 0


async def test_nan_and_very_deep_nesting_are_400(client: httpx.AsyncClient) -> None:
    for value in ("NaN", "Infinity", "[" * 5000 + "]" * 5000):
        response = await post(client, f'{{"type": "echo", "params": {{"v": {value}}}}}')
        assert response.status_code == 400


async def test_tiny_floats_and_long_strings_are_accepted(
    client: httpx.AsyncClient, queue: Queue
) -> None:
    long = "x" * 100_000
    response = await post(client, f'{{"type": "echo", "params": {{"a": 1e-400, "b": "{long}"}}}}')
    assert response.status_code == 202
    job = await queue.wait(response.json()["id"], timeout=5)
    assert job.result == {"a": 0.0, "b": long}


async def test_queue_submit_refuses_what_no_store_can_hold(queue: Queue) -> None:
    for params in ({"x": "\ud800"}, {"x": "a\x00"}, {"x": float("inf")}, {"x": 10**400}):
        with pytest.raises(InvalidSubmission):
            await queue.submit("echo", params)
    with pytest.raises(InvalidSubmission):
        await queue.submit("echo", {}, tags=["\udc00"])
    assert sum((await queue.stats()).counts.values()) == 0


async def test_a_result_no_store_can_hold_fails_the_job() -> None:
    queue = build_queue()

    @queue.job_type("bad_result", max_attempts=1)
    async def bad_result(ctx: Any, params: dict[str, Any]) -> str:
        return "\ud800"

    async with opened(queue):
        job = await queue.submit("bad_result")
        done = await queue.wait(job.id, timeout=5)
        assert done.status.value == "failed"
        assert done.error is not None and "no store can hold" in done.error.message
        async with served(queue) as address, httpx.AsyncClient() as client:
            assert (await client.get(f"http://{address}/jobs")).status_code == 200


async def test_websocket_answers_hostile_messages_and_stays_open(
    base_url: str, queue: Queue
) -> None:
    async with connect(base_url.replace("http", "ws") + "/ws") as ws:
        assert json.loads(await ws.recv())["type"] == "queue_state"
        create = '{"type": "create_job", "job_type": "echo", "request_id": '
        messages = [
            create + '1, "params": {"x": "\\ud800"}}',
            create + f'2, "priority": {HUGE}}}',
            create + f'3, "delay": {HUGE}}}',
            create + '4, "timeout": 1e400}',
            create + f'5, "max_attempts": {HUGE}}}',
            '{"type": "get_state", "request_id": 6, "limit": ' + HUGE + "}",
        ]
        codes = {}
        for text in messages:
            await ws.send(text)
            with anyio.fail_after(5):
                while True:
                    reply = json.loads(await ws.recv())
                    if reply.get("type") == "error":
                        codes[reply["request_id"]] = reply["error"]["code"]
                        break
        assert codes[1] == "invalid_unicode"
        assert {codes[i] for i in (2, 3, 4, 5, 6)} == {"invalid_request"}
        await ws.send('{"type": "ping", "request_id": "p"}')
        with anyio.fail_after(5):
            while (reply := json.loads(await ws.recv()))["type"] != "pong":
                pass
    assert sum((await queue.stats()).counts.values()) == 0


# -- generated hostile JSON --------------------------------------------------------------

_HOSTILE_TEXT = st.lists(
    st.one_of(
        st.characters(),
        st.sampled_from(["\ud800", "\udfff", "\udbff\udc00", "\x00", "\ufffe", "\U0010ffff"]),
    ),
    max_size=12,
).map(lambda chars: json.dumps("".join(chars)))  # ASCII escapes: "\ud800" reaches the parser
_HOSTILE_NUMBER = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400).map(str),
    st.sampled_from([HUGE, "-" + HUGE, "1e400", "-1e400", "1e-400", "1.7976931348623157e308"]),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
)
_HOSTILE = st.one_of(
    _HOSTILE_TEXT,
    _HOSTILE_NUMBER,
    st.integers(1, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(1, 200).map(lambda n: '{"a":' * n + "0" + "}" * n),
    st.integers(1000, 200_000).map(lambda n: json.dumps("y" * n)),
)
_FIELDS = ["params", "priority", "delay", "timeout", "max_attempts", "tags", "idempotency_key"]


def _body(field: str, value: str, *, ws: bool) -> str:
    head = '"type": "create_job", "job_type": "echo"' if ws else '"type": "echo"'
    if field == "params":
        # A string goes in as a key too: keys are text the stores must hold as well.
        key = value if value.startswith('"') else '"k"'
        return f'{{{head}, "params": {{"v": {value}, {key}: 1}}}}'
    if field == "tags":
        return f'{{{head}, "tags": [{value}]}}'
    return f'{{{head}, "{field}": {value}}}'


@settings(
    max_examples=20,
    deadline=None,
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    cases=st.lists(st.tuples(st.sampled_from(_FIELDS), _HOSTILE), min_size=1, max_size=4),
)
async def test_generated_hostile_json_never_breaks_the_server(
    cases: list[tuple[str, str]],
) -> None:
    queue = build_queue()
    async with opened(queue), served(queue) as address:
        async with httpx.AsyncClient(base_url=f"http://{address}", timeout=30) as client:
            accepted: set[str] = set()
            for field, value in cases:
                before = (await client.get("/stats")).json()["total"]
                response = await post(client, _body(field, value, ws=False))
                assert response.status_code < 500, response.text
                after = (await client.get("/stats")).json()["total"]
                if response.status_code >= 400:
                    assert after == before, "a refused submission changed the stats"
                else:  # a repeated idempotency key returns the job it stored first
                    new = response.json()["id"] not in accepted
                    accepted.add(response.json()["id"])
                    assert after == before + new
            listing = await client.get("/jobs")
            assert listing.status_code == 200
            assert len(listing.json()["jobs"]) == len(accepted)
            async with client.stream("GET", "/events") as events:
                assert events.status_code == 200
                with anyio.fail_after(5):
                    async for line in events.aiter_lines():
                        if line.startswith(": connected"):
                            break
        async with connect(f"ws://{address}/ws", max_size=2**24) as ws:
            with anyio.fail_after(5):
                assert json.loads(await ws.recv())["type"] == "queue_state"
            for index, (field, value) in enumerate(cases):
                text = _body(field, value, ws=True)
                await ws.send(text[:1] + f'"request_id": {index}, ' + text[1:])
                with anyio.fail_after(5):
                    while True:
                        reply = json.loads(await ws.recv())
                        if reply.get("request_id") == index:
                            break
                        # A message that does not parse has no request_id to echo.
                        if reply["type"] == "error" and reply["request_id"] is None:
                            break
                assert reply["type"] in ("ack", "error")
            await ws.send('{"type": "ping", "request_id": "end"}')
            with anyio.fail_after(5):
                while json.loads(await ws.recv()).get("request_id") != "end":
                    pass


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
async def test_free_text_a_job_produces_is_repaired_not_lost(
    kind: str, tmp_path: Any, serve: Any
) -> None:
    store = "memory://" if kind == "memory" else f"sqlite:///{tmp_path / 'jobs.db'}"
    queue = Queue(store)

    @queue.job_type("noisy", max_attempts=1)
    async def noisy(ctx: Any, params: dict[str, Any]) -> None:
        await ctx.progress(0.5, "half \ud800 way\x00")
        raise RuntimeError("broke on \udfff")

    async with opened(queue):
        job = await queue.submit("noisy")
        done = await queue.wait(job.id, timeout=10)
        assert done.status.value == "failed"
        assert done.error is not None and done.error.message == "broke on \ufffd"
        assert "\udfff" not in done.error.traceback
        url = await serve(JobsApp(queue))
        async with httpx.AsyncClient(base_url=url) as client:
            listing = await client.get("/jobs")
            assert listing.status_code == 200
            assert listing.json()["jobs"][0]["error"]["message"] == "broke on \ufffd"


async def test_a_remote_worker_cannot_store_what_no_store_can_hold(serve: Any) -> None:
    queue = build_queue(concurrency=0)
    async with opened(queue):
        url = await serve(JobsApp(queue))
        job = await queue.submit("echo")
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            claim = await client.post("/worker/claim", json={"worker": "w", "types": ["echo"]})
            (claimed,) = claim.json()["jobs"]
            token = claimed["token"]
            bad = await post_to(client, f"/worker/jobs/{job.id}/complete", token, "1e400")
            assert bad.status_code == 422, bad.text
            assert (await queue.get(job.id)).status.value == "running"
            good = await post_to(client, f"/worker/jobs/{job.id}/complete", token, '"ok"')
            assert good.status_code == 200
            assert (await client.get("/jobs")).status_code == 200


async def post_to(client: httpx.AsyncClient, path: str, token: str, result: str) -> httpx.Response:
    body = f'{{"token": "{token}", "result": {result}}}'
    return await client.post(path, content=body, headers=JSON)
