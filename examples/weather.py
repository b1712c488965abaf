"""The README's first agent: one capability that callers must hold a scope for.

Run it with ``aralnode run --load examples/weather.py``; call it with an API key
that carries ``weather:read`` (``aralnode apikey create ... --scopes weather:read``).
"""

from __future__ import annotations

from aralnode import CallContext, Node


def setup(node: Node) -> None:
    @node.capability(id="weather.today", risk="external_api", scopes=("weather:read",))
    async def today(city: str, ctx: CallContext) -> dict[str, object]:
        """Today's weather for a city."""
        return {"city": city, "sky": "clear", "asked_by": ctx.principal}
