"""The library example: a protobuf service with google.api.http annotations.

Load it into a node and every door serves it, with no per-method code anywhere::

    aralnode run --discovery none --load examples/library/server.py
    curl localhost:8080/v1/shelves/sci/books/1
    curl -X POST localhost:8080/v1/shelves/sci/books -H 'content-type: application/json' \\
         -d '{"title": "Cosmos", "author": "Sagan"}'
    curl localhost:8080/openapi.json

The generated ``library_pb2*.py`` / ``.pyi`` and ``library.binpb`` (a descriptor set
with the proto comments, for descriptions) are made by ``make gen``.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator

import library_pb2 as lib  # generated next to this file; importable while node.load runs
from google.protobuf.timestamp_pb2 import Timestamp

from aralnode import CallContext, Node
from aralnode.core.errors import InvalidParameters, NotFound

_SEED = (
    ("sci", "Cosmos", "Carl Sagan", 1980, lib.GENRE_SCIENCE, ("space", "classic")),
    ("sci", "The Selfish Gene", "Richard Dawkins", 1976, lib.GENRE_SCIENCE, ("biology",)),
    ("fic", "Dune", "Frank Herbert", 1965, lib.GENRE_FICTION, ("space", "desert")),
    ("his", "SPQR", "Mary Beard", 2015, lib.GENRE_HISTORY, ("rome",)),
)


class Library:
    """In-memory shelves. Methods take the request message and the call context."""

    def __init__(self) -> None:
        self.shelves: dict[str, dict[int, lib.Book]] = {}
        self._ids = itertools.count(1)
        for shelf, title, author, year, genre, tags in _SEED:
            self._add(
                shelf, lib.Book(title=title, author=author, year=year, genre=genre, tags=tags)
            )

    def _add(self, shelf: str, book: lib.Book) -> lib.Book:
        stored = lib.Book()
        stored.CopyFrom(book)
        stored.shelf, stored.id = shelf, next(self._ids)
        stamp = Timestamp()
        stamp.FromSeconds(1_767_225_600 + stored.id)
        stored.create_time.CopyFrom(stamp)
        self.shelves.setdefault(shelf, {})[stored.id] = stored
        return stored

    def _find(self, shelf: str, book_id: int) -> lib.Book:
        book = self.shelves.get(shelf, {}).get(book_id)
        if book is None:
            raise NotFound(
                f"no book {book_id} on shelf {shelf!r}",
                details={"shelf": shelf, "book_id": book_id},
            )
        return book

    async def GetBook(self, request: lib.GetBookRequest, ctx: CallContext) -> lib.Book:
        return self._find(request.shelf, request.book_id)

    async def GetTitle(self, request: lib.GetBookRequest, ctx: CallContext) -> lib.Book:
        return self._find(request.shelf, request.book_id)

    async def ListBooks(
        self, request: lib.ListBooksRequest, ctx: CallContext
    ) -> lib.ListBooksResponse:
        shelf = request.shelf or request.parent.removeprefix("shelves/")
        books = [
            b
            for b in self.shelves.get(shelf, {}).values()
            if (not request.author or b.author == request.author)
            and (not request.genre or b.genre == request.genre)
            and b.year >= request.min_year
        ]
        if request.page_size < 0:
            raise InvalidParameters(
                "page_size must not be negative", details={"field": "page_size"}
            )
        if request.page_size:
            books = books[: request.page_size]
        return lib.ListBooksResponse(books=books)

    async def CreateBook(self, request: lib.CreateBookRequest, ctx: CallContext) -> lib.Book:
        if not request.shelf or not request.book.title:
            raise InvalidParameters(
                "a book needs a shelf and a title", details={"field": "book.title"}
            )
        return self._add(request.shelf, request.book)

    async def UpdateBook(self, request: lib.UpdateBookRequest, ctx: CallContext) -> lib.Book:
        book = self._find(request.book.shelf, request.book.id)
        for name in ("title", "author", "year", "genre"):
            setattr(book, name, getattr(request.book, name))
        del book.tags[:]
        book.tags.extend(request.book.tags)
        return book

    async def DeleteBook(
        self, request: lib.DeleteBookRequest, ctx: CallContext
    ) -> lib.DeleteBookResponse:
        removed = self.shelves.get(request.shelf, {}).pop(request.book_id, None)
        return lib.DeleteBookResponse(deleted=removed is not None)

    async def Search(self, request: lib.SearchRequest, ctx: CallContext) -> lib.SearchResponse:
        text = request.text.lower()
        found = [
            b
            for shelf in self.shelves.values()
            for b in shelf.values()
            if text in b.title.lower()
            or text in b.author.lower()
            or (request.include_tags and any(text in t.lower() for t in b.tags))
        ]
        return lib.SearchResponse(books=found, shelves_searched=len(self.shelves))

    async def WatchShelf(
        self, request: lib.WatchShelfRequest, ctx: CallContext
    ) -> AsyncIterator[lib.Book]:
        if request.shelf not in self.shelves:
            raise NotFound(f"no shelf {request.shelf!r}")
        for book in list(self.shelves[request.shelf].values()):
            yield book


def setup(node: Node) -> None:
    """Serve the library on every door of ``node``."""
    node.add_service(Library(), lib)
