"""PostgreSQL: one asyncpg pool per service, bound to its own schema, and forward-only migrations.

Migrations are `NNNN_name.sql` files. Each component (a service, or the shared outbox) keeps its
own numbering in `<schema>.schema_migrations`, together with a checksum: a migration edited or
removed after it was applied stops the service from starting, because migrations only go forward.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import pathlib
import re

import asyncpg

log = logging.getLogger("invo.db")

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
COMMON_MIGRATIONS = pathlib.Path(__file__).parent / "migrations"


class MigrationError(Exception):
    pass


@dataclasses.dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def check_schema_name(schema: str) -> str:
    if not _SCHEMA.match(schema):
        raise MigrationError(f"invalid schema name {schema!r}")
    return schema


def load_migrations(component: str, directory: pathlib.Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path}: migration files are named NNNN_name.sql")
        found.append(Migration(component, int(m.group(1)), m.group(2), path.read_text()))
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise MigrationError(f"{directory}: versions must run 1, 2, 3... without gaps, got {versions}")
    return found


async def migrate(conn: asyncpg.Connection, schema: str, migrations: list[Migration]) -> int:
    """Apply what is new, in order, each in its own transaction. Returns how many were applied."""
    check_schema_name(schema)
    # Serialises concurrent start-ups of replicas of the same service.
    lock_key = int.from_bytes(hashlib.sha256(f"invo-migrate:{schema}".encode()).digest()[:8], "big", signed=True)
    await conn.execute("SELECT pg_advisory_lock($1)", lock_key)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await conn.execute(
            f'CREATE TABLE IF NOT EXISTS "{schema}".schema_migrations ('
            " component text NOT NULL, version integer NOT NULL, name text NOT NULL,"
            " checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),"
            " PRIMARY KEY (component, version))"
        )
        rows = await conn.fetch(f'SELECT component, version, name, checksum FROM "{schema}".schema_migrations')
        applied = {(r["component"], r["version"]): r for r in rows}
        known = {(m.component, m.version) for m in migrations}
        # A schema belongs to one service: every migration ever applied to it must still exist.
        for key, row in applied.items():
            if key not in known:
                raise MigrationError(
                    f"{schema}: migration {key[0]} {key[1]:04d}_{row['name']} was applied but its file is gone"
                )
        count = 0
        for m in migrations:
            row = applied.get((m.component, m.version))
            if row is not None:
                if row["checksum"] != m.checksum:
                    raise MigrationError(
                        f"{schema}: migration {m.component} {m.version:04d}_{m.name} changed after it was "
                        "applied; migrations are forward-only, add a new one instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(f'SET LOCAL search_path TO "{schema}"')
                await conn.execute(m.sql)
                await conn.execute(
                    f'INSERT INTO "{schema}".schema_migrations (component, version, name, checksum)'
                    " VALUES ($1, $2, $3, $4)",
                    m.component,
                    m.version,
                    m.name,
                    m.checksum,
                )
            log.info("applied migration %s %04d_%s to %s", m.component, m.version, m.name, schema)
            count += 1
        return count
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock_key)


def service_migrations(service: str, directory: pathlib.Path, *, outbox: bool) -> list[Migration]:
    found = load_migrations(service, directory)
    if outbox:
        found = load_migrations("outbox", COMMON_MIGRATIONS / "outbox") + found
    return found


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A released connection skips asyncpg's reset query (`RESET ALL; UNLISTEN *; CLOSE ALL;
    pg_advisory_unlock_all()`), a round trip on every release. Pooled connections carry no session
    state to undo: settings are `SET LOCAL`, advisory locks `pg_advisory_xact_lock`, cursors live
    inside transactions, and nothing LISTENs. asyncpg still rolls back an open transaction first."""


async def create_pool(
    database_url: str,
    schema: str,
    *,
    application_name: str,
    max_size: int,
    statement_timeout_ms: int,
) -> asyncpg.Pool:
    check_schema_name(schema)
    pool = await asyncpg.create_pool(
        database_url,
        min_size=1,
        max_size=max_size,
        timeout=10.0,
        reset=_keep_session,
        command_timeout=max(1.0, statement_timeout_ms / 1000 + 1.0),
        server_settings={
            "search_path": schema,
            "application_name": application_name,
            "statement_timeout": str(statement_timeout_ms),
            "idle_in_transaction_session_timeout": "60000",
            "TimeZone": "UTC",
        },
    )
    if pool is None:
        raise RuntimeError("asyncpg.create_pool returned None")
    return pool


async def migrate_url(database_url: str, schema: str, migrations: list[Migration]) -> int:
    conn = await asyncpg.connect(database_url, timeout=10.0)
    try:
        return await migrate(conn, schema, migrations)
    finally:
        await conn.close()


async def drop_schema(database_url: str, schema: str) -> None:
    """Drops a scratch schema (a test's or the benchmark's) and everything in it."""
    check_schema_name(schema)
    conn = await asyncpg.connect(database_url, timeout=10.0)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
