"""`sqlite-rest migrate`: golang-migrate layout, version table, up/down/step/force, dirty state."""
from __future__ import annotations

import os
import subprocess
import sys

import apsw
import pytest

from sqlite_rest import cli
from sqlite_rest.migrate import MIGRATIONS_TABLE, MigrationError, Migrator, read_migrations

MIGRATIONS = {
    "1_create_books.up.sql": "CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT NOT NULL);",
    "1_create_books.down.sql": "DROP TABLE books;",
    "2_add_author.up.sql": "ALTER TABLE books ADD COLUMN author TEXT;\n"
                           "INSERT INTO books(title, author) VALUES ('Dune', 'Herbert');",
    "2_add_author.down.sql": "ALTER TABLE books DROP COLUMN author;",
    "10_create_shelves.up.sql": "CREATE TABLE shelves(id INTEGER PRIMARY KEY);\n"
                                "CREATE INDEX shelves_id ON shelves(id);",
    "10_create_shelves.down.sql": "DROP TABLE shelves;",
    "README.md": "not a migration",
}


@pytest.fixture
def migrations(tmp_path):
    d = tmp_path / "migrations"
    d.mkdir()
    for name, sql in MIGRATIONS.items():
        (d / name).write_text(sql)
    return d


@pytest.fixture
def db(tmp_path):
    return tmp_path / "app.db"


def state(db):
    conn = apsw.Connection(str(db))
    try:
        rows = conn.execute(f'SELECT version, dirty FROM "{MIGRATIONS_TABLE}"').fetchall()
        tables = sorted(r[0] for r in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type='table' AND name NOT LIKE '\\_\\_%' ESCAPE '\\'"))
        return rows, tables
    finally:
        conn.close()


def migrate(db, migrations, *args):
    return cli.main(["migrate", str(migrations), "--db-dsn", str(db), *args])


def test_files_are_read_in_numeric_order(migrations):
    assert [m.version for m in read_migrations(str(migrations))] == [1, 2, 10]


def test_up_applies_everything_and_records_the_version(db, migrations):
    assert migrate(db, migrations) == 0
    rows, tables = state(db)
    assert rows == [(10, 0)]
    assert tables == ["books", "shelves"]
    conn = apsw.Connection(str(db))
    assert conn.execute("SELECT title, author FROM books").fetchall() == [("Dune", "Herbert")]
    # golang-migrate's sqlite3 driver schema
    sql = conn.execute("SELECT sql FROM sqlite_schema WHERE name = ?", (MIGRATIONS_TABLE,)).fetchall()
    assert sql[0][0] == f'CREATE TABLE "{MIGRATIONS_TABLE}" (version uint64, dirty bool)'
    assert conn.execute("PRAGMA journal_mode").fetchall()[0][0] == "wal"
    conn.close()
    assert migrate(db, migrations) == 0  # nothing pending: no-op
    assert state(db)[0] == [(10, 0)]


def test_step_and_direction(db, migrations, capsys):
    assert migrate(db, migrations, "--step", "1") == 0
    assert state(db) == ([(1, 0)], ["books"])
    assert migrate(db, migrations, "--direction", "up", "--step", "1") == 0
    assert state(db)[0] == [(2, 0)]
    assert migrate(db, migrations, "--step", "5") == 1
    assert "only 1 migration(s) pending" in capsys.readouterr().err
    assert state(db)[0] == [(2, 0)]  # refused before doing anything
    assert migrate(db, migrations, "--direction", "down", "--step", "1") == 0
    rows, tables = state(db)
    assert rows == [(1, 0)] and tables == ["books"]
    conn = apsw.Connection(str(db))
    assert [c[1] for c in conn.execute("PRAGMA table_info(books)")] == ["id", "title"]
    conn.close()
    assert migrate(db, migrations) == 0
    assert migrate(db, migrations, "--direction", "down") == 0
    assert state(db) == ([], [])


def test_env_mirrors_for_migrate(db, migrations):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    env.update(SQLITEREST_DB_DSN=str(db), SQLITEREST_STEP="2")
    result = subprocess.run([sys.executable, "-m", "sqlite_rest.cli", "migrate", str(migrations)],
                            env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert state(db)[0] == [(2, 0)]


def test_failed_migration_rolls_back_marks_dirty_and_blocks(db, migrations, capsys):
    assert migrate(db, migrations, "--step", "1") == 0
    conn = apsw.Connection(str(db))
    conn.execute("INSERT INTO books(title) VALUES ('Kept')")
    conn.close()
    capsys.readouterr()
    # migration 2 half-works then fails: its first statement must be rolled back too
    (migrations / "2_add_author.up.sql").write_text(
        "ALTER TABLE books ADD COLUMN author TEXT;\nDELETE FROM books;\nSELECT * FROM no_such_table;")
    assert migrate(db, migrations) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "2_add_author.up.sql failed and was rolled back" in err and "no_such_table" in err
    assert "--force 1" in err
    rows, tables = state(db)
    assert rows == [(2, 1)]  # dirty, as golang-migrate leaves it
    conn = apsw.Connection(str(db))
    assert [c[1] for c in conn.execute("PRAGMA table_info(books)")] == ["id", "title"]
    assert conn.execute("SELECT title FROM books").fetchall() == [("Kept",)]
    conn.close()
    # a dirty database refuses every migration until forced
    assert migrate(db, migrations) == 1
    err = capsys.readouterr().err
    assert "dirty at version 2" in err and "--force" in err
    assert migrate(db, migrations, "--direction", "down") == 1
    capsys.readouterr()
    # fix the file, force the real version, migrate again
    (migrations / "2_add_author.up.sql").write_text(MIGRATIONS["2_add_author.up.sql"])
    assert migrate(db, migrations, "--force", "1") == 0
    assert state(db)[0] == [(1, 0)]
    assert migrate(db, migrations) == 0
    assert state(db)[0] == [(10, 0)]


def test_database_migrated_by_golang_migrate_continues(db, migrations):
    """A database the Go server migrated (its driver's table and row) is picked up."""
    conn = apsw.Connection(str(db))
    conn.execute(MIGRATIONS["1_create_books.up.sql"])
    conn.execute(f'CREATE TABLE IF NOT EXISTS "{MIGRATIONS_TABLE}" (version uint64,dirty bool);'
                 f'CREATE UNIQUE INDEX IF NOT EXISTS version_unique ON "{MIGRATIONS_TABLE}" (version);'
                 f'INSERT INTO "{MIGRATIONS_TABLE}" (version, dirty) VALUES (1, false);')
    conn.close()
    m = Migrator(str(db), str(migrations))
    try:
        assert m.version() == (1, False)
        assert m.up() == [2, 10]
    finally:
        m.close()


def test_unknown_version_and_bad_layout(db, migrations, tmp_path):
    m = Migrator(str(db), str(migrations))
    m.force(10)
    other = tmp_path / "other"
    other.mkdir()
    (other / "1_x.up.sql").write_text("SELECT 1;")
    m.close()
    with pytest.raises(MigrationError, match="version 10, which has no file"):
        Migrator(str(db), str(other)).up()
    (other / "1_y.up.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match="duplicate up migration for version 1"):
        read_migrations(str(other))
    with pytest.raises(MigrationError, match="does not exist"):
        read_migrations(str(tmp_path / "missing"))
    with pytest.raises(MigrationError, match="no migration with that version"):
        Migrator(str(db), str(migrations)).force(7)


def test_missing_down_file_refuses(db, migrations, capsys):
    assert migrate(db, migrations) == 0
    os.unlink(migrations / "10_create_shelves.down.sql")
    assert migrate(db, migrations, "--direction", "down", "--step", "1") == 1
    assert "no down migration file for version 10" in capsys.readouterr().err
    assert state(db)[0] == [(10, 0)]


def test_missing_db_dsn_is_an_error(migrations, capsys, monkeypatch):
    monkeypatch.delenv("SQLITEREST_DB_DSN", raising=False)
    assert cli.main(["migrate", str(migrations)]) == 1
    assert "--db-dsn is required" in capsys.readouterr().err
