"""A plain ``async def`` as a capability: its parameters validated from its hints.

Parameters that are one plain set of fields are validated as that set (no model
instance per call); others (a recursive model) by the parameters model. Both must
give the same answers and the same errors.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
import pytest
from pydantic import Field

from aralnode.core.capabilities import function_capability
from aralnode.core.context import CallContext
from aralnode.core.errors import InvalidParameters


class Book(pydantic.BaseModel):
    title: str
    year: int = 1980


class Tree(pydantic.BaseModel):
    name: str
    children: list[Tree] = []


async def shelve(book: Book, copies: Annotated[int, Field(ge=1, le=9)] = 2) -> dict[str, Any]:
    return {"title": book.title, "year": book.year, "copies": copies}


async def count(tree: Tree, ctx: CallContext) -> dict[str, Any]:
    return {"name": tree.name, "children": len(tree.children), "door": ctx.door}


async def call(fn: Any, params: Any) -> Any:
    return await function_capability(fn).handler(params, CallContext(door="local"))


async def test_fields_are_validated_with_defaults_filled_in() -> None:
    assert await call(shelve, {"book": {"title": "Dune"}}) == {
        "title": "Dune",
        "year": 1980,
        "copies": 2,
    }
    assert await call(shelve, {"book": {"title": "Dune", "year": 1965}, "copies": 9}) == {
        "title": "Dune",
        "year": 1965,
        "copies": 9,
    }


async def test_a_recursive_model_is_validated_too_and_the_context_passed() -> None:
    tree = {"name": "root", "children": [{"name": "a"}, {"name": "b", "children": []}]}
    assert await call(count, {"tree": tree}) == {"name": "root", "children": 2, "door": "local"}


@pytest.mark.parametrize(
    ("fn", "params", "fields"),
    [
        (shelve, {"book": {"title": 3}, "extra": 1}, ["book.title", "extra"]),
        (shelve, {"book": {"title": "x"}, "copies": 10}, ["copies"]),
        (shelve, {}, ["book"]),
        (count, {"tree": {"children": [{}]}}, ["tree.name", "tree.children.0.name"]),
        (count, {"tree": {"name": "r"}, "ctx": "forged"}, ["ctx"]),
    ],
)
async def test_bad_parameters_are_refused_field_by_field(
    fn: Any, params: dict[str, Any], fields: list[str]
) -> None:
    with pytest.raises(InvalidParameters) as info:
        await call(fn, params)
    assert [e["field"] for e in info.value.details["errors"]] == fields
    assert all(f in info.value.message for f in fields)


@pytest.mark.parametrize("params", [[1, 2], "text", 3])
async def test_parameters_that_are_not_an_object_are_refused(params: Any) -> None:
    with pytest.raises(InvalidParameters, match="must be a JSON object"):
        await call(shelve, params)


def test_both_ways_of_validating_are_exercised_here() -> None:
    """``shelve``'s parameters are plain fields; ``count``'s recursive model is not."""
    from typing import get_type_hints

    from aralnode.core.capabilities import _parameters, _validator

    def fields_only(fn: Any) -> bool:
        model, _ = _parameters(fn, get_type_hints(fn, include_extras=True))
        return _validator(model)[1]

    assert fields_only(shelve)
    assert not fields_only(count)
