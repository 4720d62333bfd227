"""A gRPC client that knows nothing of asyncjobs but what server reflection tells it.

It builds its message classes from the server's descriptors (grpcio-reflection's
ProtoReflectionDescriptorDatabase), as grpcurl or a generic client in another language
would, and calls methods by their full names. Used by the gRPC tests and benchmark.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

SERVICE = "asyncjobs.v1.WorkerService"


class ReflectedClient:
    """Calls ``asyncjobs.v1.WorkerService`` with messages built from reflection."""

    def __init__(self, target: str, token: str | None = None) -> None:
        self.channel = grpc.insecure_channel(target)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        database = ProtoReflectionDescriptorDatabase(self.channel)
        self.services = list(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        self.service = pool.FindServiceByName(SERVICE)
        self._methods: dict[str, Any] = {}
        for method in self.service.methods:
            request = message_factory.GetMessageClass(method.input_type)
            reply = message_factory.GetMessageClass(method.output_type)
            self._methods[method.name] = (
                request,
                self.channel.unary_unary(
                    f"/{SERVICE}/{method.name}",
                    request_serializer=request.SerializeToString,
                    response_deserializer=reply.FromString,
                ),
            )

    def call(self, method: str, timeout: float = 30, **fields: Any) -> dict[str, Any]:
        """Call ``method`` with ``fields``; the reply as a dict (proto field names)."""
        request_class, stub = self._methods[method]
        reply = stub(request_class(**fields), metadata=self.metadata, timeout=timeout)
        return json_format.MessageToDict(
            reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )

    def close(self) -> None:
        self.channel.close()
