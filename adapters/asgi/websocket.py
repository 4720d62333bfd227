"""The WebSocket protocol: live queue state and job commands over one connection.

Server to client, as JSON text frames:

* ``{"type": "queue_state", "jobs": [...], "next_cursor", "stats": {...}, "job_types":
  [...], "workers": [...]}`` on connect and in reply to ``get_state``;
* every job event, as ``{"type": "job_created" | "job_progress" | ..., "seq", "at",
  "job"}`` (the same JSON as SSE ``data:``), filtered by the last ``subscribe``;
* a reply to every client message: ``{"type": "ack", "op", "request_id", ...}``,
  ``queue_state``, ``pong``, or ``{"type": "error", "op", "request_id", "error":
  {"code", "message", "details"}}`` (the connection stays open);
* ``{"type": "ping"}`` every ``heartbeat`` seconds (a client may ignore it).

Client to server: ``create_job`` (``job_type``, ``params`` and the options of
``POST /jobs``), ``cancel_job`` (``job_id``), ``delete_job`` (``job_id``),
``clear_completed`` (``status``?), ``get_state`` (``status``?, ``job_type``?,
``limit``?), ``subscribe`` (``job_id``?, ``job_type``?, ``status``?), ``ping``.
Any message may carry a ``request_id`` that its reply echoes.

A host can serve the protocol from its own route::

    @app.websocket_route("/live")
    async def live(websocket: WebSocket) -> None:
        await serve_websocket(websocket, queue)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, final

import anyio
import anyio.abc
import attrs
from starlette.websockets import WebSocket, WebSocketDisconnect

from asyncjobs.codec import dumps, event_to_wire, job_to_wire
from asyncjobs.errors import AsyncJobsError, JobNotFound, SubscriberOverflow, WaitTimeout
from asyncjobs.job import TERMINAL, EventType, Job, JobEvent, JobStatus

from .auth import CANCEL, READ, SUBMIT, Authenticator, Principal, require
from .errors import ApiError, error_payload
from .security import origin_allowed
from .wire import (
    check_job_id,
    check_unicode,
    invalid,
    parse_statuses,
    parse_submission,
    stats_to_wire,
)
from .workers import workers_to_wire

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

__all__ = ["STATE_LIMIT", "serve_websocket"]

#: Jobs in a ``queue_state`` unless the client asks for fewer (or more, up to 500).
STATE_LIMIT: Final = 100
#: WebSocket close codes (4000-4999 are the application's): like HTTP 401 and 403.
CLOSE_UNAUTHENTICATED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
#: Policy violation (RFC 6455): a browser connecting from a foreign origin.
CLOSE_POLICY: Final = 1008
#: The largest client message accepted, in characters.
MAX_MESSAGE: Final = 1_048_576


@attrs.frozen
class _Filters:
    job_id: str | None = None
    job_type: str | None = None
    statuses: frozenset[JobStatus] | None = None

    def match(self, job: Job) -> bool:
        return (
            (self.job_id is None or job.id == self.job_id)
            and (self.job_type is None or job.type == self.job_type)
            and (self.statuses is None or job.status in self.statuses)
        )

    def to_wire(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "job_type": self.job_type,
            "status": None if self.statuses is None else sorted(s.value for s in self.statuses),
        }


def _optional_string(message: Mapping[str, Any], key: str) -> str | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise invalid([{"loc": [key], "msg": "must be a non-empty string"}])
    return value


def _status_list(
    message: Mapping[str, Any], *, terminal_only: bool = False
) -> list[JobStatus] | None:
    value = message.get("status")
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise invalid([{"loc": ["status"], "msg": "must be a status or a list of statuses"}])
    return parse_statuses(value, loc=["status"], terminal_only=terminal_only)


@final
class _Connection:
    """One client: its principal, its event filters, and a lock so replies and
    events never interleave mid-frame."""

    def __init__(
        self,
        websocket: WebSocket,
        queue: Queue,
        principal: Principal | None,
        heartbeat: float,
        max_message: int,
    ) -> None:
        self.websocket = websocket
        self.queue = queue
        self.principal = principal
        self.heartbeat = heartbeat
        self.max_message = max_message
        self.owner = principal.isolated_owner if principal is not None else None
        self.filters = _Filters()
        self.lock = anyio.Lock()
        # Held while a queue_state is read and sent, and while an event is forwarded.
        self.state_lock = anyio.Lock()
        # Job id -> the version the client's last queue_state showed.
        self.shown: dict[str, int] = {}
        self.scope = anyio.CancelScope()
        self.handlers: dict[str, Callable[[Mapping[str, Any]], Awaitable[dict[str, Any]]]] = {
            "create_job": self.create_job,
            "cancel_job": self.cancel_job,
            "delete_job": self.delete_job,
            "clear_completed": self.clear_completed,
            "get_state": self.get_state,
            "subscribe": self.subscribe,
            "ping": self.ping,
        }

    async def send(self, message: Mapping[str, Any]) -> None:
        async with self.lock:
            try:
                await self.websocket.send_text(dumps(message))
            except (WebSocketDisconnect, RuntimeError):
                # The client left (Starlette raises RuntimeError once a close was sent):
                # stop every loop of this connection rather than fail a task group.
                self.scope.cancel()

    def visible(self, job: Job) -> bool:
        return self.owner is None or job.owner == self.owner

    async def allow(self, scope: str) -> None:
        if self.principal is not None and not self.principal.allows(scope):
            raise ApiError(403, "forbidden", f"this token lacks the {scope!r} scope")

    async def visible_job(self, job_id: Any) -> Job:
        if not isinstance(job_id, str) or not job_id:
            raise invalid([{"loc": ["job_id"], "msg": "required: a job id"}])
        job = await self.queue.get(check_job_id(job_id, ["job_id"]))
        if not self.visible(job):
            raise JobNotFound(job_id)
        return job

    # -- the loops ---------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until the client leaves; raise AsyncJobsError if the queue fails."""
        failure: list[AsyncJobsError] = []
        with self.scope:
            async with anyio.create_task_group() as tg:
                # queue_state goes out first, from the event pump once it is subscribed;
                # only then are client messages read.
                await tg.start(self.pump_events, failure)
                tg.start_soon(self.ping_loop)
                await self.receive_loop()
                tg.cancel_scope.cancel()
        if failure:
            raise failure[0]

    async def receive_loop(self) -> None:
        while True:
            message = await self.websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            if text is None:
                await self.send(
                    self.error(
                        None,
                        None,
                        ApiError(400, "malformed_message", "send JSON text frames, not binary"),
                    )
                )
                continue
            await self.handle(text)

    async def handle(self, text: str) -> None:
        op: str | None = None
        request_id: Any = None
        try:
            if len(text) > self.max_message:
                raise ApiError(
                    413,
                    "message_too_large",
                    f"messages are limited to {self.max_message} characters",
                )
            try:
                message = json.loads(text, parse_constant=_reject)
            except (ValueError, RecursionError) as exc:
                raise ApiError(
                    400, "malformed_json", f"the message is not valid JSON: {exc}"
                ) from None
            if not isinstance(message, dict):
                raise ApiError(400, "malformed_message", 'a message is a JSON object with a "type"')
            request_id = message.get("request_id")
            try:
                check_unicode(request_id)
            except ApiError:
                request_id = None  # it could not be echoed back
            check_unicode(message)
            kind = message.get("type")
            if kind == "pong":
                return  # the answer to our ping needs no reply
            handler = self.handlers.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise ApiError(
                    400,
                    "unknown_message",
                    f"unknown message type {kind!r}; use one of {sorted(self.handlers)}",
                )
            op = kind
            if kind == "get_state":
                await self.send_state(message, request_id)
                return
            reply = await handler(message)
        except (ApiError, AsyncJobsError) as exc:
            await self.send(self.error(op, request_id, exc))
            return
        reply.setdefault("type", "ack")
        if reply["type"] == "ack":
            reply["op"] = op
        reply["request_id"] = request_id
        await self.send(reply)

    def error(self, op: str | None, request_id: Any, exc: BaseException) -> dict[str, Any]:
        return {"type": "error", "op": op, "request_id": request_id, **error_payload(exc)}

    async def pump_events(
        self,
        failure: list[AsyncJobsError],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False
        while True:
            try:
                # Subscribe before reading the state: a job that ends while the state is
                # read is then in the buffer, and its final event is sent after the state
                # (events the state already shows are dropped by version).
                async with self.queue.subscribe(snapshot=False) as events:
                    await self.send_state({}, None, reply=False)
                    if not started:
                        started = True
                        task_status.started()
                    async for event in events:
                        async with self.state_lock:
                            await self.forward(event)
                return
            except SubscriberOverflow as exc:
                # This client fell behind: say so, send fresh state, and carry on.
                await self.send(self.error(None, None, exc))
            except AsyncJobsError as exc:  # the queue closed: end the connection
                failure.append(exc)
                if not started:
                    started = True
                    task_status.started()
                self.scope.cancel()
                return

    async def send_state(
        self, message: Mapping[str, Any], request_id: Any, *, reply: bool = True
    ) -> None:
        """Read and send ``queue_state``, with no event forwarded in between."""
        async with self.state_lock:
            state = await self.get_state(message)
            if reply:
                state["request_id"] = request_id
            self.shown = {job["id"]: job["version"] for job in state["jobs"]}
            await self.send(state)

    async def forward(self, event: JobEvent) -> None:
        job = event.job
        shown = self.shown.get(job.id)
        if event.type is EventType.DELETED or event.type.is_final:
            self.shown.pop(job.id, None)
        elif shown is not None:
            self.shown[job.id] = max(shown, job.version)
        if shown is not None and job.version <= shown and event.type is not EventType.DELETED:
            return  # the client's queue_state already holds this version or a newer one
        if self.visible(job) and self.filters.match(job):
            await self.send_text(_EVENT_FRAMES.encode(event))

    async def send_text(self, text: str) -> None:
        """Send a message already encoded as JSON text (an event frame shared by all)."""
        async with self.lock:
            try:
                await self.websocket.send_text(text)
            except (WebSocketDisconnect, RuntimeError):
                self.scope.cancel()  # the client left: as in send()

    async def ping_loop(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat)
            await self.send({"type": "ping"})

    # -- client messages ---------------------------------------------------------------

    async def create_job(self, message: Mapping[str, Any]) -> dict[str, Any]:
        await self.allow(SUBMIT)
        job_type, kwargs = parse_submission(
            message, type_key="job_type", ignore=frozenset({"type", "request_id"})
        )
        owner = self.principal.owner if self.principal is not None else None
        job = await self.queue.submit(job_type, owner=owner, **kwargs)
        return {"job": job_to_wire(job)}

    async def cancel_job(self, message: Mapping[str, Any]) -> dict[str, Any]:
        await self.allow(CANCEL)
        job = await self.visible_job(message.get("job_id"))
        return {"job": job_to_wire(await self.queue.cancel(job.id))}

    async def delete_job(self, message: Mapping[str, Any]) -> dict[str, Any]:
        await self.allow(CANCEL)
        job = await self.visible_job(message.get("job_id"))
        try:
            job = await self.queue.delete(job.id, wait=5.0)
        except WaitTimeout:
            return {"job": job_to_wire(await self.queue.get(job.id)), "deleted": False}
        return {"job": job_to_wire(job), "deleted": True}

    async def clear_completed(self, message: Mapping[str, Any]) -> dict[str, Any]:
        await self.allow(CANCEL)
        statuses = _status_list(message, terminal_only=True)
        if self.owner is None:
            return {"deleted": await self.queue.purge(status=statuses)}
        deleted = 0
        while True:
            page = await self.queue.list(
                status=statuses or list(TERMINAL), owner=self.owner, limit=500
            )
            if not page.jobs:
                return {"deleted": deleted}
            for job in page.jobs:
                try:
                    await self.queue.delete(job.id)
                except JobNotFound:
                    continue
                deleted += 1

    async def get_state(self, message: Mapping[str, Any]) -> dict[str, Any]:
        limit = message.get("limit", STATE_LIMIT)
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 500:
            raise invalid([{"loc": ["limit"], "msg": "must be an integer in [1, 500]"}])
        statuses = _status_list(message)
        job_type = _optional_string(message, "job_type")
        page = await self.queue.list(status=statuses, type=job_type, owner=self.owner, limit=limit)
        stats = stats_to_wire(await self.queue.stats())
        stats["concurrency"] = self.queue.concurrency
        stats["running_here"] = self.queue.running_count()
        return {
            "type": "queue_state",
            "jobs": [job_to_wire(j) for j in page.jobs],
            "next_cursor": page.next_cursor,
            "stats": stats,
            "job_types": self.queue.registry.describe(),
            "workers": workers_to_wire(await self.queue.workers()),
        }

    async def subscribe(self, message: Mapping[str, Any]) -> dict[str, Any]:
        statuses = _status_list(message)
        self.filters = _Filters(
            job_id=_optional_string(message, "job_id"),
            job_type=_optional_string(message, "job_type"),
            statuses=None if statuses is None else frozenset(statuses),
        )
        return {"filters": self.filters.to_wire()}

    async def ping(self, message: Mapping[str, Any]) -> dict[str, Any]:
        return {"type": "pong"}


@final
class _EventFrames:
    """Encodes each event's JSON text once, however many connections forward it.

    As the SSE ``FrameCache``: the bus hands one :class:`JobEvent` object to every
    subscriber, so frames are keyed by identity, and the entry holds the event so its
    id cannot be reused while the entry lives. Shared by every connection (of every
    app) in the process: K connections cost one encoding per event, not K.
    """

    __slots__ = ("_frames", "_size")

    def __init__(self, size: int = 1024) -> None:
        self._frames: OrderedDict[int, tuple[JobEvent, str]] = OrderedDict()
        self._size = size

    def encode(self, event: JobEvent) -> str:
        hit = self._frames.get(id(event))
        if hit is not None and hit[0] is event:
            return hit[1]
        text = dumps(event_to_wire(event))
        self._frames[id(event)] = (event, text)
        if len(self._frames) > self._size:
            self._frames.popitem(last=False)
        return text


_EVENT_FRAMES: Final = _EventFrames()


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


async def serve_websocket(
    websocket: WebSocket,
    queue: Queue,
    *,
    auth: Authenticator | None = None,
    heartbeat: float = 15.0,
    max_message: int = MAX_MESSAGE,
    allowed_origins: Iterable[str] = (),
) -> None:
    """Speak the asyncjobs WebSocket protocol on ``websocket`` until the client leaves.

    Refuses a browser from a foreign origin (an ``Origin`` header that is neither the
    app's own scheme, host and port nor in ``allowed_origins``: the handshake is
    answered 403, close code 1008). Accepts the connection, authenticates it (the
    ``read`` scope; a failure sends an ``error`` message and closes with code 4401 or
    4403), sends ``queue_state``, then streams events and answers client messages.

    Args:
        websocket: A Starlette (or FastAPI) WebSocket, not yet accepted.
        queue: The queue to expose; it must be open.
        auth: The authenticator, or ``None`` to allow everything.
        heartbeat: Seconds between server ``ping`` messages.
        max_message: The largest client message accepted, in characters.
        allowed_origins: Browser origins allowed besides the app's own.
    """
    if not origin_allowed(websocket.scope, allowed_origins):
        # Before accept: a cross-site page must not read the state or send commands.
        await websocket.close(code=CLOSE_POLICY, reason="origin not allowed")
        return
    await websocket.accept()
    try:
        principal = await require(auth, websocket.scope, READ)
    except ApiError as exc:
        await websocket.send_text(
            dumps({"type": "error", "op": None, "request_id": None, **error_payload(exc)})
        )
        code = CLOSE_UNAUTHENTICATED if exc.status == 401 else CLOSE_FORBIDDEN
        await websocket.close(code=code, reason=exc.code)
        return
    connection = _Connection(websocket, queue, principal, heartbeat, max_message)
    try:
        await connection.run()
    except WebSocketDisconnect:
        return
    except AsyncJobsError as exc:  # the queue is closed: tell the client why, then close
        await connection.send(connection.error(None, None, exc))
        await websocket.close(code=1011, reason=exc.code)
