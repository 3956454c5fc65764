"""Forward-only migrations against real PostgreSQL, each test in fresh schemas of its own."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
import pytest

from devstack.stack import Stack
from services.common import db
from services.common.service import SPECS

CREATE_WIDGETS = "CREATE TABLE widgets (id bigint PRIMARY KEY, name text NOT NULL);\n"
CREATE_GADGETS = "CREATE TABLE gadgets (id bigint PRIMARY KEY, widget_id bigint REFERENCES widgets (id));\n"
ADD_COLOUR = (
    "ALTER TABLE widgets ADD COLUMN colour text;\nINSERT INTO widgets (id, name, colour) VALUES (1, 'w', 'red');\n"
)


@pytest.fixture
def database_url(stack: Stack) -> str:
    return stack.env["INVO_DATABASE_URL"]


@pytest.fixture
async def new_schema(database_url: str) -> AsyncIterator[Callable[[], str]]:
    """Makes fresh schema names; every schema named is dropped at the end."""
    made: list[str] = []

    def make() -> str:
        made.append(f"t_{secrets.token_hex(4)}")
        return made[-1]

    yield make
    conn = await asyncpg.connect(database_url)
    try:
        for schema in made:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(database_url)
    try:
        yield c
    finally:
        await c.close()


def write_dir(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (directory / name).write_text(sql)
    return directory


async def tables(conn: asyncpg.Connection, schema: str) -> set[str]:
    rows = await conn.fetch("SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)
    return {r["table_name"] for r in rows}


async def recorded(conn: asyncpg.Connection, schema: str) -> list[tuple[str, int, str, str]]:
    rows = await conn.fetch(
        f'SELECT component, version, name, checksum FROM "{schema}".schema_migrations ORDER BY component, version'
    )
    return [(r["component"], r["version"], r["name"], r["checksum"]) for r in rows]


def sha(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


async def test_applying_twice_applies_once(
    conn: asyncpg.Connection, new_schema: Callable[[], str], tmp_path: Path
) -> None:
    schema = new_schema()
    d = write_dir(
        tmp_path / "svc",
        {"0001_create.sql": CREATE_WIDGETS, "0002_gadgets.sql": CREATE_GADGETS, "0003_colour.sql": ADD_COLOUR},
    )
    search_path = await conn.fetchval("SHOW search_path")
    assert await db.migrate(conn, schema, db.load_migrations("svc", d)) == 3
    assert await db.migrate(conn, schema, db.load_migrations("svc", d)) == 0
    assert await conn.fetchval("SHOW search_path") == search_path  # the caller's session is left as it was

    assert await tables(conn, schema) == {"schema_migrations", "widgets", "gadgets"}
    assert await conn.fetch(f'SELECT id, name, colour FROM "{schema}".widgets') == [(1, "w", "red")]  # ran once
    assert await recorded(conn, schema) == [
        ("svc", 1, "create", sha(CREATE_WIDGETS)),
        ("svc", 2, "gadgets", sha(CREATE_GADGETS)),
        ("svc", 3, "colour", sha(ADD_COLOUR)),
    ]

    # A migration added later is the only one applied.
    write_dir(d, {"0004_more.sql": "CREATE TABLE sprockets (id int);"})
    assert await db.migrate(conn, schema, db.load_migrations("svc", d)) == 1
    assert "sprockets" in await tables(conn, schema)
    assert [r[1] for r in await recorded(conn, schema)] == [1, 2, 3, 4]


async def test_changed_migration_is_refused(
    conn: asyncpg.Connection, new_schema: Callable[[], str], tmp_path: Path
) -> None:
    schema = new_schema()
    d = write_dir(tmp_path / "svc", {"0001_create.sql": CREATE_WIDGETS})
    assert await db.migrate(conn, schema, db.load_migrations("svc", d)) == 1
    before = await recorded(conn, schema)

    # Even a comment changes it; and the new migration behind it must not run.
    write_dir(d, {"0001_create.sql": CREATE_WIDGETS + "-- tidied up\n", "0002_gadgets.sql": CREATE_GADGETS})
    with pytest.raises(db.MigrationError, match="forward-only") as err:
        await db.migrate(conn, schema, db.load_migrations("svc", d))
    assert "0001_create" in str(err.value)
    assert await recorded(conn, schema) == before
    assert "gadgets" not in await tables(conn, schema)


async def test_deleted_migration_is_refused(
    conn: asyncpg.Connection, new_schema: Callable[[], str], tmp_path: Path
) -> None:
    schema = new_schema()
    d = write_dir(tmp_path / "svc", {"0001_create.sql": CREATE_WIDGETS, "0002_gadgets.sql": CREATE_GADGETS})
    assert await db.migrate(conn, schema, db.load_migrations("svc", d)) == 2
    before = await recorded(conn, schema)

    (d / "0002_gadgets.sql").unlink()
    with pytest.raises(db.MigrationError, match="0002_gadgets was applied but its file is gone"):
        await db.migrate(conn, schema, db.load_migrations("svc", d))
    assert await recorded(conn, schema) == before


async def test_deleting_the_only_migration_of_a_component_is_refused(
    conn: asyncpg.Connection, new_schema: Callable[[], str], tmp_path: Path
) -> None:
    # Every service has a single 0001 today: deleting it leaves only the outbox component behind.
    schema = new_schema()
    outbox = db.load_migrations("outbox", db.COMMON_MIGRATIONS / "outbox")
    d = write_dir(tmp_path / "svc", {"0001_create.sql": CREATE_WIDGETS})
    assert await db.migrate(conn, schema, db.service_migrations("svc", d, outbox=True)) == 2
    before = await recorded(conn, schema)

    (d / "0001_create.sql").unlink()
    assert db.service_migrations("svc", d, outbox=True) == outbox
    with pytest.raises(db.MigrationError, match="svc 0001_create was applied but its file is gone"):
        await db.migrate(conn, schema, db.service_migrations("svc", d, outbox=True))
    assert await recorded(conn, schema) == before


@pytest.mark.parametrize(
    "bad_name",
    ["1_create.sql", "0001-create.sql", "0001_Create.sql", "00001_create.sql", "0001_.sql", "0001_create table.sql"],
)
def test_load_migrations_rejects_badly_named_files(tmp_path: Path, bad_name: str) -> None:
    d = write_dir(tmp_path / "svc", {"0001_ok.sql": "SELECT 1;", bad_name: "SELECT 1;"})
    with pytest.raises(db.MigrationError, match=r"named NNNN_name\.sql") as err:
        db.load_migrations("svc", d)
    assert bad_name in str(err.value)


@pytest.mark.parametrize("names", [["0001_a.sql", "0003_c.sql"], ["0002_b.sql"], ["0001_a.sql", "0001_b.sql"]])
def test_load_migrations_rejects_gaps_and_repeats(tmp_path: Path, names: list[str]) -> None:
    d = write_dir(tmp_path / "svc", dict.fromkeys(names, "SELECT 1;"))
    with pytest.raises(db.MigrationError, match="without gaps"):
        db.load_migrations("svc", d)


def test_load_migrations_reads_a_good_directory_in_order(tmp_path: Path) -> None:
    files = {f"{v:04d}_step_{v}.sql": f"SELECT {v};" for v in range(12, 0, -1)}
    d = write_dir(tmp_path / "svc", {**files, "README.md": "not a migration"})
    found = db.load_migrations("svc", d)
    assert [(m.component, m.version, m.name, m.sql) for m in found] == [
        ("svc", v, f"step_{v}", f"SELECT {v};") for v in range(1, 13)
    ]


async def test_failing_migration_rolls_back_and_can_be_fixed(
    conn: asyncpg.Connection, new_schema: Callable[[], str], tmp_path: Path, database_url: str
) -> None:
    schema = new_schema()
    broken = "CREATE TABLE gadgets (id int);\nINSERT INTO no_such_table VALUES (1);\n"
    d = write_dir(tmp_path / "svc", {"0001_create.sql": CREATE_WIDGETS, "0002_gadgets.sql": broken})
    with pytest.raises(asyncpg.UndefinedTableError):
        await db.migrate(conn, schema, db.load_migrations("svc", d))
    assert [r[1] for r in await recorded(conn, schema)] == [1]
    assert await tables(conn, schema) == {"schema_migrations", "widgets"}  # gadgets rolled back with it

    # Fixed: it applies, from another connection (so the failed run's advisory lock was released).
    write_dir(d, {"0002_gadgets.sql": CREATE_GADGETS})
    other = await asyncpg.connect(database_url)
    try:
        applied = await asyncio.wait_for(db.migrate(other, schema, db.load_migrations("svc", d)), timeout=10)
    finally:
        await other.close()
    assert applied == 1
    assert await recorded(conn, schema) == [
        ("svc", 1, "create", sha(CREATE_WIDGETS)),
        ("svc", 2, "gadgets", sha(CREATE_GADGETS)),
    ]
    assert "gadgets" in await tables(conn, schema)


async def test_concurrent_migrate_applies_each_migration_once(
    new_schema: Callable[[], str], tmp_path: Path, database_url: str
) -> None:
    schema = new_schema()
    # Neither step is idempotent: running one twice fails or leaves a second row.
    d = write_dir(
        tmp_path / "svc",
        {
            "0001_create.sql": (
                "CREATE TABLE runs (step int NOT NULL);\nSELECT pg_sleep(0.3);\nINSERT INTO runs VALUES (1);\n"
            ),
            "0002_widgets.sql": CREATE_WIDGETS + "INSERT INTO runs VALUES (2);\n",
            "0003_more.sql": "INSERT INTO runs VALUES (3);\n",
        },
    )
    migrations = db.load_migrations("svc", d)
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(db.migrate(c, schema, migrations) for c in conns)),
            timeout=20,
        )
        rows = await conns[0].fetch(f'SELECT step FROM "{schema}".runs ORDER BY step')
        versions = [r[1] for r in await recorded(conns[0], schema)]
    finally:
        for c in conns:
            await c.close()
    assert sorted(results) == [0, 0, 3]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert versions == [1, 2, 3]


@pytest.mark.parametrize("service", sorted(SPECS))
async def test_every_service_migrates_a_fresh_schema(
    conn: asyncpg.Connection, new_schema: Callable[[], str], service: str
) -> None:
    spec = SPECS[service]
    migrations = spec.migrations()
    assert any(m.component == service for m in migrations)
    assert any(m.component == "outbox" for m in migrations) == spec.outbox
    schema = new_schema()
    assert await db.migrate(conn, schema, migrations) == len(migrations)
    assert await db.migrate(conn, schema, spec.migrations()) == 0
    assert {(r[0], r[1]) for r in await recorded(conn, schema)} == {(m.component, m.version) for m in migrations}
    assert ("outbox" in await tables(conn, schema)) == spec.outbox
