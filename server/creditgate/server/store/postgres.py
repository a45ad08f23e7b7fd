"""The production engine: PostgreSQL through psycopg 3 (a connection pool used from worker threads); the schema
owner migrates the schema at start and gives the sidecar's role what it may do."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
import structlog
from creditgate.server.errors import InternalError, Unavailable
from creditgate.server.store.database import Dialect, Row, Session
from creditgate.server.store.migrate import Adoption, history, migrate
from psycopg import sql
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

log = structlog.get_logger(__name__)
T = TypeVar("T")
TABLES = (
    "catalog_applications",
    "customers",
    "subscription_changes",
    "settings_changes",
    "ledger_entries",
    "ledger_conflicts",
    "parked_entries",
    "parked_resolutions",
    "periods",
    "invoices",
    "events",
    "deliveries",
)
# Billing tables whose rows change: a plan change ends a period early; deliveries record their attempts.
UPDATED_TABLES = ("periods", "deliveries")
CONNECT_TIMEOUT_SECONDS = 10
# Replicas starting together migrate one at a time: the first takes this transaction lock, the others wait for it
# and then find nothing left to apply.
MIGRATION_LOCK = 0x63726564_69746761  # "creditga"


def _as_stored(value: Any) -> Any:
    return value  # psycopg already decodes jsonb into dicts and lists


POSTGRES = Dialect(
    name="postgresql",
    least="LEAST",
    position="strpos",
    schema_words={"json": "JSONB", "identity": "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY", "without_rowid": ""},
    encode_json=Jsonb,
    decode_json=_as_stored,
)


@lru_cache(maxsize=256)
def _placeholders(query: str) -> str:
    """The shared SQL's `?` placeholders in psycopg's spelling (a literal % doubled)."""
    return query.replace("%", "%%").replace("?", "%s")


class PostgresSession:
    dialect = POSTGRES

    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    def execute(self, query: str, params: Sequence[Any] = ()) -> int:
        return self._cursor.execute(_placeholders(query), params).rowcount

    def executemany(self, query: str, rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        self._cursor.executemany(_placeholders(query), rows)
        return self._cursor.rowcount

    def fetchall(self, query: str, params: Sequence[Any] = ()) -> list[Row]:
        return self._cursor.execute(_placeholders(query), params).fetchall()

    def fetchone(self, query: str, params: Sequence[Any] = ()) -> Row | None:
        return self._cursor.execute(_placeholders(query), params).fetchone()

    def script(self, query: str) -> None:
        # No parameters: sent as it is, several statements at once.
        self._cursor.execute(query.encode())


class PostgresDatabase:
    """`url` is the sidecar's role (SELECT and INSERT only); `migration_url` the schema owner's, which applies
    the migrations and grants at start (unset: the sidecar's role owns the schema and revokes its own UPDATE,
    DELETE and TRUNCATE on the ledger)."""

    dialect = POSTGRES

    def __init__(self, url: str, migration_url: str | None = None, pool_size: int = 4) -> None:
        self._url = url
        self._migration_url = migration_url or url
        self._threads = ThreadPoolExecutor(max_workers=pool_size, thread_name_prefix="postgres")
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=CONNECT_TIMEOUT_SECONDS,
            kwargs={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
        )

    async def open(self) -> None:
        def connect() -> None:
            migrate_and_grant(self._url, self._migration_url)
            self._pool.open(wait=True, timeout=CONNECT_TIMEOUT_SECONDS)

        await self._call(connect)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._threads, self._pool.close)
        self._threads.shutdown(wait=True)

    async def read(self, work: Callable[[Session], T]) -> T:
        return await self.write(work)

    async def write(self, work: Callable[[Session], T]) -> T:
        def call() -> T:
            # A pooled connection runs `work` in one transaction, committed when it returns.
            with self._pool.connection() as conn, conn.cursor() as cursor:
                return work(PostgresSession(cursor))

        return await self._call(call)

    async def _call(self, call: Callable[[], T]) -> T:
        """`call` on a worker thread; driver errors become ours."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._threads, call)
        except (psycopg.OperationalError, PoolTimeout, OSError) as exc:
            raise Unavailable(f"PostgreSQL: {exc}") from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            # A standby, or a database or role set default_transaction_read_only: nothing is wrong with the data,
            # so writes wait (the flusher retries; entries stay in Redis) until it is writable again.
            raise Unavailable(
                f"PostgreSQL refuses writes (SQLSTATE 25006 read_only_sql_transaction: a standby, or"
                f" default_transaction_read_only is on): {exc}"
            ) from exc
        except (psycopg.DataError, psycopg.IntegrityError, psycopg.ProgrammingError) as exc:
            # The data cannot be stored as it is: the flusher parks the record that causes it.
            raise InternalError(f"PostgreSQL rejected the batch: {exc}") from exc


def migrate_and_grant(url: str, migration_url: str) -> None:
    """Apply pending migrations as the schema owner, then give the sidecar's role what it may do (blocking)."""
    with psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as conn:
        sidecar_role = conn.execute("SELECT current_user").fetchone()
    with psycopg.connect(migration_url, connect_timeout=CONNECT_TIMEOUT_SECONDS) as owner:
        with owner.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            # An older replica still running when a newer one has migrated keeps working: it reads and writes the
            # tables it knows, which a migration only adds to.
            applied = migrate(PostgresSession(cursor), _adopt, refuse_unknown=False)
            owner_role = cursor.execute("SELECT current_user").fetchone()
        owner.commit()
    if applied:
        log.info("postgres_migrated", applied=applied)
    if sidecar_role is None or owner_role is None:
        raise Unavailable("PostgreSQL did not say which role it runs as")
    with psycopg.connect(migration_url, connect_timeout=CONNECT_TIMEOUT_SECONDS, autocommit=True) as owner:
        tables = sql.SQL(", ").join(sql.Identifier(table) for table in TABLES)
        if owner_role == sidecar_role:
            owner.execute("REVOKE UPDATE, DELETE, TRUNCATE ON ledger_entries FROM CURRENT_USER")
        else:
            role = sql.Identifier(sidecar_role[0])
            owner.execute(sql.SQL("GRANT SELECT, INSERT ON {} TO {}").format(tables, role))
            updated = sql.SQL(", ").join(sql.Identifier(table) for table in UPDATED_TABLES)
            owner.execute(sql.SQL("GRANT UPDATE ON {} TO {}").format(updated, role))


def _adopt(session: Session) -> Adoption | None:
    """A database migrated by yoyo before the shared history: the migrations its _yoyo_migration table lists
    (their ids are the history's). yoyo's tables are left as they were."""
    if session.fetchone("SELECT to_regclass('_yoyo_migration')") == (None,):
        return None
    shipped = {migration.id for migration in history()}
    rows = session.fetchall("SELECT migration_id FROM _yoyo_migration")
    return Adoption(frozenset(row[0] for row in rows) & shipped)
