"""WorkerService: the remote-worker protocol over grpc.aio.

Status codes: a lost lease is FAILED_PRECONDITION, bad input INVALID_ARGUMENT (an
unknown job type too), an unknown job NOT_FOUND, a missing or wrong token
UNAUTHENTICATED, a token without the ``worker`` scope PERMISSION_DENIED, a queue that is
not open UNAVAILABLE. The semantics are :class:`~asyncjobs.adapters.leases.LeaseGateway`'s.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn, TypeVar, final

import grpc
from grpc_reflection.v1alpha import reflection

from asyncjobs.codec import dumps, format_time, job_to_wire
from asyncjobs.errors import (
    ConfigurationError,
    JobNotFound,
    LeaseLost,
    UnknownJobType,
)
from asyncjobs.job import Job, JobError

from ..leases import MAX_CLAIM, MAX_LEASE, MAX_POLL, LeaseGateway, LeaseState
from . import worker_pb2 as pb
from . import worker_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from asyncjobs.queue import Queue

    from ..asgi.auth import Authenticator

__all__ = ["PROTO_PATH", "SERVICE_NAME", "WorkerService", "start_grpc_server"]

#: The service's full name, as reflection lists it.
SERVICE_NAME: Final = "asyncjobs.v1.WorkerService"
#: The ``.proto`` shipped in the package.
PROTO_PATH: Final = Path(__file__).with_name("worker.proto")
_MAX_STRING: Final = 256

T = TypeVar("T")
Context = Any  # grpc.aio.ServicerContext; grpcio ships no type information


def _bad(message: str) -> ValueError:
    return ValueError(message)


def _lease(value: float) -> float | None:
    if not math.isfinite(value) or value < 0 or value > MAX_LEASE:
        raise _bad(f"lease must be 0 (the default) or seconds in (0, {MAX_LEASE:g}]")
    return value or None


def _state(state: LeaseState) -> Any:
    return pb.LeaseReply(
        cancel_requested=state.cancel_requested,
        lease_expires_at=format_time(state.lease_expires_at),
    )


def _job(job: Job) -> Any:
    return pb.JobReply(job_json=dumps(job_to_wire(job)))


def _fenced(request: Any) -> tuple[str, str]:
    if not request.id or not request.token:
        raise _bad("id and token are required")
    return str(request.id), str(request.token)


@final
class WorkerService(pb_grpc.WorkerServiceServicer):  # type: ignore[misc]
    """The servicer; one per server.

    Args:
        queue: The (open) queue the workers draw from.
        auth: The same authenticator as the HTTP app (the token is read from the
            ``authorization`` metadata), or ``None`` to allow everyone.
        max_wait: The longest Claim long-poll, in seconds.
    """

    def __init__(
        self, queue: Queue, *, auth: Authenticator | None = None, max_wait: float = MAX_POLL
    ) -> None:
        self.gateway = LeaseGateway(queue, max_poll=max_wait)
        self.auth = auth

    async def _call(self, context: Context, action: Callable[[], Awaitable[T]]) -> T:
        await self._authorize(context)
        try:
            return await action()
        except LeaseLost as exc:
            await _abort(context, grpc.StatusCode.FAILED_PRECONDITION, f"lease_lost: {exc}")
        except JobNotFound as exc:
            await _abort(context, grpc.StatusCode.NOT_FOUND, str(exc))
        except (ValueError, UnknownJobType) as exc:  # InvalidParams etc. are ValueErrors
            await _abort(context, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except ConfigurationError as exc:
            await _abort(context, grpc.StatusCode.UNAVAILABLE, str(exc))

    async def _authorize(self, context: Context) -> None:
        if self.auth is None:
            return
        from ..asgi.auth import WORKER

        metadata = context.invocation_metadata() or ()
        headers = [
            (b"authorization", str(value).encode("latin-1", "replace"))
            for key, value in metadata
            if key == "authorization"
        ]
        # The authenticator reads an ASGI-like scope: give it the metadata as headers.
        scope = {
            "type": "http",
            "scheme": "grpc",
            "method": "POST",
            "path": "",
            "headers": headers[:1],
            "query_string": b"",
            "client": None,
        }
        principal = await self.auth(scope)
        if principal is None:
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "send 'authorization: Bearer <token>' metadata",
            )
        if not principal.allows(WORKER):
            await _abort(
                context, grpc.StatusCode.PERMISSION_DENIED, "this token lacks the 'worker' scope"
            )

    async def Claim(self, request: Any, context: Context) -> Any:
        async def action() -> Any:
            if not 0 < len(request.worker) <= _MAX_STRING:
                raise _bad("worker is required (1 to 256 characters)")
            if not 0 <= request.limit <= MAX_CLAIM:
                raise _bad(f"limit must be 0 (one job) to {MAX_CLAIM}")
            if not math.isfinite(request.wait) or request.wait < 0:
                raise _bad("wait must be zero or more seconds")
            claimed = await self.gateway.claim(
                request.worker,
                types=list(request.types) or None,
                limit=request.limit or 1,
                wait=request.wait,
                lease=_lease(request.lease),
            )
            return pb.ClaimReply(
                jobs=[
                    pb.ClaimedJob(
                        id=c.job.id,
                        type=c.job.type,
                        params_json=dumps(c.job.params),
                        token=c.token,
                        attempt=c.job.attempts,
                        lease_expires_at=format_time(c.lease_expires_at),
                    )
                    for c in claimed
                ]
            )

        return await self._call(context, action)

    async def Heartbeat(self, request: Any, context: Context) -> Any:
        async def action() -> Any:
            job_id, token = _fenced(request)
            return _state(await self.gateway.heartbeat(job_id, token, lease=_lease(request.lease)))

        return await self._call(context, action)

    async def Progress(self, request: Any, context: Context) -> Any:
        async def action() -> Any:
            job_id, token = _fenced(request)
            if not 0.0 <= request.progress <= 1.0:
                raise _bad("progress must be a number in [0, 1]")
            state = await self.gateway.progress(
                job_id,
                token,
                request.progress,
                request.message or None,
                lease=_lease(request.lease),
            )
            return _state(state)

        return await self._call(context, action)

    async def Complete(self, request: Any, context: Context) -> Any:
        async def action() -> Any:
            job_id, token = _fenced(request)
            try:
                result = json.loads(request.result_json) if request.result_json else None
            except ValueError:
                raise _bad("result_json is not valid JSON") from None
            return _job(await self.gateway.complete(job_id, token, result))

        return await self._call(context, action)

    async def Fail(self, request: Any, context: Context) -> Any:
        async def action() -> Any:
            job_id, token = _fenced(request)
            if not 0 < len(request.error_type) <= _MAX_STRING:
                raise _bad("error_type is required (1 to 256 characters)")
            error = JobError(
                type=request.error_type,
                message=request.error_message,
                traceback=request.traceback or None,
            )
            job = await self.gateway.fail(job_id, token, error, retry=not request.final)
            return _job(job)

        return await self._call(context, action)

    async def Release(self, request: Any, context: Context) -> Any:
        async def action() -> Any:
            job_id, token = _fenced(request)
            return _job(await self.gateway.release(job_id, token))

        return await self._call(context, action)


async def _abort(context: Context, code: grpc.StatusCode, message: str) -> NoReturn:
    await context.abort(code, message)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def start_grpc_server(
    queue: Queue,
    *,
    host: str = "127.0.0.1",
    port: int = 50051,
    auth: Authenticator | None = None,
    max_wait: float = MAX_POLL,
) -> grpc.aio.Server:
    """Start a grpc.aio server with the WorkerService and server reflection.

    Returns the started server; stop it with ``await server.stop(grace)``.

    Raises:
        RuntimeError: the port could not be bound.
    """
    server = grpc.aio.server()
    pb_grpc.add_WorkerServiceServicer_to_server(
        WorkerService(queue, auth=auth, max_wait=max_wait), server
    )
    names = (SERVICE_NAME, reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if server.add_insecure_port(address) == 0:
        raise RuntimeError(f"cannot listen for gRPC on {address}")
    await server.start()
    return server
