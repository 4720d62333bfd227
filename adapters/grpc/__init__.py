"""The gRPC WorkerService (``asyncjobs.v1.WorkerService``): remote workers over gRPC.

Needs the ``grpc`` extra: ``pip install 'asyncjobs[grpc]'``. Same leases, fencing and
semantics as the HTTP ``/worker/*`` routes; the ``.proto`` ships beside this module
(``PROTO_PATH``) and server reflection is on.

    server = await start_grpc_server(queue, port=50051, auth=auth)
    ...
    await server.stop(grace=5)
"""

from __future__ import annotations

try:
    import grpc  # noqa: F401
    import grpc_reflection  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"asyncjobs.adapters.grpc needs grpcio ({exc}): pip install 'asyncjobs[grpc]'"
    ) from exc

from .service import PROTO_PATH, SERVICE_NAME, WorkerService, start_grpc_server

__all__ = ["PROTO_PATH", "SERVICE_NAME", "WorkerService", "start_grpc_server"]
