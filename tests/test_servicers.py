"""A servicer written for grpc.aio behaves on the node as under a plain grpc.aio server.

``GrpcStyleLibrary`` knows nothing of aralnode: it subclasses the generated
``LibraryServicer`` and uses what grpc.aio servicers use: ``context.abort`` with a
``grpc.StatusCode`` (or its number), ``set_code``/``set_details`` and returning,
trailing metadata, ``abort_with_status``, ``invocation_metadata()``, ``peer()``,
``time_remaining()``. Each behaviour (the request's shelf picks it) is called on a
plain grpc.aio server and on the node's gRPC door, and the two answers must be the
same: status, details, trailing metadata, response. On the other doors the status
is mapped to each door's language (NOT_FOUND is 404 ``not_found`` on REST, an MCP
error result ``not_found``); ``tests/test_parity.py`` runs it over every door.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from aralnode import Node
from aralnode._assembly import import_spec

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ROOT / "examples" / "library" / "server.py"
library = import_spec(str(LIBRARY))
lib: Any = library.lib


def _grpc_module() -> Any:
    """``library_pb2_grpc``, the generated servicer base and registration."""
    spec = importlib.util.spec_from_file_location(
        "library_pb2_grpc", LIBRARY.parent / "library_pb2_grpc.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("library_pb2", lib)
    spec.loader.exec_module(module)
    return module


lib_grpc = _grpc_module()

RICH = status_pb2.Status(code=code_pb2.RESOURCE_EXHAUSTED, message="quota spent")
RICH.details.add().Pack(error_details_pb2.ErrorInfo(reason="QUOTA", domain="library.example"))


class GrpcStyleLibrary(lib_grpc.LibraryServicer):  # type: ignore[misc]  # generated, untyped
    """A servicer as anyone writes one for grpc.aio: ``(request, context)``."""

    async def GetBook(self, request: Any, context: Any) -> Any:
        how = request.shelf
        if how == "abort":
            trailers = (("x-why", "gone"), ("x-blob-bin", b"\x00\x01"))
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no book {request.book_id}", trailers)
        if how == "set-code":
            context.set_code(grpc.StatusCode.ALREADY_EXISTS)
            context.set_details("already on the shelf")
            context.set_trailing_metadata((("x-shelf", "full"),))
            return lib.Book(title="not sent")
        if how == "set-code-only":
            context.set_code(grpc.StatusCode.UNIMPLEMENTED)
            return lib.Book()
        if how == "raise-after-set-code":
            context.set_code(grpc.StatusCode.PERMISSION_DENIED)
            raise LookupError("a private shelf")
        if how == "abort-caught":
            try:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, "past the last shelf")
            except Exception:  # what the test is about: the status stands
                return lib.Book(title="swallowed")
        if how == "abort-number":
            await context.abort(10, "by number")  # ABORTED
        if how == "details-first":
            context.set_details("said before")
            await context.abort(grpc.StatusCode.DATA_LOSS)
        if how == "rich":
            await context.abort_with_status(rpc_status.to_status(RICH))
        return self._book(request, context)

    @staticmethod
    def _book(request: Any, context: Any) -> Any:
        metadata = dict(context.invocation_metadata())
        peer = context.peer()
        left = context.time_remaining()
        assert context.code() is None
        context.set_trailing_metadata((("x-served-by", "library"),))
        if request.shelf == "surface":  # the same book whichever door it came by
            return lib.Book(shelf="surface", title="every door", year=1980)
        reader = metadata.get("x-reader", "nobody")
        facts = f"peer={bool(peer)} deadline={left is not None and left > 0}"
        return lib.Book(shelf=request.shelf, title=f"for {reader}", author=facts, year=1980)

    async def Search(self, request: Any, context: Any) -> Any:
        raise ValueError("a secret in the message")

    async def WatchShelf(self, request: Any, context: Any) -> AsyncIterator[Any]:
        yield lib.Book(shelf=request.shelf, title="first")
        if request.shelf == "moved":
            await context.abort(grpc.StatusCode.ABORTED, "the shelf moved")
        if request.shelf == "set-code":
            context.set_code(grpc.StatusCode.NOT_FOUND)
            context.set_details("no more books")
            context.set_trailing_metadata((("x-last", "1"),))


UNARY_CASES = [
    "ok",
    "surface",
    "abort",
    "set-code",
    "set-code-only",
    "raise-after-set-code",
    "abort-caught",
    "abort-number",
    "details-first",
    "rich",
]
STREAM_CASES = ["ok", "moved", "set-code"]


async def _unary(channel: grpc.aio.Channel, how: str) -> tuple[Any, ...]:
    stub = lib_grpc.LibraryStub(channel)
    call = stub.GetBook(
        lib.GetBookRequest(shelf=how, book_id=7), timeout=10, metadata=(("x-reader", "ann"),)
    )
    try:
        book = await call
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details(), tuple(err.trailing_metadata() or ()), None
    trailers = tuple(await call.trailing_metadata() or ())
    return await call.code(), await call.details(), trailers, json_format.MessageToDict(book)


async def _stream(channel: grpc.aio.Channel, how: str) -> tuple[Any, ...]:
    stub = lib_grpc.LibraryStub(channel)
    call = stub.WatchShelf(lib.WatchShelfRequest(shelf=how), timeout=10)
    books: list[dict[str, Any]] = []
    try:
        async for book in call:  # a loop: the books read before a refusal count too
            books.append(json_format.MessageToDict(book))  # noqa: PERF401
    except grpc.aio.AioRpcError as err:
        return err.code(), err.details(), tuple(err.trailing_metadata() or ()), books
    return await call.code(), await call.details(), tuple(await call.trailing_metadata()), books


@pytest.fixture
async def plain() -> AsyncIterator[grpc.aio.Channel]:
    """The servicer on a plain grpc.aio server: the behaviour to match."""
    server = grpc.aio.server()
    lib_grpc.add_LibraryServicer_to_server(GrpcStyleLibrary(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    await server.stop(None)


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("servicers", http_port=0)
    n.add_service(GrpcStyleLibrary(), lib)
    async with n:
        yield n


async def test_unary_answers_match_a_plain_grpc_aio_server(
    plain: grpc.aio.Channel, node: Node
) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        for how in UNARY_CASES:
            assert await _unary(channel, how) == await _unary(plain, how), how


async def test_server_stream_answers_match_a_plain_grpc_aio_server(
    plain: grpc.aio.Channel, node: Node
) -> None:
    async with grpc.aio.insecure_channel(node.address) as channel:
        for how in STREAM_CASES:
            assert await _stream(channel, how) == await _stream(plain, how), how


async def test_an_exception_without_a_status_is_the_nodes_internal_error(
    plain: grpc.aio.Channel, node: Node
) -> None:
    """The one deliberate difference: grpc answers UNKNOWN with the exception's text;
    the node answers INTERNAL (HANDLER_FAILED) with none of it and logs the
    traceback with the call's trace id, as for every capability."""
    request = lib.SearchRequest(text="x")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await lib_grpc.LibraryStub(plain).Search(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert "a secret" in (info.value.details() or "")
    async with grpc.aio.insecure_channel(node.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await lib_grpc.LibraryStub(channel).Search(request, timeout=10)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "a secret" not in (info.value.details() or "")


async def test_an_exception_after_set_code_ends_with_that_status_and_is_logged(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    """As under grpc.aio: the status the servicer set is the answer, and the
    exception it raised after is logged with its traceback (the node's log is where
    a servicer's own failure is found)."""
    from aralnode import AralError

    with pytest.raises(AralError) as info:
        await node.invoke(
            "library.v1.Library/GetBook", {"shelf": "raise-after-set-code", "bookId": "7"}
        )
    assert info.value.status.name == "PERMISSION_DENIED"
    logged = [r for r in caplog.records if "after setting its status" in r.getMessage()]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert logged[0].exc_info[0] is LookupError


# What each behaviour is on the JSON doors: HTTP status, the error's code, message.
REST = {
    "abort": (404, "not_found", "no book 7"),
    "set-code": (409, "already_exists", "already on the shelf"),
    "set-code-only": (501, "not_implemented", ""),
    "raise-after-set-code": (
        403,
        "forbidden",
        f"Unexpected {LookupError}: a private shelf",
    ),
    "abort-caught": (400, "out_of_range", "past the last shelf"),
    "abort-number": (409, "aborted", "by number"),
    "details-first": (500, "data_loss", "said before"),
    "rich": (429, "rate_limit_exceeded", "quota spent"),
}


async def test_the_status_in_the_rest_doors_language(node: Node) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for how, (status, code, message) in REST.items():
            reply = await http.get(f"/v1/shelves/{how}/books/7")
            assert reply.status_code == status, (how, reply.text)
            error = reply.json()["error"]
            assert (error["code"], error["message"]) == (code, message), how
            body = {"call": {"capability": "library.v1.Library/GetBook",
                             "parameters": {"shelf": how, "bookId": "7"}}}  # fmt: skip
            reply = await http.post("/v1/invoke", json=body)
            assert reply.status_code == status, (how, reply.text)
            assert reply.json()["error"]["code"] == code, how
        # The servicer's view of a REST call: the headers as metadata, the client's
        # address, the deadline X-Timeout-Ms sets.
        reply = await http.get(
            "/v1/shelves/ok/books/7", headers={"x-reader": "bob", "x-timeout-ms": "5000"}
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["title"] == "for bob"
        assert reply.json()["author"] == "peer=True deadline=True"


async def test_the_status_on_the_in_process_door(node: Node) -> None:
    from aralnode import AralError

    with pytest.raises(AralError) as info:
        await node.invoke("library.v1.Library/GetBook", {"shelf": "abort", "bookId": "7"})
    assert (info.value.status.name, info.value.code, info.value.message) == (
        "NOT_FOUND",
        "not_found",
        "no book 7",
    )
    assert info.value.http_status == 404
    book = await node.invoke("library.v1.Library/GetBook", {"shelf": "ok", "bookId": "7"})
    assert json.dumps(book, sort_keys=True)  # a result, not a servicer's error
    assert book["title"] == "for nobody"
