"""Docs that state facts about the code are checked against the code."""

from __future__ import annotations

from pathlib import Path

from aralnode.core.errors import error_table

ROOT = Path(__file__).resolve().parent.parent


def test_error_table_in_protocol_doc_matches_code() -> None:
    doc = (ROOT / "docs" / "protocol.md").read_text()
    for r in error_table():
        cells = (r["error"], r["grpc"], r["http"], r["code"], r["reason"], r["mcp"])
        row = "| " + " | ".join(str(c) for c in cells) + " |"
        assert row in doc, f"docs/protocol.md is missing or has a stale row: {row}"


def test_readme_gives_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make run" in readme
    assert "make test" in readme
