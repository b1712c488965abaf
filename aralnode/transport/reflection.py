"""Server reflection under both of its names: ``grpc.reflection.v1`` (the released
one, which grpcurl, buf curl and grpc-go's clients ask for first) and
``grpc.reflection.v1alpha`` (what older clients know).

grpcio-reflection implements v1alpha only. v1's messages are v1alpha's field for
field (same numbers, same types), so one servicer answers both on the wire. So that
the v1 service the node lists can also be described, v1's file
(``grpc/reflection/v1/reflection.proto``: v1alpha's under v1's names) is added to
the default descriptor pool, where the servicer looks symbols up.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2

from aralnode._logs import get_logger
from aralnode.transport.quota import StreamQuota
from aralnode.transport.standard import Gate, standard_handler

log = get_logger("aralnode.grpc")

REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]
V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE = f"{V1_PACKAGE}.ServerReflection"
#: Both names, the released one first.
SERVICES = (V1_SERVICE, REFLECTION.full_name)


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """``grpc/reflection/v1/reflection.proto`` as grpc-proto publishes it: v1alpha's
    messages and service under v1's package, file name and options."""
    file = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(file)
    alpha = f".{file.package}."

    def renamed(type_name: str) -> str:
        return f".{V1_PACKAGE}.{type_name.removeprefix(alpha)}"

    file.name, file.package = V1_FILE, V1_PACKAGE
    file.options.Clear()  # (v1alpha's are deprecated, and name v1alpha's packages)
    file.options.go_package = "google.golang.org/grpc/reflection/grpc_reflection_v1"
    file.options.java_package = "io.grpc.reflection.v1"
    file.options.java_outer_classname = "ServerReflectionProto"
    file.options.java_multiple_files = True
    for message in file.message_type:
        for field in message.field:
            if field.HasField("type_name"):  # (a scalar has none, not an empty one)
                field.type_name = renamed(field.type_name)
    for service in file.service:
        for method in service.method:
            method.input_type = renamed(method.input_type)
            method.output_type = renamed(method.output_type)
    return file


def ensure_v1_file(pool: descriptor_pool.DescriptorPool | None = None) -> bool:
    """Add v1's file to ``pool`` (the default one) unless it is there; whether the
    pool can describe ``grpc.reflection.v1`` afterwards. A pool that already holds
    v1's symbols under another file name keeps them (logged): v1 is still served,
    only described by that file."""
    pool = pool or descriptor_pool.Default()
    try:
        pool.FindServiceByName(V1_SERVICE)
        return True
    except KeyError:
        pass
    try:
        pool.Add(v1_file())
    except (TypeError, ValueError) as exc:  # a conflicting definition of a v1 symbol
        log.warning("reflection: cannot describe %s: %s", V1_SERVICE, exc)
        return False
    return True


def reflection_handlers(
    services: list[str],
    *,
    gate_for: Callable[[str], Gate] | None = None,
    streams: StreamQuota | None = None,
) -> list[grpc.GenericRpcHandler[object, object]]:
    """Reflection under both names, listing ``services`` and the two reflection
    services; ``gate_for(name)`` (if given) is the gate before each call of ``name``."""
    ensure_v1_file()
    # grpc-stubs 1.53 does not know the asyncio servicer grpcio-reflection ships.
    servicer = reflection.aio.ReflectionServicer([*services, *SERVICES])  # type: ignore[attr-defined]
    return [
        standard_handler(
            REFLECTION,
            servicer,
            gate=None if gate_for is None else gate_for(name),
            streams=streams,
            name=name,
        )
        for name in SERVICES
    ]


__all__ = [
    "REFLECTION",
    "SERVICES",
    "V1_FILE",
    "V1_SERVICE",
    "ensure_v1_file",
    "reflection_handlers",
    "v1_file",
]
