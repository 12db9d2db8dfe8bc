"""`sqlite-rest demo [DIR]`: the embedded default, one command, no external service.

Creates (once) in DIR (default ``./sqlite-rest-demo``):

- ``demo.db``: a small library database (``authors``, ``books``);
- ``litestream.yml``: a Litestream 0.5 config replicating it to ``DIR/replica`` (``file://``);
- ``functions.yml``: the functions served under ``/rpc/`` (the README's example, word for word);

then runs ``serve`` on 127.0.0.1 with replication on and authentication off (local use only;
the server logs that loudly). Stop it with Ctrl-C; run it again and it continues. Delete
``demo.db`` and run it again: the server restores it from the replica before serving.
"""
from __future__ import annotations

import os

import apsw

DEFAULT_DIR = "sqlite-rest-demo"

SCHEMA = """
CREATE TABLE authors (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  born INTEGER
);
CREATE TABLE books (
  id INTEGER PRIMARY KEY,
  title TEXT NOT NULL,
  author_id INTEGER REFERENCES authors(id),
  year INTEGER,
  tags JSON DEFAULT '[]'
);
-- Full-text search on titles: books_fts indexes books by rowid (?title=wfts.left hand).
CREATE VIRTUAL TABLE books_fts USING fts5(title, content='books', content_rowid='id',
                                          tokenize='porter');
CREATE TRIGGER books_fts_insert AFTER INSERT ON books BEGIN
  INSERT INTO books_fts (rowid, title) VALUES (new.id, new.title);
END;
CREATE TRIGGER books_fts_delete AFTER DELETE ON books BEGIN
  INSERT INTO books_fts (books_fts, rowid, title) VALUES ('delete', old.id, old.title);
END;
CREATE TRIGGER books_fts_update AFTER UPDATE OF title ON books BEGIN
  INSERT INTO books_fts (books_fts, rowid, title) VALUES ('delete', old.id, old.title);
  INSERT INTO books_fts (rowid, title) VALUES (new.id, new.title);
END;
INSERT INTO authors (id, name, born) VALUES
  (1, 'Ursula K. Le Guin', 1929), (2, 'Frank Herbert', 1920), (3, 'Octavia E. Butler', 1947);
INSERT INTO books (title, author_id, year, tags) VALUES
  ('A Wizard of Earthsea', 1, 1968, '["fantasy"]'),
  ('The Left Hand of Darkness', 1, 1969, '["sf"]'),
  ('Dune', 2, 1965, '["sf","classic"]'),
  ('Kindred', 3, 1979, '["sf"]'),
  ('Parable of the Sower', 3, 1993, '["sf","dystopia"]');
"""

#: The demo's --functions-file (the README shows it; tests/test_demo.py checks they agree).
FUNCTIONS = """\
functions:
  books_by:
    description: Books of one author, oldest first
    params:
      author: integer
      since: {type: integer, default: 0}
    sql: |
      SELECT id, title, year FROM books
      WHERE author_id = :author AND year >= :since ORDER BY year
  count_books:
    sql: SELECT count(*) AS n FROM books
    returns: value
  authors_born:
    description: Authors born after a year; rows of authors, so they embed as on /authors
    params:
      after: integer
    sql: SELECT * FROM authors WHERE born > :after ORDER BY born
    table: authors
  add_book:
    description: Adds a book (and its author, if new); returns the book
    params:
      title: text
      author: text
      year: {type: integer, default: null}
    sql: |
      INSERT INTO authors (name) VALUES (:author) ON CONFLICT (name) DO NOTHING;
      INSERT INTO books (title, author_id, year)
        SELECT :title, id, :year FROM authors WHERE name = :author;
      SELECT id, title, year FROM books WHERE id = last_insert_rowid()
    returns: row
"""


def prepare(directory: str) -> tuple[str, str]:
    """Create the demo DB and config in ``directory`` if missing; returns (db, config) paths."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    db = os.path.join(directory, "demo.db")
    config = os.path.join(directory, "litestream.yml")
    replica = os.path.join(directory, "replica")
    functions = os.path.join(directory, "functions.yml")
    if not os.path.exists(functions):
        with open(functions, "w") as f:
            f.write(FUNCTIONS)
    if not os.path.exists(config):
        with open(config, "w") as f:
            f.write("# Written by `sqlite-rest demo`: a real Litestream 0.5 config.\n"
                    f"dbs:\n  - path: {db}\n    replica:\n      url: file://{replica}\n")
    # A fresh demo: seed the DB, unless the replica has data (then serve restores it).
    if not os.path.exists(db) and not os.path.isdir(os.path.join(replica, "ltx")):
        conn = apsw.Connection(db)
        try:
            conn.execute("PRAGMA journal_mode=wal")
            with conn:
                conn.execute(SCHEMA)
        finally:
            conn.close()
    return db, config


def serve_argv(directory: str, http_addr: str, metrics_addr: str) -> list[str]:
    """The `serve` arguments the demo runs with."""
    db, config = prepare(directory)
    return ["serve", "--db-dsn", db, "--http-addr", http_addr, "--metrics-addr", metrics_addr,
            "--security-allow-table", "authors,books", "--auth-disabled",
            "--replication-enabled", "--replication-config", config,
            "--functions-file", os.path.join(os.path.dirname(config), "functions.yml")]
