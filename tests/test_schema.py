"""The schema cache over a real SQLite file: contents, exclusions, reload on change."""
import apsw
import pytest

from sqlite_rest.api.schema import SchemaCache, affinity_of, load_schema, quote_identifier

SCHEMA = '''
CREATE TABLE authors(id INTEGER PRIMARY KEY, name TEXT NOT NULL, email TEXT UNIQUE);
CREATE TABLE books(
    isbn TEXT PRIMARY KEY,
    author_id INTEGER REFERENCES authors(id),
    title VARCHAR(200) DEFAULT 'untitled',
    price DECIMAL(10,2),
    pages INT,
    payload BLOB,
    anything,
    title_upper TEXT GENERATED ALWAYS AS (upper(title)) VIRTUAL
);
CREATE UNIQUE INDEX books_title_author ON books(title, author_id);
CREATE UNIQUE INDEX books_partial ON books(pages) WHERE pages > 0;
CREATE INDEX books_pages ON books(pages);
CREATE TABLE pairs(a INT, b TEXT, PRIMARY KEY (b, a)) WITHOUT ROWID;
CREATE TABLE "odd ""name"""(x);
CREATE VIEW book_view AS SELECT isbn, price * 2 AS double_price, title FROM books;
CREATE TABLE _litestream_seq(id INTEGER PRIMARY KEY, seq INTEGER);
CREATE TABLE _litestream_lock(id INTEGER);
CREATE TABLE __sqlite_rest_migrations(version INTEGER, dirty INTEGER);
'''


@pytest.fixture
def db_path(tmp_path):
    path = str(tmp_path / "test.db")
    conn = apsw.Connection(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    conn.close()
    return path


def test_tables_views_and_exclusions(db_path):
    schema = load_schema(apsw.Connection(db_path))
    assert set(schema.tables) == {"authors", "books", "pairs", 'odd "name"', "book_view"}
    for hidden in ("_litestream_seq", "_litestream_lock", "__sqlite_rest_migrations",
                   "sqlite_schema", "sqlite_sequence"):
        assert schema.table(hidden) is None
    assert schema.table("authors").kind == "table"
    assert schema.table("book_view").kind == "view"
    assert schema.table("book_view").verbs == ("GET", "HEAD")  # no INSTEAD OF trigger
    assert schema.table("AUTHORS") is None  # exact names, as PostgREST


def test_columns(db_path):
    books = load_schema(apsw.Connection(db_path)).table("books")
    cols = {c.name: c for c in books.columns}
    assert [c.name for c in books.columns] == ["isbn", "author_id", "title", "price", "pages",
                                               "payload", "anything", "title_upper"]
    assert (cols["title"].declared_type, cols["title"].affinity) == ("VARCHAR(200)", "TEXT")
    assert cols["title"].default == "'untitled'"
    assert cols["price"].affinity == "NUMERIC"
    assert cols["pages"].affinity == "INTEGER"
    assert cols["payload"].affinity == "BLOB"
    assert cols["anything"].affinity == "BLOB" and cols["anything"].declared_type == ""
    assert cols["title_upper"].generated and not cols["title"].generated
    assert books.primary_key == ("isbn",)
    assert books.rowid_alias is None
    assert books.foreign_keys[0].columns == ("author_id",)
    assert books.foreign_keys[0].ref_table == "authors"
    assert books.foreign_keys[0].ref_columns == ("id",)
    # unique keys: PK autoindex and the full unique index, not the partial one
    assert ("title", "author_id") in books.unique_keys
    assert ("isbn",) in books.unique_keys
    assert ("pages",) not in books.unique_keys


def test_keys(db_path):
    schema = load_schema(apsw.Connection(db_path))
    authors = schema.table("authors")
    assert authors.primary_key == ("id",)
    assert authors.rowid_alias == "id"
    assert authors.column("name").notnull
    assert ("email",) in authors.unique_keys and ("id",) in authors.unique_keys
    pairs = schema.table("pairs")
    assert pairs.primary_key == ("b", "a")  # key order, not column order
    assert pairs.without_rowid and pairs.rowid_alias is None
    assert schema.table('odd "name"').quoted == '"odd ""name"""'


def test_view_columns(db_path):
    view = load_schema(apsw.Connection(db_path)).table("book_view")
    cols = {c.name: c for c in view.columns}
    assert cols["isbn"].affinity == "TEXT"          # from the underlying column
    assert cols["double_price"].declared_type == ""  # an expression: no declared type
    assert cols["double_price"].affinity == "BLOB"
    assert view.primary_key == ()


def test_reload_when_schema_version_changes(db_path):
    reader = apsw.Connection(db_path)
    writer = apsw.Connection(db_path)
    cache = SchemaCache()
    first = cache.get(reader)
    assert cache.get(reader) is first  # unchanged: the same object, no reload
    writer.execute("CREATE TABLE added(id INTEGER PRIMARY KEY)")
    second = cache.get(reader)
    assert second is not first
    assert second.table("added") is not None and first.table("added") is None
    writer.execute("ALTER TABLE authors ADD COLUMN bio TEXT")
    third = cache.get(reader)
    assert [c.name for c in third.table("authors").columns][-1] == "bio"
    writer.execute("DROP TABLE added")
    assert cache.get(reader).table("added") is None
    # data changes do not reload
    fourth = cache.get(reader)
    writer.execute("INSERT INTO authors(name) VALUES ('x')")
    assert cache.get(reader) is fourth


def test_invalidate(db_path):
    conn = apsw.Connection(db_path)
    cache = SchemaCache()
    first = cache.get(conn)
    cache.invalidate()
    assert cache.get(conn) is not first


def test_virtual_tables(tmp_path):
    conn = apsw.Connection(str(tmp_path / "fts.db"))
    conn.execute("CREATE VIRTUAL TABLE docs USING fts5(title, body)")
    schema = load_schema(conn)
    assert schema.table("docs").kind == "virtual"
    assert [c.name for c in schema.table("docs").columns] == ["title", "body"]
    assert not any(name.startswith("docs_") for name in schema.tables)  # shadow tables


@pytest.mark.parametrize("declared,affinity", [
    ("INTEGER", "INTEGER"), ("BIGINT", "INTEGER"), ("int8", "INTEGER"), ("POINT", "INTEGER"),
    ("TEXT", "TEXT"), ("VARCHAR(10)", "TEXT"), ("CLOB", "TEXT"), ("CHARINT", "INTEGER"),
    ("BLOB", "BLOB"), ("", "BLOB"), ("REAL", "REAL"), ("DOUBLE PRECISION", "REAL"),
    ("FLOAT", "REAL"), ("NUMERIC", "NUMERIC"), ("DECIMAL(10,5)", "NUMERIC"),
    ("BOOLEAN", "NUMERIC"), ("DATETIME", "NUMERIC"), ("JSON", "NUMERIC"),
])
def test_affinity_rules(declared, affinity):
    assert affinity_of(declared) == affinity


def test_quote_identifier():
    assert quote_identifier("a") == '"a"'
    assert quote_identifier('a"b') == '"a""b"'
    assert quote_identifier('"; DROP TABLE x; --') == '"""; DROP TABLE x; --"'
