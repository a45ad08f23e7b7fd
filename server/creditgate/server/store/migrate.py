"""One schema history for both engines: the migrations in migrations/, applied in the order of their numbers and
recorded in schema_migrations.

A migration NNNN.name is a shared file NNNN.name.sql (with {json}, {identity} and {without_rowid} left to the
engine's Dialect), a part for one engine (NNNN.name.sqlite.sql, NNNN.name.postgresql.sql) where the engines truly
differ, or both (the shared file runs first). Every CREATE in them says IF NOT EXISTS: a store from before this
history (store/sqlite.py and store/postgres.py adopt those) may hold some of a migration's tables already."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources

from creditgate.server.errors import FailedPrecondition
from creditgate.server.store.database import Dialect, Session

FILE_NAME = re.compile(r"^(?P<id>\d{4}\.[a-z0-9_]+)(?:\.(?P<engine>sqlite|postgresql))?\.sql$")
CREATE_HISTORY = "CREATE TABLE IF NOT EXISTS schema_migrations (id TEXT PRIMARY KEY, applied_ms BIGINT NOT NULL)"


@dataclass(frozen=True, slots=True)
class Migration:
    id: str
    shared: str
    # Engine name -> that engine's part.
    parts: dict[str, str] = field(default_factory=dict)

    def sql(self, dialect: Dialect) -> str:
        return self.shared.format_map(dialect.schema_words) + "\n" + self.parts.get(dialect.name, "")


@dataclass(frozen=True, slots=True)
class Adoption:
    """A store from before this history: the migrations its schema already holds, and what to do once the rest is
    applied (None: nothing)."""

    applied: frozenset[str]
    finish: Callable[[Session], None] | None = None


def history() -> list[Migration]:
    """Every migration shipped, oldest first."""
    shared: dict[str, str] = {}
    parts: dict[str, dict[str, str]] = {}
    for path in resources.files("creditgate.server.store").joinpath("migrations").iterdir():
        matched = FILE_NAME.match(path.name)
        if matched is None:
            continue
        engine = matched["engine"]
        if engine is None:
            shared[matched["id"]] = path.read_text()
        else:
            parts.setdefault(matched["id"], {})[engine] = path.read_text()
    return [Migration(id, shared.get(id, ""), parts.get(id, {})) for id in sorted(shared.keys() | parts.keys())]


def migrate(session: Session, adopt: Callable[[Session], Adoption | None], refuse_unknown: bool) -> list[str]:
    """Apply the migrations `session`'s store lacks, in one transaction the caller holds (and locks against other
    replicas migrating at once); returns their ids. `adopt` reads a store from before this history (None: there is
    none). With `refuse_unknown`, a store that a newer creditgate migrated is refused and left as it is."""
    migrations = history()
    session.script(CREATE_HISTORY)
    applied = {row[0] for row in session.fetchall("SELECT id FROM schema_migrations")}
    unknown = sorted(applied - {migration.id for migration in migrations})
    if unknown and refuse_unknown:
        raise FailedPrecondition(
            f"the store was migrated by a newer creditgate (migrations {', '.join(unknown)} are unknown to this one)",
            field="database_url",
            reason="STORE_SCHEMA_TOO_NEW",
        )
    adoption = None if applied else adopt(session)
    if adoption is not None:
        _record(session, adoption.applied)
        applied = set(adoption.applied)
    pending = [migration for migration in migrations if migration.id not in applied]
    for migration in pending:
        session.script(migration.sql(session.dialect))
        _record(session, [migration.id])
    if adoption is not None and adoption.finish is not None:
        adoption.finish(session)
    return [migration.id for migration in pending]


def _record(session: Session, ids: Iterable[str]) -> None:
    now_ms = int(time.time() * 1000)
    session.executemany("INSERT INTO schema_migrations (id, applied_ms) VALUES (?, ?)", [(id, now_ms) for id in ids])
