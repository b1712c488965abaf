"""Secrets do not leave through errors (attack report F5).

With a ``[post]`` section, an error passes through the same sensitive-data detectors
as a result before the pipeline records and raises it: its message (a servicer's
status details are its message), its details and its reason. Every door encodes
the error the pipeline raised, so each sends it redacted, and its audit record
keeps no secret either. An error cannot wait for an approver: it is redacted
whatever the tier says, unless that is ``ok``. Each door is read here as raw as its
client gives it (a body, a frame, a status and its trailers), so a secret anywhere
in what it sent would be seen.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from mcp import Client
from websockets.asyncio.client import connect

from aralnode import AralError, CallContext, Node
from aralnode import _proto as pb
from aralnode.bridge.mcp import tool_name
from aralnode.core.capabilities import CapabilityRegistry, function_capability
from aralnode.core.clock import SystemClock
from aralnode.core.context import Credentials
from aralnode.core.errors import NotFound, Unauthenticated
from aralnode.core.governance import Action, Direction
from aralnode.policy.post import PostPolicy, SensitiveData
from aralnode.service.auth import Authenticated
from aralnode.service.pipeline import Pipeline
from aralnode.service.stages import Stages
from aralnode.store.audit import read_records
from tests.channel_helpers import FAST, linked
from tests.interop.aral_client import AralClient
from tests.test_parity import GET, Doors, open_doors
from tests.test_servicers import GrpcStyleLibrary, lib

AWS = "AKIAIOSFODNN7EXAMPLE"
GH = "ghp_" + "a" * 36
LEAK = "vault.leak"
SECRETS = (AWS, GH, "hunter2-hunter2")


async def leak(name: str) -> dict[str, Any]:
    raise NotFound(
        f"no entry {name}; the master key is {AWS}",
        reason=AWS,  # a reason a handler chose: UPPER_SNAKE, and a secret
        details={"hint": GH, "db_password": "hunter2-hunter2", "entry": name},
    )


def policy(tmp_path: Path, post: str = 'sensitive = { "0-5" = "redact" }') -> Path:
    path = tmp_path / "f5.toml"
    path.write_text(f"version = 1\n[post]\n{post}\n")
    return path


# -- each door's answer, as its client got it ------------------------------------------


async def grpc_invoke(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    invoke = doors.grpc.unary_unary(
        "/aral.v1.AgentNode/Invoke",
        request_serializer=pb.InvokeRequest.SerializeToString,
        response_deserializer=pb.InvokeResponse.FromString,
    )
    request = pb.InvokeRequest(call=pb.Call(capability=capability))
    request.call.parameters.update(params)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await invoke(request, timeout=10)
    return _status(err.value)


async def grpc_method(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    service, method_name = capability.split("/")
    method = lib.DESCRIPTOR.services_by_name[service.split(".")[-1]].methods_by_name[method_name]
    request_cls = GetMessageClass(method.input_type)
    rpc = doors.grpc.unary_unary(
        f"/{capability}",
        request_serializer=request_cls.SerializeToString,
        response_deserializer=GetMessageClass(method.output_type).FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rpc(json_format.ParseDict(params, request_cls()), timeout=10)
    return _status(err.value)


def _status(err: grpc.aio.AioRpcError) -> str:
    """The status's details and every trailer (the rich status, ErrorInfo within)."""
    metadata: Any = err.trailing_metadata() or ()
    trailers = [(k, v.decode("latin-1") if isinstance(v, bytes) else v) for k, v in metadata]
    return f"{err.code().name} {err.details()} {trailers}"


async def rest_invoke(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    body = {"call": {"capability": capability, "parameters": params}}
    r = await doors.http.post("/v1/invoke", json=body)
    assert r.status_code == 404, r.text
    return r.text


async def rest_route(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    r = await doors.http.get(f"/v1/shelves/{params['shelf']}/books/{params['bookId']}")
    assert r.status_code >= 400, r.text
    return r.text


async def aral_invoke(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    path = f"/api/v1/agents/{doors.node.node_id}/invoke"
    r = await doors.http.post(path, json={"capability": capability, "parameters": params})
    assert r.status_code == 404, r.text
    return r.text


async def aral_message(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    reply = await AralClient(doors.http).send(doors.node.node_id, capability, params)
    assert "error" in reply.message["body"], reply
    return json.dumps(reply.message)


async def mcp(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    result = await doors.mcp.call_tool(tool_name(capability), params)
    assert result.is_error
    return json.dumps([c.model_dump() for c in result.content])


async def ws(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    async with connect(f"ws://127.0.0.1:{doors.node.http_port}/ws") as socket:
        message = {"type": "invoke", "id": 1, "capability": capability, "parameters": params}
        await socket.send(json.dumps(message))
        reply = str(await socket.recv())
    assert json.loads(reply)["type"] == "error", reply
    return reply


async def channel(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    with pytest.raises(AralError) as err:
        await doors.peer.request(doors.node.node_id, capability, params)
    return _error(err.value)


async def a2a(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    from a2a.client import ClientConfig, create_client
    from a2a.helpers.proto_helpers import new_data_part
    from a2a.types import a2a_pb2

    config = ClientConfig(streaming=False, supported_protocol_bindings=["JSONRPC"])
    client = await create_client(f"http://127.0.0.1:{doors.node.http_port}", config)
    message = a2a_pb2.Message(message_id="f5", role=a2a_pb2.Role.ROLE_USER)
    message.parts.append(new_data_part({"skill": capability, "parameters": params}))
    try:
        got = [e async for e in client.send_message(a2a_pb2.SendMessageRequest(message=message))]
    finally:
        await client.close()
    task = got[-1].task
    assert task.status.state != a2a_pb2.TaskState.TASK_STATE_COMPLETED
    return json_format.MessageToJson(task)


async def local(doors: Doors, capability: str, params: dict[str, Any]) -> str:
    with pytest.raises(AralError) as err:
        await doors.node.invoke(capability, params, ctx=CallContext(door="local", caller="app"))
    return _error(err.value)


def _error(err: AralError) -> str:
    return f"{err!s} {err!r} {err.reason} {json.dumps(err.details)}"


DOORS: dict[str, Callable[[Doors, str, dict[str, Any]], Any]] = {
    "grpc-invoke": grpc_invoke, "rest-invoke": rest_invoke, "aral-invoke": aral_invoke,
    "aral-message": aral_message, "mcp": mcp, "ws": ws, "channel": channel, "a2a": a2a,
    "local": local,
}  # fmt: skip


def assert_redacted(answers: dict[str, str], *marks: str) -> None:
    for door, text in answers.items():
        for secret in SECRETS:
            assert secret not in text, (door, text)
        for mark in marks:  # the error still says what it said, redacted
            assert mark in text, (door, mark, text)


# -- a capability's error --------------------------------------------------------------


async def test_an_error_leaves_redacted_on_every_door(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with open_doors(make_node, policy_file=policy(tmp_path), audit=True) as doors:
        doors.node.capability(id=LEAK)(leak)
        answers = {name: await call(doors, LEAK, {"name": "x"}) for name, call in DOORS.items()}
        node = doors.node
    assert_redacted(answers, "[REDACTED:aws_access_key]")
    for door in ("rest-invoke", "aral-invoke", "mcp", "ws", "local", "channel", "grpc-invoke"):
        assert "[REDACTED:github_token]" in answers[door], door  # the details: scanned too
        assert "[REDACTED:password]" in answers[door], door
    # The record of each keeps no secret: the reason is the error's own, the flags say
    # what was redacted (the message and details are not recorded).
    records = [r for _, r in read_records(node.config.resolved_data_dir / "audit")
               if r.action == LEAK]  # fmt: skip
    assert len(records) >= len(DOORS), records
    for record in records:
        assert (record.outcome, record.reason) == ("not_found", "NOT_FOUND"), record
        assert "post.redacted:aws_access_key" in record.flags, record
        assert not any(s in json.dumps(record._asdict()) for s in SECRETS), record


async def test_without_a_post_section_an_error_is_left_as_it_is(
    make_node: Callable[..., Node],
) -> None:
    """No detector configured: nothing is scanned (no cost, no change)."""
    node = make_node("no-post")
    node.capability(id=LEAK)(leak)
    async with node:
        with pytest.raises(NotFound) as err:
            await node.invoke(LEAK, {"name": "x"}, ctx=CallContext(door="local", caller="a"))
    assert AWS in err.value.message
    assert (err.value.reason, err.value.details["hint"]) == (AWS, GH)


async def test_a_tier_whose_action_is_ok_sees_the_error_as_it_is(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text(
        "version = 1\n[tiers]\ndefault = 1\nprincipals = { ops = 5 }\n"
        '[post]\nsensitive = { "0-4" = "escalate", "5" = "ok" }\n'
    )
    node = make_node("tiered", policy_file=path)
    node.capability(id=LEAK)(leak)
    async with node:
        seen = {}
        for caller in ("ops", "alice"):
            with pytest.raises(NotFound) as err:
                await node.invoke(LEAK, {"name": "x"}, ctx=CallContext(door="local", caller=caller))
            seen[caller] = err.value
    assert AWS in seen["ops"].message  # the policy lets tier 5 see sensitive data
    # Escalate for a result; an error cannot wait for an approver: redacted.
    assert AWS not in seen["alice"].message
    assert "[REDACTED:aws_access_key]" in seen["alice"].message


# -- a servicer's status ---------------------------------------------------------------


class LeakyLibrary(GrpcStyleLibrary):
    """A grpc.aio servicer whose status carries a secret: an ``abort`` with it, or an
    exception raised after ``set_code`` (whose text grpc.aio makes the details)."""

    async def GetBook(self, request: Any, context: Any) -> Any:
        if request.shelf == "abort":
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no book; key {AWS}")
        if request.shelf == "raise-after-set-code":
            context.set_code(grpc.StatusCode.PERMISSION_DENIED)
            raise LookupError(f"a private shelf, token {GH}")
        if request.shelf in ("trailers", "abort-trailers"):  # secrets in its own trailers
            trailers = (("x-api-key", "k-12345"), ("x-note", f"key {AWS}"),
                        ("x-token-bin", GH.encode()), (f"x-{GH}", "named"),
                        ("x-shelf", "top"))  # fmt: skip
            if request.shelf == "abort-trailers":
                await context.abort(grpc.StatusCode.NOT_FOUND, "no book", trailers)
            context.set_trailing_metadata(trailers)
            return lib.Book(shelf=request.shelf, title="with trailers")
        return await super().GetBook(request, context)

    async def WatchShelf(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield lib.Book(shelf=request.shelf, title="first")
        await context.abort(grpc.StatusCode.ABORTED, f"the shelf moved; key {AWS}")


@contextlib.asynccontextmanager
async def servicer_doors(make_node: Callable[..., Node], path: Path) -> AsyncIterator[Doors]:
    node = make_node("f5-servicer", http_port=0, policy_file=path, **FAST)
    node.add_service(LeakyLibrary(), lib)
    peer = make_node("f5-servicer-peer", demo=False, **FAST)
    async with node, peer:
        await linked(peer, node)
        base = f"http://127.0.0.1:{node.http_port}"
        async with (
            grpc.aio.insecure_channel(node.address) as grpc_channel,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
            Client(f"{base}/mcp") as mcp_client,
        ):
            yield Doors(node, peer, grpc_channel, http, mcp_client)


@pytest.mark.parametrize(
    ("shelf", "mark"),
    [("abort", "[REDACTED:aws_access_key]"), ("raise-after-set-code", "[REDACTED:github_token]")],
)
async def test_a_servicer_status_leaves_redacted_on_every_door(
    make_node: Callable[..., Node], tmp_path: Path, shelf: str, mark: str
) -> None:
    params = {"shelf": shelf, "bookId": "7"}
    doors_of = {"grpc-method": grpc_method, "rest-route": rest_route, "mcp": mcp, "ws": ws,
                "channel": channel, "local": local}  # fmt: skip
    async with servicer_doors(make_node, policy(tmp_path)) as doors:
        answers = {name: await call(doors, GET, params) for name, call in doors_of.items()}
    assert_redacted(answers, mark)


async def test_a_servicers_own_trailers_leave_redacted(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    """From a re-read of the left-open list: the trailing metadata a servicer set
    itself left as it was, beside an answer or on its own status. A secret's name
    (``x-api-key``) or a detector's match in a text value is redacted; a binary value
    with one in it, or a pair whose name holds one, is dropped (a replacement would
    corrupt it); the rest stands."""
    node = make_node("f5-trailers", policy_file=policy(tmp_path))
    node.add_service(LeakyLibrary(), lib)
    async with node, grpc.aio.insecure_channel(node.address) as channel:
        get = channel.unary_unary(
            "/library.v1.Library/GetBook",
            request_serializer=lib.GetBookRequest.SerializeToString,
            response_deserializer=lib.Book.FromString,
        )
        call = get(lib.GetBookRequest(shelf="trailers", book_id=7), timeout=10)
        assert (await call).title == "with trailers"
        answered = list(await call.trailing_metadata() or ())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await get(lib.GetBookRequest(shelf="abort-trailers", book_id=7), timeout=10)
    refused = list(err.value.trailing_metadata() or ())
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    for trailers in (answered, refused):
        seen = dict(trailers)
        assert seen["x-shelf"] == "top"
        assert seen["x-note"] == "key [REDACTED:aws_access_key]"
        assert seen["x-api-key"].startswith("[REDACTED:")
        assert "x-token-bin" not in seen
        assert len(seen) == 3  # x-api-key, x-note, x-shelf
        assert_redacted({"trailers": str(trailers)}, "[REDACTED:")


async def test_a_stream_that_fails_after_an_item_leaves_redacted(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    async with servicer_doors(make_node, policy(tmp_path)) as doors:
        watch = doors.grpc.unary_stream(
            "/library.v1.Library/WatchShelf",
            request_serializer=lib.WatchShelfRequest.SerializeToString,
            response_deserializer=lib.Book.FromString,
        )
        items: list[str] = []

        async def read() -> None:
            async for item in watch(lib.WatchShelfRequest(shelf="sci"), timeout=10):
                items.append(item.title)  # noqa: PERF401 - each as it comes: an error follows

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await read()
    assert items == ["first"]
    assert_redacted({"grpc-stream": _status(err.value)}, "[REDACTED:aws_access_key]")


# -- every kind of call, in the pipeline -----------------------------------------------


class EchoingAuthenticator:
    """One that quotes the credential it refuses (as careless ones do)."""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        raise Unauthenticated(f"unknown key {AWS}", details={"api_key": "k-12345"})


def _pipeline(post: PostPolicy | None, **stages: Any) -> tuple[Pipeline, CapabilityRegistry]:
    registry = CapabilityRegistry()
    registry.add(function_capability(leak, id=LEAK))
    checks = stages.pop("checks", None) or [SensitiveData(lambda: post, lambda _: 0)]
    pipeline = Pipeline(registry, Stages.default(checks=checks, **stages), SystemClock())
    return pipeline, registry


def test_a_message_refused_leaves_redacted() -> None:
    """``judge_message``: a notification refused by a stage (here an authenticator
    that quotes the key it refuses)."""
    pipeline, _ = _pipeline(PostPolicy(), authenticator=EchoingAuthenticator())
    ctx = CallContext(door="channel", credentials=Credentials())
    with pytest.raises(Unauthenticated) as err:
        pipeline.judge_message(ctx, "note", {"n": 1}, direction=Direction.RECEIVE)
    assert (err.value.message, err.value.details) == (
        "unknown key [REDACTED:aws_access_key]",
        {"api_key": "[REDACTED:api_key]"},
    )
    assert {"post.redacted:aws_access_key", "post.redacted:api_key"} <= set(ctx.flags)


async def test_a_stream_that_fails_leaves_redacted() -> None:
    """``stream``: an item, then the error."""
    pipeline, _ = _pipeline(PostPolicy())

    async def start(_: Any) -> AsyncIterator[int]:
        yield 1
        raise NotFound(f"gone; key {AWS}", details={"hint": GH})

    ctx = CallContext(door="local", credentials=Credentials(local=True))
    items: list[int] = []

    async def read() -> None:
        async for item in pipeline.stream(ctx, "demo.watch", {}, start):
            items.append(item)  # noqa: PERF401 - each as it comes: an error follows

    with pytest.raises(NotFound) as err:
        await read()
    assert items == [1]
    assert (err.value.message, err.value.details) == (
        "gone; key [REDACTED:aws_access_key]",
        {"hint": "[REDACTED:github_token]"},
    )


async def test_a_scrubber_that_breaks_leaves_nothing_of_the_error() -> None:
    class Broken(SensitiveData):
        def scrub(self, ctx: CallContext, error: AralError, action: Callable[[], Action]) -> None:
            raise RuntimeError("broken")

    pipeline, _ = _pipeline(None, checks=[Broken(PostPolicy, lambda _: 0)])
    ctx = CallContext(door="local", credentials=Credentials(local=True))
    with pytest.raises(NotFound) as err:
        await pipeline.invoke(ctx, LEAK, {"name": "x"})
    assert err.value.message == "the error could not be checked for sensitive data"
    assert (err.value.reason, err.value.details) == ("NOT_FOUND", {})
