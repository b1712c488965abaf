"""The official MCP conformance suite (``@modelcontextprotocol/conformance``, pinned
in the Makefile, installed by ``make mcp-conformance``) against a node's ``/mcp``,
with the audit log on: every server scenario whose features a node serves, each
check a success.

The scenarios left out need what a capability does not make: resources, prompts,
logging, completions, image or audio content, progress, sampling and elicitation
(docs/mcp.md). The suite's tools that a JSON-in, JSON-out capability can be are
served under the suite's names: ``test_simple_text``, ``test_error_handling`` and
``json_schema_2020_12_tool`` (the suite's 2020-12 schema, as its fixture gives it).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aralnode import CallContext, Node
from aralnode.core.capabilities import Capability
from aralnode.store.audit import read_records
from aralnode.store.audit_verify import verify

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / ".cache" / "mcp-conformance" / "conformance-0.1.16"

SCENARIOS = (
    "server-initialize",
    "ping",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-error",
    "json-schema-2020-12",
    "server-sse-multiple-streams",
    "dns-rebinding-protection",
)

#: The suite's tool of JSON Schema 2020-12 features ($schema, $defs, $anchor, $ref,
#: allOf/anyOf, if/then/else, additionalProperties), which must reach a client as
#: it was declared.
SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}

pytestmark = pytest.mark.skipif(
    not SUITE.exists(),
    reason="the MCP conformance suite is not installed (`make mcp-conformance`: needs npm)",
)


def suite_tools(node: Node) -> None:
    @node.capability(id="test_simple_text", risk="read_only")
    async def test_simple_text() -> str:
        """Returns a simple text response."""
        return "This is a simple text response for testing."

    @node.capability(id="test_error_handling", risk="read_only")
    async def test_error_handling() -> str:
        """Always fails."""
        raise RuntimeError("This tool intentionally returns an error for testing")

    async def echo(params: Any, ctx: CallContext) -> Any:
        return {"received": params}

    node.add_capability(
        Capability(
            id="json_schema_2020_12_tool",
            handler=echo,
            description="Tool with JSON Schema 2020-12 features",
            input_schema=SCHEMA_2020_12,
            risk="read_only",
        )
    )


async def run_scenario(url: str, scenario: str, out: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(SUITE), "server", "--url", url, "--scenario", scenario, "-o", str(out),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        async with asyncio.timeout(120):
            output, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, output.decode(errors="replace")


def checks_of(out: Path) -> list[dict[str, Any]]:
    found = sorted(out.glob("*/checks.json"))
    assert len(found) == 1, found  # one scenario a run
    checks: list[dict[str, Any]] = json.loads(found[0].read_text())
    return checks


async def test_the_official_suite_passes_every_scenario_a_node_serves(
    make_node: Callable[..., Node], tmp_path: Path
) -> None:
    node = make_node("mcp-conformance", http_port=0, audit=True)
    suite_tools(node)
    async with node:
        url = f"http://127.0.0.1:{node.http_port}/mcp"
        for scenario in SCENARIOS:
            out = tmp_path / scenario
            code, output = await run_scenario(url, scenario, out)
            checks = checks_of(out)
            failed = [c for c in checks if c["status"] not in {"SUCCESS", "INFO"}]
            assert checks, (scenario, output)
            assert not failed, (scenario, failed, output)
            assert code == 0, (scenario, output)
    # The suite's calls went through the pipeline: on record, the failure as one.
    directory = node.config.resolved_data_dir / "audit"
    assert verify(directory, node.identity.public_key).problem is None
    outcomes = {(r.action, r.outcome) for _, r in read_records(directory) if r.door == "mcp"}
    expected = {("test_simple_text", "ok"), ("test_error_handling", "internal_error")}
    assert expected <= outcomes, outcomes
