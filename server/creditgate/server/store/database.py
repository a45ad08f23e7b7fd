"""What a store's SQL runs on: a Database hands a unit of work a Session on one of its connections, in a worker
thread, so every query is written once (placeholders `?`) as plain synchronous code; the Dialect names the few
places where SQLite and PostgreSQL differ."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
Row = tuple[Any, ...]
# Later than any seq or time: the first page of a listing newest first.
NEWEST = 2**62


@dataclass(frozen=True, slots=True)
class Dialect:
    name: str
    # The scalar functions the shared SQL needs by another name: the smaller of two values; where a string
    # starts inside another (1-based, 0 when it does not).
    least: str
    position: str
    # Words the shared migrations leave to the engine ({json}, {identity}, {without_rowid}: see migrations/).
    schema_words: Mapping[str, str]
    # A JSON value as the engine keeps it, and back.
    encode_json: Callable[[Any], Any]
    decode_json: Callable[[Any], Any]


class Session(Protocol):
    """One connection, for one unit of work."""

    dialect: Dialect

    def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; how many rows it changed."""
        ...

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> int:
        """Run one statement per row; how many rows they changed together."""
        ...

    def fetchall(self, query: str, params: Sequence[Any] = ()) -> list[Row]: ...

    def fetchone(self, query: str, params: Sequence[Any] = ()) -> Row | None: ...

    def script(self, query: str) -> None:
        """Run a migration's statements (no parameters)."""
        ...


class Database(Protocol):
    dialect: Dialect

    async def open(self) -> None:
        """Connect and bring the schema up to date (store/migrate.py)."""
        ...

    async def close(self) -> None: ...

    async def read(self, work: Callable[[Session], T]) -> T: ...

    async def write(self, work: Callable[[Session], T]) -> T:
        """Run `work` in one transaction: all of it is stored, or (on any error) none of it."""
        ...


def placeholders(count: int) -> str:
    return ", ".join("?" * count)
