"""The OpenAPI document: valid 3.1, described from proto comments, and schemathesis
finds no 5xx and no response that breaks it."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from aralnode import Node
from aralnode.access.apikeys import ApiKeyStore

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = str(ROOT / "examples" / "library" / "server.py")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.fixture
async def node(make_node: Callable[..., Node]) -> AsyncIterator[Node]:
    n = make_node("openapi", http_port=0)
    n.load(LIBRARY)
    async with n:
        yield n


@pytest.fixture
async def document(node: Node) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        r = await http.get("/openapi.json")
        assert r.status_code == 200
        doc: dict[str, Any] = r.json()
        return doc


def test_document_is_valid_openapi_31(document: dict[str, Any]) -> None:
    validate(document)
    assert document["openapi"] == "3.1.0"
    for schema in document["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_the_document_says_how_to_authenticate(document: dict[str, Any]) -> None:
    """From review: no securitySchemes, so Swagger and generated clients could not
    know how to send a key. The node takes X-API-Key or a bearer token; this node
    serves anonymous callers too, so no credential ({}) is an option."""
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": schemes["apiKey"]["description"],
    }  # fmt: skip
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"apiKey": []}, {"bearer": []}, {}]


async def test_a_node_that_refuses_anonymous_callers_documents_no_anonymous_option(
    make_node: Callable[..., Node],
) -> None:
    node = make_node("locked-doc", http_port=0, allow_unsigned=False)
    async with node, httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        key, _ = ApiKeyStore(node.config.apikeys_path).create("docs", scopes=["agent:read"])
        r = await http.get("/openapi.json", headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    assert r.json()["security"] == [{"apiKey": []}, {"bearer": []}]
    validate(r.json())


def test_every_binding_is_documented(document: dict[str, Any]) -> None:
    ops = {(verb.upper(), path) for path, item in document["paths"].items() for verb in item}
    assert {
        ("GET", "/v1/shelves/{shelf}/books/{book_id}"),
        ("GET", "/v1/shelves/{shelf}/books"),
        ("GET", "/v1/{parent}/books:list"),
        ("POST", "/v1/shelves/{shelf}/books"),
        ("PATCH", "/v1/shelves/{shelf}/books/{book_id}"),  # {book.shelf}: GetBook's path
        ("DELETE", "/v1/shelves/{shelf}/books/{book_id}"),
        ("GET", "/v1/shelves/{shelf}/books/{book_id}/title"),
        ("POST", "/library.v1.Library/Search"),
        ("GET", "/v1/shelves/{shelf}/books:watch"),
        ("POST", "/v1/invoke"),
        ("POST", "/v1/capabilities/{call_capability}:invoke"),
        ("GET", "/v1/status"),
        ("GET", "/v1/capabilities"),
        ("GET", "/v1/peers"),
    } <= ops
    # node-to-node only: not bridged
    assert ("POST", "/v1/handshake") not in ops
    assert ("POST", "/aral.v1.AgentNode/Channel") not in ops


async def test_the_aral_rest_api_is_documented(node: Node, document: dict[str, Any]) -> None:
    base = "/api/v1/agents/{agent_id}"
    ops = {
        (verb, path): op
        for path, item in document["paths"].items()
        if path.startswith(base)
        for verb, op in item.items()
    }
    assert set(ops) == {
        ("get", f"{base}/status"),
        ("get", f"{base}/capabilities"),
        ("post", f"{base}/invoke"),
        ("post", f"{base}/capabilities/{{capability}}"),
        ("post", f"{base}/messages"),
    }
    status = ops["get", f"{base}/status"]
    agent = next(p for p in status["parameters"] if p["name"] == "agent_id")
    assert agent["example"] == node.node_id  # what a reader tries first: this node
    message = ops["post", f"{base}/messages"]
    signature = next(p for p in message["parameters"] if p["name"] == "X-ARAL-Signature")
    assert signature["in"] == "header"
    assert signature["required"] is True
    assert "aral.api" in {t["name"] for t in document["tags"]}
    # The answers the route gives are the documented ones.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        got = (await http.get(f"/api/v1/agents/{node.node_id}/status")).json()
    schemas = document["components"]["schemas"]
    Draft202012Validator(schemas["aral.api.AgentStatus"]).validate(got)


def test_only_operations_that_answer_protobuf_say_so(document: dict[str, Any]) -> None:
    said = "Also answers `application/protobuf`"
    paths = document["paths"]
    assert said in paths["/v1/shelves/{shelf}/books/{book_id}"]["get"]["description"]
    # A scalar response_body and a stream answer JSON only (406 for protobuf).
    assert said not in paths["/v1/shelves/{shelf}/books/{book_id}/title"]["get"]["description"]
    assert said not in paths["/v1/shelves/{shelf}/books:watch"]["get"]["description"]


def test_one_path_per_shape(document: dict[str, Any]) -> None:
    # OpenAPI: templated paths of the same hierarchy are one path, whatever their
    # names; a path item lists every method the node answers there (as Allow does).
    shapes = [re.sub(r"\{[^}]*\}", "{}", path) for path in document["paths"]]
    assert len(shapes) == len(set(shapes))
    item = document["paths"]["/v1/shelves/{shelf}/books/{book_id}"]
    assert set(item) == {"get", "patch", "delete"}
    params = {p["name"]: p for p in item["patch"]["parameters"] if p["in"] == "path"}
    assert set(params) == {"shelf", "book_id"}
    assert params["shelf"]["description"].startswith("Field `book.shelf`.")


def test_descriptions_come_from_proto_comments(document: dict[str, Any]) -> None:
    op = document["paths"]["/v1/shelves/{shelf}/books"]["get"]
    assert (
        op["summary"] == "Lists the books on a shelf, optionally only those of one author or genre"
    )
    params = {p["name"]: p for p in op["parameters"]}
    assert params["shelf"]["in"] == "path"
    assert params["author"]["description"] == "Only books by this author (exact match), if set."
    assert params["min_year"]["schema"]["type"] == ["integer", "string"]  # (its digits)
    book = document["components"]["schemas"]["library.v1.Book"]
    assert book["description"] == "A book on a shelf."
    assert book["properties"]["createTime"]["format"] == "date-time"
    assert book["additionalProperties"] is False
    tags = {t["name"]: t.get("description", "") for t in document["tags"]}
    assert tags["library.v1.Library"] == "Shelves of books, kept in memory."
    assert "Invokes one capability" in document["paths"]["/v1/invoke"]["post"]["description"]
    watch = document["paths"]["/v1/shelves/{shelf}/books:watch"]["get"]["responses"]["200"]
    assert set(watch["content"]) == {"application/x-ndjson", "text/event-stream"}


async def test_docs_page_is_self_contained(node: Node) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{node.http_port}") as http:
        r = await http.get("/docs")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "openapi.json" in r.text
    assert "<script src" not in r.text  # nothing fetched from a CDN
    assert "https://" not in r.text


# No 5xx, no response outside the schema; every request the schema allows is
# accepted and every one it forbids refused (both directions of "they agree"); a
# method a path does not have is 405 with an exact Allow. Where a servicer has rules
# of its own that no proto says (the library wants a shelf and a title, and a
# page_size of at least 0; Invoke wants a call or a message, and its by-capability
# binding's path already sets the call; the ARAL API's invoke routes take any object
# as parameters, and the capability named checks its own), a schema-valid
# request may be refused: only that direction is left out, for those operations.
SCHEMATHESIS_CONFIG = """
[checks]
enabled = false
not_a_server_error.enabled = true
status_code_conformance.enabled = true
content_type_conformance.enabled = true
response_schema_conformance.enabled = true
positive_data_acceptance.enabled = true
negative_data_rejection.enabled = true
unsupported_method.enabled = true

[[operations]]
include-operation-id = [
  "library.v1.Library.CreateBook",
  "library.v1.Library.ListBooks",
  "library.v1.Library.ListBooks_2",
  "aral.v1.AgentNode.Invoke",
  "aral.v1.AgentNode.Invoke_2",
  "aral.api.invoke",
  "aral.api.capability",
]
checks.positive_data_acceptance.enabled = false
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not SCHEMATHESIS.exists(), reason="schemathesis is not installed in this environment"
)
async def test_schemathesis_finds_the_schema_and_the_node_agree(node: Node, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{node.http_port}/openapi.json"
    (tmp_path / "schemathesis.toml").write_text(SCHEMATHESIS_CONFIG)
    proc = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "run",
        url,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "12",
        "--workers",
        "1",
        "--suppress-health-check",
        "all",
        "--request-timeout",
        "10",
        "--seed",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"},
        cwd=tmp_path,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=100)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-4000:]
    assert "passed" in text


def test_what_openapi_cannot_say_of_a_path_variable_its_description_does(
    document: dict[str, Any],
) -> None:
    """From an attack: an OpenAPI client percent-encodes the '/' of a multi-segment
    variable (`{parent=shelves/*}`), which http.proto keeps inside one segment: the
    call found nothing. OpenAPI 3.1 has no way to say "send it as it is" for a path
    parameter; its description says it."""
    op = document["paths"]["/v1/{parent}/books:list"]["get"]
    (parent,) = [p for p in op["parameters"] if p["name"] == "parent"]
    assert "sent as it is: an encoded `%2F` stays inside one" in parent["description"]
    assert parent["schema"]["pattern"].startswith("^shelves/")
