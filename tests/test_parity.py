"""One scenario over every door: the same call gives the same answer, the same refusal.

Doors, each driven by a client nobody here wrote where there is one:

- ``grpc-invoke``: ``aral.v1.AgentNode/Invoke`` with a plain call (grpcio);
- ``grpc-method``: the user's own rpc, ``library.v1.Library/<Method>`` (grpcio);
- ``rest-route``: the method's ``google.api.http`` route (httpx);
- ``rest-invoke``: ``POST /v1/invoke`` (httpx);
- ``mcp``: the capability's tool (the official ``mcp`` client, streamable HTTP);
- ``ws``: ``{"type": "invoke"}`` on ``/ws`` (websockets);
- ``channel``: a request from a verified peer over the A2A channel;
- ``a2a``: an A2A ``SendMessage`` naming the capability as its skill (the official
  ``a2a-sdk`` client, JSON-RPC);
- ``aral-invoke``: the ARAL REST surface's ``POST /api/v1/agents/{id}/invoke`` (httpx);
- ``aral-message``: a signed ARALMessage posted to ``/api/v1/agents/{id}/messages``
  by the independent client of ``tests/interop`` (jwcrypto), its signed answer read;
- ``local``: ``Node.invoke`` with a context the program made (no scopes).

Cases: a result (identical JSON on every door: integers stay integers), a
governance block, a missing scope, a capability that is not there. Every door
answers in its own language (a gRPC status, an HTTP status, an MCP error result,
a WebSocket error frame, an ``AralError``); each is read back into one shape and
compared. Later features extend ``CASES`` and ``DOORS`` rather than write new ones.
The doors that take signed messages (``grpc-invoke``, ``aral-message``, ``channel``)
also refuse forged and replayed ones alike, before any stage runs:
``tests/test_parity_signed.py``, which writes to them as a peer would.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from mcp import Client
from mcp.shared.exceptions import MCPError
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from aralnode import AralError, CallContext, Node, NodeClient
from aralnode import _proto as pb
from aralnode._assembly import import_spec
from aralnode.bridge.mcp import tool_name
from aralnode.core import codec
from aralnode.core.context import Credentials
from aralnode.core.governance import Decision, Rule, RuleEvaluator
from aralnode.service.auth import Authenticated
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify
from tests.channel_helpers import FAST, linked
from tests.interop.aral_client import AralClient
from tests.test_hostile_mcp import ACCEPT
from tests.test_jwt import guarded
from tests.test_sessions import keys_for, on, open_session

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "examples" / "library" / "server.py"
GET = "library.v1.Library/GetBook"
DELETE = "library.v1.Library/DeleteBook"
SEARCH = "library.v1.Library/Search"
GONE = "library.v1.Library/GetTitle"  # served, then taken out of the registry


@dataclass(frozen=True)
class Outcome:
    """What a door answered, read back: a result, or a refusal's status and reason
    (``reason`` is "" where the door's language has none)."""

    value: Any = None
    status: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.status


HTTP_STATUS = {403: "PERMISSION_DENIED", 404: "NOT_FOUND", 401: "UNAUTHENTICATED"}
ERROR_CODES = {"forbidden": "PERMISSION_DENIED", "governance_blocked": "PERMISSION_DENIED"}
ERROR_CODES |= {"not_found": "NOT_FOUND", "unauthorized": "UNAUTHENTICATED"}


def from_body(error: dict[str, Any]) -> Outcome:
    """The seed's error object (REST, MCP, WebSocket) as an outcome."""
    return Outcome(status=ERROR_CODES.get(error["code"], error["code"]), reason=error["reason"])


class Door(Protocol):
    name: str

    def can_call(self, capability: str) -> bool: ...

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome: ...


@dataclass
class Doors:
    node: Node
    peer: Node
    grpc: grpc.aio.Channel
    http: httpx.AsyncClient
    mcp: Client

    def all(self) -> list[Door]:
        return [
            GrpcInvoke(self.grpc),
            GrpcMethod(self.node, self.grpc),
            RestRoute(self.http),
            RestInvoke(self.http),
            Mcp(self.mcp),
            WebSocket(self.node),
            Channel(self.peer, self.node),
            A2A(self.node),
            AralInvoke(self.node, self.http),
            AralMessage(self.node, self.http),
            Local(self.node),
        ]


def grpc_outcome(err: grpc.aio.AioRpcError) -> Outcome:
    status = rpc_status.from_call(err)
    reason = ""
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
    return Outcome(status=err.code().name, reason=reason)


class GrpcInvoke:
    name = "grpc-invoke"

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.invoke = channel.unary_unary(
            "/aral.v1.AgentNode/Invoke",
            request_serializer=pb.InvokeRequest.SerializeToString,
            response_deserializer=pb.InvokeResponse.FromString,
        )

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        request = pb.InvokeRequest(call=pb.Call(capability=capability))
        request.call.parameters.update(params)
        try:
            response = await self.invoke(request, timeout=10)
        except grpc.aio.AioRpcError as err:
            return grpc_outcome(err)
        return Outcome(codec.from_value(response.result.result))


class GrpcMethod:
    name = "grpc-method"

    def __init__(self, node: Node, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self.methods = {
            f"{s.full_name}/{m.name}": m
            for s in (p.descriptor for p in node._services)
            for m in s.methods
        }

    def can_call(self, capability: str) -> bool:
        return capability in self.methods

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        method = self.methods[capability]
        request_cls = GetMessageClass(method.input_type)
        rpc = self.channel.unary_unary(
            f"/{capability}",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=GetMessageClass(method.output_type).FromString,
        )
        try:
            response = await rpc(json_format.ParseDict(params, request_cls()), timeout=10)
        except grpc.aio.AioRpcError as err:
            return grpc_outcome(err)
        return Outcome(json_format.MessageToDict(response))


class RestRoute:
    """The route each method's ``google.api.http`` rule gives (or its default)."""

    name = "rest-route"
    ROUTES: ClassVar[dict[str, tuple[str, Callable[[dict[str, Any]], str]]]] = {
        GET: ("GET", lambda p: f"/v1/shelves/{p['shelf']}/books/{p['bookId']}"),
        DELETE: ("DELETE", lambda p: f"/v1/shelves/{p['shelf']}/books/{p['bookId']}"),
        GONE: ("GET", lambda p: f"/v1/shelves/{p['shelf']}/books/{p['bookId']}/title"),
        SEARCH: ("POST", lambda p: "/library.v1.Library/Search"),
    }

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    def can_call(self, capability: str) -> bool:
        return capability in self.ROUTES

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        verb, path = self.ROUTES[capability]
        body = params if verb == "POST" else None
        r = await self.http.request(verb, path(params), json=body)
        if r.status_code != 200:
            return Outcome(status=HTTP_STATUS[r.status_code], reason=r.json()["error"]["reason"])
        return Outcome(r.json())


class RestInvoke:
    name = "rest-invoke"

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        body = {"call": {"capability": capability, "parameters": params}}
        r = await self.http.post("/v1/invoke", json=body)
        if r.status_code != 200:
            return Outcome(status=HTTP_STATUS[r.status_code], reason=r.json()["error"]["reason"])
        return Outcome(r.json()["result"]["result"])


class Mcp:
    name = "mcp"

    def __init__(self, client: Client) -> None:
        self.client = client

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        try:
            result = await self.client.call_tool(tool_name(capability), params)
        except MCPError as exc:  # a tool that is not there is a protocol error in MCP
            if exc.error.code == -32602 and "unknown tool" in exc.error.message:
                return Outcome(status="NOT_FOUND")
            data = exc.error.data
            if isinstance(data, dict) and "reason" in data:  # refused at /mcp: the seed's error
                return from_body(data)
            raise
        body = json.loads(result.content[0].text)
        if result.is_error:
            return from_body(body["error"])
        assert result.structured_content in (None, body)
        return Outcome(body)


class WebSocket:
    name = "ws"

    def __init__(self, node: Node) -> None:
        self.url = f"ws://127.0.0.1:{node.http_port}/ws"

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        try:
            async with connect(self.url) as ws:
                message = {
                    "type": "invoke",
                    "id": 1,
                    "capability": capability,
                    "parameters": params,
                }
                await ws.send(json.dumps(message))
                reply = json.loads(await ws.recv())
        except InvalidStatus as refused:  # a caller holding no scope gets no socket
            status = HTTP_STATUS[refused.response.status_code]
            return Outcome(
                status=status, reason=json.loads(refused.response.body)["error"]["reason"]
            )
        assert reply["id"] == 1
        if reply["type"] == "error":
            return from_body(reply["error"])
        return Outcome(reply["result"])


class Channel:
    name = "channel"

    def __init__(self, peer: Node, node: Node) -> None:
        self.peer, self.node = peer, node

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        try:
            return Outcome(await self.peer.request(self.node.node_id, capability, params))
        except AralError as exc:
            return Outcome(status=exc.status.name, reason=exc.reason)


class A2A:
    """A2A ``SendMessage`` over JSON-RPC with the official a2a-sdk client: a
    COMPLETED task's artifact, or a REJECTED task's code and reason. (Its data parts
    are ``google.protobuf.Value``: numbers travel as doubles, by the protocol.)"""

    name = "a2a"
    numbers_are_doubles = True

    def __init__(self, node: Node) -> None:
        self.node = node

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        from a2a.client import ClientConfig, create_client
        from a2a.client.errors import A2AClientError
        from a2a.helpers.proto_helpers import new_data_part
        from a2a.types import a2a_pb2 as a2a

        config = ClientConfig(streaming=False, supported_protocol_bindings=["JSONRPC"])
        client = await create_client(f"http://127.0.0.1:{self.node.http_port}", config)
        message = a2a.Message(message_id="parity", role=a2a.Role.ROLE_USER)
        message.parts.append(new_data_part({"skill": capability, "parameters": params}))
        try:
            got = [e async for e in client.send_message(a2a.SendMessageRequest(message=message))]
        except A2AClientError as exc:  # refused by HTTP status (A2A: 401 for credentials)
            answer = exc.__cause__
            if not isinstance(answer, httpx.HTTPStatusError):
                raise
            return from_body(answer.response.json()["error"]["data"])
        finally:
            await client.close()
        task = got[-1].task
        if task.status.state == a2a.TaskState.TASK_STATE_COMPLETED:
            return Outcome(json_format.MessageToDict(task.artifacts[0].parts[0].data))
        meta = json_format.MessageToDict(task.status.message.metadata)
        return Outcome(status=ERROR_CODES.get(meta["code"], meta["code"]), reason=meta["reason"])


class AralInvoke:
    """``POST /api/v1/agents/{agent_id}/invoke``, the agent named by its node id."""

    name = "aral-invoke"

    def __init__(self, node: Node, http: httpx.AsyncClient) -> None:
        self.path, self.http = f"/api/v1/agents/{node.node_id}/invoke", http

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        r = await self.http.post(self.path, json={"capability": capability, "parameters": params})
        if r.status_code != 200:
            return from_body(r.json()["error"])
        assert r.json()["success"] is True
        return Outcome(r.json()["result"])


class AralMessage:
    """A signed ARALMessage from a key of its own (an agent no handshake verified);
    the node's answer is a message signed by the node, refusals included."""

    name = "aral-message"

    def __init__(self, node: Node, http: httpx.AsyncClient) -> None:
        self.node_id, self.client = node.node_id, AralClient(http)

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        reply = await self.client.send(self.node_id, capability, params)
        assert reply.signer == self.node_id, reply
        body = reply.message["body"]
        if "error" in body:
            return from_body(body["error"])
        return Outcome(body["result"])


class Local:
    """The in-process door, called as a program would for a principal of its own."""

    name = "local"

    def __init__(self, node: Node) -> None:
        self.node = node

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        ctx = CallContext(door="local", caller="app-user")  # no scopes
        try:
            return Outcome(await self.node.invoke(capability, params, ctx=ctx))
        except AralError as exc:
            return Outcome(status=exc.status.name, reason=exc.reason)


@contextlib.asynccontextmanager
async def open_doors(make_node: Callable[..., Node], **config: Any) -> AsyncIterator[Doors]:
    """A node with the library (one rpc blocked by governance, one needing a scope,
    one taken away), a verified peer, and a client on each door. (A context manager,
    not a fixture: the MCP client's task group must be left by the task that
    entered it.)"""
    policy = RuleEvaluator([
        Rule("keep-books", None, Decision.BLOCK, capabilities=frozenset({DELETE})),
        # Rules that read a value (test_a_rule_sees_one_form_of_a_value_on_every_door).
        Rule("not-book-4", lambda a: (a.parameters or {}).get("bookId") == 4, Decision.BLOCK,
             capabilities=frozenset({GET})),
        Rule("not-1337", lambda a: (a.parameters or {}).get("a") == 1337, Decision.BLOCK,
             capabilities=frozenset({"demo.add"})),
    ])  # fmt: skip
    node = make_node("parity", http_port=0, governance=policy, **FAST, **config)
    library = import_spec(str(LIBRARY))
    node.add_service(library.Library(), library.lib, scopes={"Search": ("library:search",)})
    peer = make_node("parity-peer", demo=False, **FAST)
    async with node, peer:
        node.registry.remove(GONE)
        await linked(peer, node)
        base = f"http://127.0.0.1:{node.http_port}"
        async with (
            grpc.aio.insecure_channel(node.address) as channel,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
            Client(f"{base}/mcp") as mcp,
        ):
            yield Doors(node, peer, channel, http, mcp)


BOOK = {"shelf": "sci", "bookId": "1"}
# Doors whose results carry numbers as doubles by their protocol (A2A data parts are
# google.protobuf.Value): equal values, not identical JSON.
DOUBLES = {"a2a"}
METHOD_DOORS = {"grpc-method", "rest-route"}
CASES = [
    pytest.param(GET, BOOK, None, id="result"),
    pytest.param("demo.add", {"a": 2, "b": 3}, None, id="plain-capability"),
    pytest.param(DELETE, BOOK, ("PERMISSION_DENIED", "GOVERNANCE_BLOCK"), id="governance-block"),
    pytest.param(SEARCH, {"text": "cosmos"}, ("PERMISSION_DENIED", "MISSING_SCOPE"), id="scope"),
    pytest.param(GONE, BOOK, ("NOT_FOUND", "CAPABILITY_NOT_FOUND"), id="not-found"),
]


def assert_refused(answers: dict[str, Outcome], status: str, reason: str) -> None:
    """Every door refused with ``status``, and every door that has a word for the
    reason (all but MCP's error result, which may carry none) says ``reason``."""
    for name, outcome in answers.items():
        assert outcome.status == status, (name, outcome)
        assert outcome.reason in (reason, "") if name == "mcp" else outcome.reason == reason, (
            name,
            outcome,
        )


def assert_same_results(answers: dict[str, Outcome]) -> None:
    """Every door succeeded with identical JSON (3, not 3.0), but the doors whose
    protocol carries numbers as doubles (``DOUBLES``), whose values are equal."""
    assert all(o.ok for o in answers.values()), answers
    exact = {n: o for n, o in answers.items() if n not in DOUBLES}
    values = {name: json.dumps(o.value, sort_keys=True) for name, o in exact.items()}
    assert len(set(values.values())) == 1, values
    reference = next(iter(exact.values())).value
    assert all(o.value == reference for n, o in answers.items() if n in DOUBLES), answers


@pytest.mark.parametrize(("capability", "params", "refusal"), CASES)
async def test_every_door_gives_the_same_answer(
    make_node: Callable[..., Node],
    capability: str,
    params: dict[str, Any],
    refusal: tuple[str, str] | None,
) -> None:
    answers: dict[str, Outcome] = {}
    async with open_doors(make_node) as doors:
        for door in doors.all():
            if door.can_call(capability):
                answers[door.name] = await door.call(capability, params)
    plain = {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a", "local"}
    plain |= {"aral-invoke", "aral-message"}
    # Every door; a plain capability has no rpc or route of its own.
    assert set(answers) == (plain if capability == "demo.add" else {*plain, *METHOD_DOORS})
    if refusal is None:
        assert_same_results(answers)
        return
    assert_refused(answers, *refusal)


@pytest.mark.parametrize(
    ("capability", "params"),
    [
        pytest.param(GET, {"shelf": "sci", "bookId": 4}, id="int64-as-number"),
        pytest.param(GET, {"shelf": "sci", "bookId": "4"}, id="int64-as-string"),
        pytest.param(GET, {"shelf": "sci", "book_id": "4"}, id="proto-field-name"),
        pytest.param("demo.add", {"a": 1337, "b": 0}, id="number"),
        pytest.param("demo.add", {"a": "1337", "b": 0}, id="number-as-string"),
        pytest.param("demo.add", {"a": 1.337e3, "b": 0}, id="float-form"),
    ],
)
async def test_a_rule_sees_one_form_of_a_value_on_every_door(
    make_node: Callable[..., Node], capability: str, params: dict[str, Any]
) -> None:
    """From an attack: governance read the parameters as the caller spelt them, the
    handler after parsing -- a protobuf field's proto name (``book_id``), an int64
    as a string (proto3 JSON's own form), a float as text took a call past a rule
    on the value. Every door's rule sees the value as the handler will have it
    (64-bit integers as numbers), so every form is blocked alike."""
    answers: dict[str, Outcome] = {}
    async with open_doors(make_node) as doors:
        for door in doors.all():
            routed = door.name != "rest-route" or "bookId" in params
            if door.can_call(capability) and routed:
                answers[door.name] = await door.call(capability, params)
    assert {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a", "local"} <= set(answers)
    assert_refused(answers, "PERMISSION_DENIED", "GOVERNANCE_BLOCK")


async def test_a_caller_without_the_scope_learns_nothing_of_the_parameters(
    make_node: Callable[..., Node],
) -> None:
    """From review: a protobuf method's JSON parameters were parsed before the caller
    was authorized or rate-limited, so a caller without the scope got the parse's
    error (the request's field names) rather than the refusal, and bad parameters
    cost no token. Authorize, then rate-limit, then parse."""
    answers: dict[str, Outcome] = {}
    async with open_doors(make_node) as doors:
        for door in doors.all():
            if door.name in {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "local"}:
                answers[door.name] = await door.call(SEARCH, {"text": {"not": "a string"}})
    assert len(answers) == 6
    assert_refused(answers, "PERMISSION_DENIED", "MISSING_SCOPE")


class ByBody:
    """A REST door read by its error body's code on its own route (400 is more than
    one status: ``HTTP_STATUS`` names none for it)."""

    def __init__(self, door: RestRoute | RestInvoke) -> None:
        self.door, self.name = door, door.name

    def can_call(self, capability: str) -> bool:
        return self.door.can_call(capability)

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        http = self.door.http
        if isinstance(self.door, RestRoute):
            verb, path = self.door.ROUTES[capability]
            r = await http.request(verb, path(params), json=params if verb == "POST" else None)
        else:
            r = await http.post("/v1/invoke", json={"call": {"capability": capability,
                                                             "parameters": params}})  # fmt: skip
        return from_body(r.json()["error"]) if r.status_code != 200 else Outcome(r.json())


@pytest.mark.parametrize("book_id", ["+1", "1_0", "\u0661", "1e3"])
async def test_a_number_no_proto3_json_parser_takes_is_refused_on_every_json_door(
    make_node: Callable[..., Node], book_id: str
) -> None:
    """A number's string form that Python's int() reads and proto3 JSON does not is
    refused alike wherever a door reads the request as JSON (``proto_json``). The
    gRPC method door alone is left out: its request is binary protobuf, made by
    the client, so no such string reaches the node."""
    answers: dict[str, Outcome] = {}
    async with open_doors(make_node) as doors:
        every = [ByBody(d) if isinstance(d, RestRoute | RestInvoke) else d for d in doors.all()]
        for door in every:
            if door.name not in METHOD_DOORS - {"rest-route"} and door.can_call(GET):
                answers[door.name] = await door.call(GET, {"shelf": "sci", "bookId": book_id})
    plain = {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a", "local"}
    assert set(answers) == {*plain, "aral-invoke", "aral-message", "rest-route"}
    assert_refused(answers, "INVALID_ARGUMENT", "INVALID_PARAMETERS")


@pytest.mark.parametrize("genre", [2**32 + 1, "4294967297", "+1", 2.5, True])
async def test_an_enum_value_the_parser_would_change_is_refused_on_every_json_door(
    make_node: Callable[..., Node], genre: Any
) -> None:
    """An enum is a value's name or an int32 (a number or its digits): the parser
    wrapped a larger number into another value (2**32 + 1 was GENRE_FICTION) and
    read any string int() reads. Refused alike wherever a door reads JSON."""
    answers: dict[str, Outcome] = {}
    update = "library.v1.Library/UpdateBook"
    async with open_doors(make_node) as doors:
        every = [ByBody(d) if isinstance(d, RestRoute | RestInvoke) else d for d in doors.all()]
        for door in every:
            if door.name not in METHOD_DOORS and door.can_call(update):
                book = {"shelf": "sci", "id": "1", "genre": genre}
                answers[door.name] = await door.call(update, {"book": book})
    plain = {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a", "local"}
    assert set(answers) == {*plain, "aral-invoke", "aral-message"}
    assert_refused(answers, "INVALID_ARGUMENT", "INVALID_PARAMETERS")


class Naming:
    """An authenticator that names every remote caller ``bearer["name"]`` once it is
    set (an issuer's ``sub``, as a JWT verifier would); the program's own calls are
    the node's rule's."""

    def __init__(self) -> None:
        self.name = ""

    def authenticate(self, ctx: CallContext, credentials: Credentials) -> Authenticated:
        if self.name and not (credentials.local or credentials.given):
            return Authenticated(self.name, kind="user")
        return Authenticated()


@pytest.mark.parametrize("name", ["anonymous", "anonymous@127.0.0.1"])
async def test_a_name_kept_for_anonymous_callers_is_refused_on_every_door(
    make_node: Callable[..., Node], name: str
) -> None:
    """A credential naming its principal "anonymous" (everyone without an identity)
    or "anonymous@<address>" (an A2A tasks' owner) is refused by the first stage,
    alike on every door: a channel's peer and the signed doors included."""
    naming = Naming()
    answers: dict[str, Outcome] = {}
    async with open_doors(make_node, authenticator=naming) as doors:
        naming.name = name  # (the peer linked before: its handshake is not at issue)
        for door in doors.all():
            if door.name != "local" and door.can_call("demo.add"):
                answers[door.name] = await door.call("demo.add", {"a": 1, "b": 2})
    assert {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a"} <= set(answers)
    assert_refused(answers, "UNAUTHENTICATED", "RESERVED_PRINCIPAL")


async def test_deny_by_default_refuses_a_capability_without_scopes_on_every_door(
    make_node: Callable[..., Node],
) -> None:
    """With ``deny_by_default`` nobody holds ``agent:invoke`` unless a role or grant
    says so: a capability that names no scope (and a method that names none) is
    refused on every door alike, each in its own language, its handler never run."""
    ran: list[str] = []
    async with open_doors(make_node, deny_by_default=True) as doors:

        @doors.node.capability(id="authz.count")
        async def count() -> int:
            ran.append("count")
            return len(ran)

        answers = {
            (door.name, capability): await door.call(capability, params)
            for capability, params in (("authz.count", {}), (GET, BOOK))
            for door in doors.all()
            if door.can_call(capability)
        }
    assert {name for name, _ in answers} == {
        "grpc-invoke", "grpc-method", "rest-route", "rest-invoke", "mcp", "ws", "channel", "a2a",
        "aral-invoke", "aral-message", "local",
    }  # fmt: skip
    for key, outcome in answers.items():
        assert outcome.status == "PERMISSION_DENIED", (key, outcome)
        assert (
            outcome.reason in ("MISSING_SCOPE", "")
            if key[0] == "mcp"
            else (outcome.reason == "MISSING_SCOPE")
        ), (key, outcome)
    assert ran == []


async def test_integers_stay_integers_on_every_door(make_node: Callable[..., Node]) -> None:
    async with open_doors(make_node) as doors:
        for door in doors.all():
            whole = float if getattr(door, "numbers_are_doubles", False) else int
            book = (await door.call(GET, BOOK)).value
            assert book["year"] == 1980, door.name
            assert type(book["year"]) is whole, door.name
            if door.can_call("demo.add"):
                total = (await door.call("demo.add", {"a": 2, "b": 3})).value
                assert total == 5, door.name
                assert type(total) is whole, door.name


async def test_error_details_are_the_same_json_on_every_door(
    make_node: Callable[..., Node],
) -> None:
    """A refusal's details keep their JSON types through a gRPC status (they ride in
    a Struct beside the ErrorInfo, whose metadata holds strings only)."""
    missing = {"shelf": "sci", "bookId": "99"}
    async with open_doors(make_node) as doors:
        rest = await doors.http.post(
            "/v1/invoke", json={"call": {"capability": GET, "parameters": missing}}
        )
        async with NodeClient(doors.node.address) as client:
            with pytest.raises(AralError) as info:
                await client.call(GET, missing)
        via_peer = await Channel(doors.peer, doors.node).call(GET, missing)
    assert rest.json()["error"]["details"] == {"shelf": "sci", "book_id": 99}
    assert info.value.details == {"shelf": "sci", "book_id": 99}
    assert via_peer.reason == "NOT_FOUND"


# -- group "grpc": a servicer written for grpc.aio, on every door ------------------------
# (``tests/test_servicers.py`` compares it with a plain grpc.aio server.) Its status,
# set with ``context.abort(grpc.StatusCode...)`` or ``set_code``, is the same refusal
# on every door, each in its own language; on its own rpc it is sent exactly as set
# (no ErrorInfo, so no reason there), as a plain grpc.aio server sends it.

HTTP_STATUS.update({409: "ALREADY_EXISTS"})
ERROR_CODES.update({"already_exists": "ALREADY_EXISTS"})


@contextlib.asynccontextmanager
async def open_servicer_doors(make_node: Callable[..., Node]) -> AsyncIterator[Doors]:
    """``open_doors`` with the grpc.aio-style library servicer."""
    from tests.test_servicers import GrpcStyleLibrary, lib

    node = make_node("parity-servicer", http_port=0, **FAST)
    node.add_service(GrpcStyleLibrary(), lib)
    peer = make_node("parity-servicer-peer", demo=False, **FAST)
    async with node, peer:
        await linked(peer, node)
        base = f"http://127.0.0.1:{node.http_port}"
        async with (
            grpc.aio.insecure_channel(node.address) as channel,
            httpx.AsyncClient(base_url=base, timeout=10) as http,
            Client(f"{base}/mcp") as mcp,
        ):
            yield Doors(node, peer, channel, http, mcp)


SERVICER_CASES = [
    pytest.param({"shelf": "surface", "bookId": "1"}, None, id="servicer-result"),
    pytest.param({"shelf": "abort", "bookId": "7"}, ("NOT_FOUND", "NOT_FOUND"), id="abort"),
    pytest.param(
        {"shelf": "set-code", "bookId": "7"}, ("ALREADY_EXISTS", "ALREADY_EXISTS"), id="set-code"
    ),
]


@pytest.mark.parametrize(("params", "refusal"), SERVICER_CASES)
async def test_a_grpc_aio_servicer_gives_the_same_answer_on_every_door(
    make_node: Callable[..., Node], params: dict[str, Any], refusal: tuple[str, str] | None
) -> None:
    async with open_servicer_doors(make_node) as doors:
        answers = {door.name: await door.call(GET, params) for door in doors.all()}
    assert set(answers) == {"grpc-invoke", "grpc-method", "rest-route", "rest-invoke"} | {
        "mcp", "ws", "channel", "a2a", "aral-invoke", "aral-message", "local"
    }  # fmt: skip
    if refusal is None:
        assert_same_results(answers)
        return
    status, reason = refusal
    for name, outcome in answers.items():
        assert outcome.status == status, (name, outcome)
        allowed = (reason, "") if name in ("mcp", "grpc-method") else (reason,)
        assert outcome.reason in allowed, (name, outcome)


DOOR_NAMES = (
    "grpc-invoke",
    "grpc-method",
    "rest-route",
    "rest-invoke",
    "mcp",
    "ws",
    "channel",
    "local",
)


# -- group "sem": what the doors say (items 15 and 21) ---------------------------------
# The same case gives the same JSON on every door, the CLI (``aralnode call --json``)
# and MCP over stdio (``aralnode mcp``) included: a float sum that is whole is ``3``
# everywhere, and a result no door can carry (a sum that overflowed to infinity) is
# the same refusal everywhere, never a 500, ``null`` or ``Infinity``.

ERROR_CODES.update({"out_of_range": "OUT_OF_RANGE", "invalid_request": "INVALID_ARGUMENT"})


def _sem_env() -> dict[str, str]:
    import os

    return dict(os.environ)  # PYTHONPATH: this worktree's package


class SemRest:
    """A REST door read by the error body's code (400 is more than one status)."""

    def __init__(self, door: RestRoute | RestInvoke) -> None:
        self.door, self.name = door, door.name

    def can_call(self, capability: str) -> bool:
        return self.door.can_call(capability)

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        try:
            return await self.door.call(capability, params)
        except KeyError:  # a status HTTP_STATUS does not name
            body = {"call": {"capability": capability, "parameters": params}}
            r = await self.door.http.post("/v1/invoke", json=body)
            return from_body(r.json()["error"])


class Cli:
    """``aralnode call --json`` in a process of its own."""

    name = "cli"

    def __init__(self, node: Node) -> None:
        self.address = node.address

    def can_call(self, capability: str) -> bool:
        return True

    async def call(self, capability: str, params: dict[str, Any]) -> Outcome:
        import asyncio
        import sys

        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "aralnode.cli", "call", "--node", self.address, "--json",
            capability, json.dumps(params), env=_sem_env(),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        async with asyncio.timeout(30):
            out, err = await proc.communicate()
        if proc.returncode == 0:
            return Outcome(json.loads(out)["result"])
        error = json.loads(err)["error"]  # (--json: the error object too)
        return Outcome(status=error["status"], reason=error["reason"])


class McpStdio(Mcp):
    """The official client on ``aralnode mcp --node`` (stdio)."""

    name = "mcp-stdio"


@contextlib.asynccontextmanager
async def stdio_client(node: Node) -> AsyncIterator[Client]:
    import sys

    from mcp.client.stdio import StdioServerParameters

    args = ["-m", "aralnode.cli", "mcp", "--node", node.address]
    server = StdioServerParameters(command=sys.executable, args=args, env=_sem_env())
    async with Client(server) as client:
        yield client


SEM_CASES = [
    pytest.param("demo.add", {"a": 1.5, "b": 1.5}, None, id="whole-float-sum"),
    pytest.param("demo.echo", {"text": "é ✓", "times": 2}, None, id="text"),
    pytest.param("demo.convert", {"value": 100}, None, id="structured-whole"),
    pytest.param(
        "demo.add", {"a": 1e308, "b": 1e308}, ("OUT_OF_RANGE", "RESULT_NOT_JSON"), id="overflow"
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("capability", "params", "refusal"), SEM_CASES)
async def test_the_same_json_on_every_door_the_cli_and_stdio_mcp_included(
    make_node: Callable[..., Node],
    capability: str,
    params: dict[str, Any],
    refusal: tuple[str, str] | None,
) -> None:
    answers: dict[str, Outcome] = {}
    async with open_doors(make_node) as doors, stdio_client(doors.node) as stdio:
        every = [SemRest(d) if isinstance(d, RestRoute | RestInvoke) else d for d in doors.all()]
        for door in [*every, Cli(doors.node), McpStdio(stdio)]:
            if door.can_call(capability):
                answers[door.name] = await door.call(capability, params)
    assert {"cli", "mcp", "mcp-stdio", "rest-invoke", "ws", "channel", "a2a", "local"} <= set(
        answers
    )
    if refusal is None:
        assert_same_results(answers)
        return
    for name, outcome in answers.items():
        assert (outcome.status, outcome.reason) == refusal, (name, outcome)


HTTP_STATUS.update({413: "RESOURCE_EXHAUSTED"})
ERROR_CODES.update({"payload_too_large": "RESOURCE_EXHAUSTED"})


async def test_a_result_too_large_to_send_is_refused_alike_on_every_door(
    make_node: Callable[..., Node],
) -> None:
    """A small request can ask for a large answer: past ``max_message_bytes`` the
    pipeline refuses it before any door writes it out, the same on every door."""
    async with open_doors(make_node, max_message_bytes=64 * 1024) as doors:

        @doors.node.capability(id="test.big", risk="read_only")
        async def big(times: int) -> dict[str, Any]:
            return {"echo": ["x" * 1000] * times}  # one string, many times

        answers = {
            door.name: await door.call("test.big", {"times": 500})
            for door in doors.all()
            if door.can_call("test.big")
        }
    assert {"grpc-invoke", "rest-invoke", "mcp", "ws", "channel", "a2a", "local"} <= set(answers)
    assert_refused(answers, "RESOURCE_EXHAUSTED", "RESPONSE_TOO_LARGE")


@pytest.mark.parametrize(
    "unreadable",
    [b"{not json", '{"jsonrpc": "2.0", "id": 1, "method": "ping"}'.encode("utf-16")],
    ids=["not_json", "utf16"],
)
async def test_a_body_that_is_not_json_is_refused_on_record_on_every_json_door(
    make_node: Callable[..., Node], unreadable: bytes
) -> None:
    """The same bytes, not JSON (or not UTF-8: an SDK's parser takes UTF-16), posted
    to every door that reads a JSON body over HTTP: 400 ``invalid_request`` on each
    (in JSON-RPC's shape, -32700, where the door speaks it), and one audit record
    each, with the caller."""
    node = make_node("not-json", http_port=0, audit=True)
    guarded(node)
    async with node:
        (alice,) = keys_for(node, "alice")
        me = {"x-api-key": alice, "content-type": "application/json"}
        base = f"http://127.0.0.1:{node.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:
            session = await open_session(http, {"x-api-key": alice})
            answers = {
                path: await http.post(path, content=unreadable, headers=headers)
                for path, headers in [
                    ("/v1/invoke", me),
                    ("/v1/capabilities/demo.echo:invoke", me),
                    ("/a2a", {**ACCEPT, **me}),
                    ("/mcp", on(session, me)),
                ]
            }
    for path, r in answers.items():
        assert r.status_code == 400, (path, r.text)
        error = r.json()["error"]
        if path in ("/a2a", "/mcp"):
            assert error["code"] == -32700, (path, error)
            error = error["data"]
        assert error["code"] == "invalid_request", (path, error)
        assert error["trace_id"] == r.headers["x-trace-id"], path
    directory = node.config.resolved_data_dir / "audit"
    assert verify(directory, node.identity.public_key).problem is None
    traces = {r.headers["x-trace-id"] for r in answers.values()}
    records = [r for _, r in read_records(directory) if r.trace_id in traces]
    assert sorted((r.door, r.outcome, r.caller) for r in records) == sorted(
        [("a2a", "invalid_request", "alice"), ("mcp", "invalid_request", "alice")]
        + [("rest", "invalid_request", "alice")] * 2
    ), records
