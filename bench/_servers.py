"""Server processes for benchmarks: ``python -m bench._servers KIND`` prints its port.

KIND is ``bare`` (a plain grpc.aio echo of the AgentNode Invoke messages, the
baseline), ``node`` (an aralnode with the demo capabilities, and any module named
after it), ``library`` (the library example's servicer on a plain grpc.aio server
with its generated stubs, no node: the peer of a node serving the same servicer),
or one of two references, not products: ``bare-signed`` (the echo plus the ES256
verify and sign a signed call needs on the server, and nothing else) and
``bare-envelope`` (the echo plus the envelope work an unsigned call needs: open the
request, checks and replay window included, and seal a response to it; no
pipeline, governance, validation or parameter decoding).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc

from aralnode import _proto as pb
from aralnode._runtime import tune_for_serving

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "examples" / "demo.py")
LIBRARY = str(ROOT / "examples" / "library" / "server.py")


async def _echo_server(invoke: Any, *, tuned: bool = False) -> None:
    """``tuned``: the process settings a node gets (references only; the bare
    baseline stays plain grpc.aio)."""
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        pb.AGENT_NODE_SERVICE_NAME,
        {
            "Invoke": grpc.unary_unary_rpc_method_handler(
                invoke,
                request_deserializer=pb.InvokeRequest.FromString,
                response_serializer=pb.InvokeResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if tuned:
        tune_for_serving()  # as the node process has, so a reference is not handicapped
    print(port, flush=True)
    await server.wait_for_termination()


# The bench client's and the signed echo's keys (deterministic test identities).
CLIENT_SEED, SERVER_SEED = 7, 8


async def bare_signed() -> None:
    """The bare echo plus exactly the server's share of a signed call's crypto:
    verify the request's signature, sign the response. The least any signed
    Invoke server does; the bench uses it to measure the ceiling of the ratio."""
    from aralnode.testing import fixed_identity

    client_key = fixed_identity(CLIENT_SEED).public_key
    me = fixed_identity(SERVER_SEED)

    async def invoke(request: Any, context: Any) -> Any:
        message = request.message
        raw = message.content
        client_key.verify(pb.PAYLOAD_MESSAGE, raw, message.signature)
        response = pb.InvokeResponse()
        response.message.content = raw
        response.message.signature.CopyFrom(me.sign(pb.PAYLOAD_MESSAGE, raw))
        return response

    await _echo_server(invoke, tuned=True)


async def bare_envelope() -> None:
    """The bare echo plus the server's envelope work for an unsigned call, done by
    the node's own core functions, and nothing else."""
    from aralnode.core.clock import SYSTEM_CLOCK
    from aralnode.core.envelope import RESPONSE, build_content, open_message, seal_into
    from aralnode.core.identity import KeyRing
    from aralnode.core.replay import ReplayGuard

    keyring, replay = KeyRing(), ReplayGuard(SYSTEM_CLOCK)

    async def invoke(request: Any, context: Any) -> Any:
        opened = open_message(
            request.message, keyring=keyring, replay=replay, require_signature=False
        )
        header, body = opened.header, opened.body
        content = build_content(
            sender="bare-envelope",
            recipient=header.sender,
            body=pb.Body(
                type=RESPONSE,
                action=body.action,
                result=body.parameters,
                correlation_id=header.message_id,
            ),
            clock=SYSTEM_CLOCK,
            content_type=header.content_type,
        )
        response = pb.InvokeResponse()
        seal_into(response.message, content, None)
        return response

    await _echo_server(invoke, tuned=True)


async def bare() -> None:
    async def invoke(request: Any, context: Any) -> Any:
        return pb.InvokeResponse(message=request.message)

    await _echo_server(invoke)


async def library() -> None:
    """The library's servicer as a user would serve it without a node: a plain
    grpc.aio server, the generated ``add_LibraryServicer_to_server``."""
    sys.path.insert(0, str(ROOT / "examples" / "library"))
    import library_pb2_grpc  # generated next to the example

    from aralnode._assembly import import_spec

    server = grpc.aio.server()
    library_pb2_grpc.add_LibraryServicer_to_server(import_spec(LIBRARY).Library(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


def recording_provider() -> Any:
    """A tracer provider that records every span and hands it to an exporter through
    the batch processor a node with ``tracing_otlp_endpoint`` uses, the exporter
    dropping what it gets: what recording and exporting cost, minus the network."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from aralnode._tracing import MAX_BATCH, MAX_QUEUE

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(
        BatchSpanProcessor(Dropped(), max_queue_size=MAX_QUEUE, max_export_batch_size=MAX_BATCH)
    )
    return provider


async def node(extra: list[str], tracer_provider: Any = None, **overrides: Any) -> None:
    """The node serving demo.echo (and ``extra`` specs); ``overrides``: config fields
    (``observed``: metrics and tracing on, over an HTTP port, which ``/metrics`` needs)."""
    from aralnode import Node, NodeConfig

    with tempfile.TemporaryDirectory() as tmp:
        n = Node(
            NodeConfig(
                **{
                    "name": "bench",
                    "host": "127.0.0.1",
                    "grpc_port": 0,
                    "http_port": None,
                    "discovery": "none",
                    "data_dir": Path(tmp),
                    "max_concurrent": 4096,
                    **overrides,
                }
            ),
            tracer_provider=tracer_provider,
        )
        n.load(DEMO)
        for spec in extra:
            n.load(spec)
        await n.start()
        tune_for_serving()  # as `aralnode run` does
        print(n.grpc_port, flush=True)
        await n.wait_closed()


def main() -> None:
    kind = sys.argv[1]
    with contextlib.suppress(KeyboardInterrupt):
        if kind == "bare":
            asyncio.run(bare())
        elif kind == "bare-signed":
            asyncio.run(bare_signed())
        elif kind == "bare-envelope":
            asyncio.run(bare_envelope())
        elif kind == "node":
            asyncio.run(node(sys.argv[2:]))
        elif kind == "node-off":  # bench/observed.py: metrics and tracing off ...
            asyncio.run(node([], http_port=0, metrics=False, tracing=False))
        elif kind == "node-observed":  # ... and on (no exporter)
            asyncio.run(node([], http_port=0, metrics=True, tracing=True))
        elif kind == "node-recorded":  # ... and on, every span recorded and exported
            provider = recording_provider()
            asyncio.run(node([], provider, http_port=0, metrics=True, tracing=True))
        elif kind == "library":
            asyncio.run(library())
        else:
            raise SystemExit(f"unknown server kind {kind!r}")


if __name__ == "__main__":
    main()
