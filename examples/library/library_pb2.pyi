import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Genre(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENRE_UNSPECIFIED: _ClassVar[Genre]
    GENRE_FICTION: _ClassVar[Genre]
    GENRE_SCIENCE: _ClassVar[Genre]
    GENRE_HISTORY: _ClassVar[Genre]
GENRE_UNSPECIFIED: Genre
GENRE_FICTION: Genre
GENRE_SCIENCE: Genre
GENRE_HISTORY: Genre

class Book(_message.Message):
    __slots__ = ("shelf", "id", "title", "author", "year", "genre", "tags", "create_time")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    YEAR_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    id: int
    title: str
    author: str
    year: int
    genre: Genre
    tags: _containers.RepeatedScalarFieldContainer[str]
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, shelf: _Optional[str] = ..., id: _Optional[int] = ..., title: _Optional[str] = ..., author: _Optional[str] = ..., year: _Optional[int] = ..., genre: _Optional[_Union[Genre, str]] = ..., tags: _Optional[_Iterable[str]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetBookRequest(_message.Message):
    __slots__ = ("shelf", "book_id")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    book_id: int
    def __init__(self, shelf: _Optional[str] = ..., book_id: _Optional[int] = ...) -> None: ...

class ListBooksRequest(_message.Message):
    __slots__ = ("shelf", "author", "genre", "page_size", "parent", "min_year")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    MIN_YEAR_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    author: str
    genre: Genre
    page_size: int
    parent: str
    min_year: int
    def __init__(self, shelf: _Optional[str] = ..., author: _Optional[str] = ..., genre: _Optional[_Union[Genre, str]] = ..., page_size: _Optional[int] = ..., parent: _Optional[str] = ..., min_year: _Optional[int] = ...) -> None: ...

class ListBooksResponse(_message.Message):
    __slots__ = ("books",)
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    books: _containers.RepeatedCompositeFieldContainer[Book]
    def __init__(self, books: _Optional[_Iterable[_Union[Book, _Mapping]]] = ...) -> None: ...

class CreateBookRequest(_message.Message):
    __slots__ = ("shelf", "book")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    book: Book
    def __init__(self, shelf: _Optional[str] = ..., book: _Optional[_Union[Book, _Mapping]] = ...) -> None: ...

class UpdateBookRequest(_message.Message):
    __slots__ = ("book",)
    BOOK_FIELD_NUMBER: _ClassVar[int]
    book: Book
    def __init__(self, book: _Optional[_Union[Book, _Mapping]] = ...) -> None: ...

class DeleteBookRequest(_message.Message):
    __slots__ = ("shelf", "book_id")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_ID_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    book_id: int
    def __init__(self, shelf: _Optional[str] = ..., book_id: _Optional[int] = ...) -> None: ...

class DeleteBookResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: bool
    def __init__(self, deleted: _Optional[bool] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("text", "include_tags")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_TAGS_FIELD_NUMBER: _ClassVar[int]
    text: str
    include_tags: bool
    def __init__(self, text: _Optional[str] = ..., include_tags: _Optional[bool] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("books", "shelves_searched")
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    SHELVES_SEARCHED_FIELD_NUMBER: _ClassVar[int]
    books: _containers.RepeatedCompositeFieldContainer[Book]
    shelves_searched: int
    def __init__(self, books: _Optional[_Iterable[_Union[Book, _Mapping]]] = ..., shelves_searched: _Optional[int] = ...) -> None: ...

class WatchShelfRequest(_message.Message):
    __slots__ = ("shelf",)
    SHELF_FIELD_NUMBER: _ClassVar[int]
    shelf: str
    def __init__(self, shelf: _Optional[str] = ...) -> None: ...
