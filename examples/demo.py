"""The demo capabilities `make run` serves.

Load into any node with ``aralnode run --load examples/demo.py``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from aralnode import CallContext, Node


def setup(node: Node) -> None:
    @node.capability(id="demo.echo", risk="read_only")
    async def echo(text: str, times: Annotated[int, Field(ge=1, le=100)] = 1) -> dict[str, object]:
        """Echo the text back, `times` times."""
        return {"text": text, "echo": [text] * times}

    @node.capability(id="demo.add", risk="read_only")
    async def add(a: float, b: float) -> float:
        """Add two numbers."""
        return a + b

    @node.capability(id="demo.whoami", risk="read_only")
    async def whoami(ctx: CallContext) -> dict[str, object]:
        """Tell the caller how the node saw the call."""
        return {"door": ctx.door, "caller": ctx.caller or "anonymous", "signed": ctx.signed}

    @node.capability(id="demo.convert", risk="read_only")
    async def convert(
        value: float, unit: Literal["c_to_f", "f_to_c"] = "c_to_f"
    ) -> dict[str, float]:
        """Convert a temperature between Celsius and Fahrenheit."""
        out = value * 9 / 5 + 32 if unit == "c_to_f" else (value - 32) * 5 / 9
        return {"value": round(out, 4)}
