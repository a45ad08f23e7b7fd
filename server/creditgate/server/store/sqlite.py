"""The embedded engine: SQLite in WAL mode, one connection used from one worker thread."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson
import structlog
from creditgate.server.errors import FailedPrecondition, InternalError, Unavailable
from creditgate.server.store.database import Dialect, Row, Session
from creditgate.server.store.migrate import Adoption, migrate

log = structlog.get_logger(__name__)
T = TypeVar("T")
# PRAGMA user_version: 1 to 4 were the schema versions of the files written before the shared history (adopted
# below); 5 says the schema is recorded in schema_migrations. A file of a higher version is refused.
SCHEMA_VERSION = 5
# The page cache (KiB) and the WAL's size in pages before it is checkpointed (see open).
CACHE_KIB = 65536
WAL_CHECKPOINT_PAGES = 10000
# A file of a schema version before the shared history runs the whole history: every CREATE in it says IF NOT
# EXISTS, so the tables the file has are kept as they are and those it lacks are made. Only adding the rollover cap
# column cannot be said twice: files of versions 3 and 4 have it. A version 1 file's ledger is moved (_adopt).
CAP_ADDED = frozenset({"0003.ledger_rollover_cap"})
LEGACY_APPLIED = {1: frozenset[str](), 2: frozenset[str](), 3: CAP_ADDED, 4: CAP_ADDED}
# The ledger columns of schema version 1 files.
LEDGER_COLUMNS_V1 = (
    "customer_id, seq, kind, credits_delta, balance_after, created_ms, feature, quantity, dimensions,"
    " free_units_used, overage_credits, bucket_id, request_id, reason, price, bucket_priority, bucket_expires_ms,"
    " reserved_delta, reservation_id, takes"
)


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


SQLITE = Dialect(
    name="sqlite",
    least="MIN",
    position="instr",
    schema_words={"json": "TEXT", "identity": "INTEGER PRIMARY KEY AUTOINCREMENT", "without_rowid": "WITHOUT ROWID"},
    encode_json=_json_text,
    decode_json=json.loads,
)


class SqliteSession:
    dialect = SQLITE

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        return self._db.execute(query, params).rowcount

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> int:
        return self._db.executemany(query, rows).rowcount if rows else 0

    def fetchall(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._db.execute(query, params).fetchall()

    def fetchone(self, query: str, params: Sequence[Any] = ()) -> Row | None:
        row: Row | None = self._db.execute(query, params).fetchone()
        return row

    def script(self, query: str) -> None:
        # Statement by statement: executescript would commit the caller's transaction half-way.
        pending = ""
        for line in query.splitlines(keepends=True):
            if line.startswith("--") and not pending:
                continue
            pending += line
            if sqlite3.complete_statement(pending):
                self._db.execute(pending)
                pending = ""
        if pending.strip():
            self._db.execute(pending)


class SqliteDatabase:
    dialect = SQLITE

    def __init__(self, path: str) -> None:
        self._path = path
        # sqlite3 connections belong to one thread: every call runs on this one.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._session: SqliteSession | None = None
        self._db: sqlite3.Connection | None = None

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._connect)

    def _connect(self) -> None:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        try:
            version = _schema_version(db)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=5000")
            # Under many customers each flushed batch touches a page per customer: the pages stay cached, and the
            # WAL is copied back into the file every 40 MiB rather than 4 MiB (a page written many times between
            # two checkpoints is copied once). Both together: 17,800 -> 29,500 entries/s (bench/NOTES.md).
            db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}")
            session = SqliteSession(db)
            applied = _in_transaction(db, lambda: _migrate(db, session, version))
        except BaseException:
            db.close()
            raise
        if applied:
            log.info("sqlite_migrated", applied=applied)
        self._db, self._session = db, session

    async def close(self) -> None:
        if self._db is not None:
            db, self._db, self._session = self._db, None, None
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)

    async def read(self, work: Callable[[Session], T]) -> T:
        return await self._run(work, transaction=False)

    async def write(self, work: Callable[[Session], T]) -> T:
        return await self._run(work, transaction=True)

    async def _run(self, work: Callable[[Session], T], transaction: bool) -> T:
        def call() -> T:
            if self._db is None or self._session is None:
                raise Unavailable("the SQLite store is not open")
            session = self._session
            return _in_transaction(self._db, lambda: work(session)) if transaction else work(session)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._thread, call)
        except sqlite3.OperationalError as exc:
            raise Unavailable(f"SQLite: {exc}") from exc
        except (sqlite3.IntegrityError, sqlite3.DataError, OverflowError) as exc:
            # The data cannot be stored as it is: the flusher parks the record that causes it.
            raise InternalError(f"SQLite rejected the batch: {exc}") from exc


def _in_transaction(db: sqlite3.Connection, work: Callable[[], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work()
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return result


def _migrate(db: sqlite3.Connection, session: SqliteSession, version: int) -> list[str]:
    applied = migrate(session, lambda _: _adopt(db, version), refuse_unknown=True)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    return applied


def _schema_version(db: sqlite3.Connection) -> int:
    """The file's schema version. A file written by a newer creditgate is refused and left as it is: this one might
    write rows that version does not expect."""
    version: int = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise FailedPrecondition(
            f"the SQLite file has schema version {version}; this creditgate knows versions up to {SCHEMA_VERSION}",
            field="database_url",
            reason="STORE_SCHEMA_TOO_NEW",
        )
    return version


def _adopt(db: sqlite3.Connection, version: int) -> Adoption | None:
    """A file from before the shared history (schema version 1 to 4), or None for a new one. A version 1 file's
    ledger was keyed by (customer_id, seq) itself: it is set aside, and its entries copied into the ledger the
    history makes."""
    if version == 0:
        return None
    if version != 1:
        return Adoption(LEGACY_APPLIED[version])
    # The triggers go with the old table; the history makes them again on the new one.
    db.execute("DROP TRIGGER ledger_entries_no_update")
    db.execute("DROP TRIGGER ledger_entries_no_delete")
    db.execute("ALTER TABLE ledger_entries RENAME TO ledger_entries_v1")

    def move_ledger(session: Session) -> None:
        session.execute(
            f"INSERT INTO ledger_entries ({LEDGER_COLUMNS_V1}) SELECT {LEDGER_COLUMNS_V1} FROM ledger_entries_v1"
        )
        session.execute("DROP TABLE ledger_entries_v1")

    return Adoption(LEGACY_APPLIED[1], move_ledger)
