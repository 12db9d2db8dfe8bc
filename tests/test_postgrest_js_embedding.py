"""Resource embedding and aggregates through the real postgrest-js (Supabase's JavaScript
client), as a supabase-style app writes them: referencedTable order/limit, !inner filters,
.single(), aggregates, embedding on a function's rows (`.rpc().select()`), and PGRST200 as a
client error."""
from __future__ import annotations

from pathlib import Path

import apsw
import pytest

from tests.plugins.postgrest_js import run_node
from tests.plugins.server import start_server

SCRIPT = Path(__file__).resolve().parent / "js" / "postgrest_js_embedding.cjs"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("js-embed")
    db = tmp / "lib.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute("""
        CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, born INTEGER);
        CREATE TABLE books (id INTEGER PRIMARY KEY, title TEXT NOT NULL, year INTEGER,
                            author_id INTEGER REFERENCES authors(id));
        INSERT INTO authors VALUES (1, 'Le Guin', 1929), (2, 'Herbert', 1920);
        INSERT INTO books VALUES (1, 'Earthsea', 1968, 1), (2, 'Left Hand', 1969, 1),
                                 (3, 'Dune', 1965, 2);
    """)
    conn.close()
    (tmp / "functions.yml").write_text(
        "functions:\n  authors_named:\n    params: {q: text}\n"
        "    sql: SELECT * FROM authors WHERE name LIKE :q ORDER BY id\n")  # rows of authors
    server = start_server(db, "--security-allow-table", "authors,books", "--aggregates-enabled",
                          "--functions-file", tmp / "functions.yml", metrics=False)
    try:
        yield server
    finally:
        server.stop()


def test_embedding_and_aggregates_through_postgrest_js(library, postgrest_js):
    out = run_node(postgrest_js, SCRIPT, library.base_url)
    assert out["manyToOne"] == {"status": 200, "error": None, "data": [
        {"title": "Earthsea", "author": {"name": "Le Guin"}},
        {"title": "Left Hand", "author": {"name": "Le Guin"}},
        {"title": "Dune", "author": {"name": "Herbert"}}]}
    assert out["oneToMany"]["data"] == [{"name": "Le Guin", "books": [{"title": "Left Hand"}]},
                                        {"name": "Herbert", "books": [{"title": "Dune"}]}]
    assert out["embeddedFilter"]["data"] == [{"name": "Le Guin",
                                              "books": [{"title": "Left Hand"}]}]
    assert out["single"]["data"] == {"title": "Dune", "authors": {"name": "Herbert",
                                                                  "born": 1920}}
    assert out["aggregate"]["data"] == [{"author_id": 1, "min": 1968, "count": 2},
                                        {"author_id": 2, "min": 1965, "count": 1}]
    assert out["ambiguous"]["status"] == 400
    assert out["ambiguous"]["error"]["code"] == "PGRST200"
    # the supabase idiom for a related count, a spread of a to-many (PostgREST 13)
    assert out["relatedCount"]["data"] == [{"name": "Le Guin", "books": [{"count": 2}]},
                                           {"name": "Herbert", "books": [{"count": 1}]}]
    # supabase.rpc(...).select('name, books(title)'): by POST and by GET
    assert out["rpcEmbed"] == {"status": 200, "error": None, "data": [
        {"name": "Le Guin", "books": [{"title": "Left Hand"}, {"title": "Earthsea"}]}]}
    assert out["rpcEmbedGet"]["data"] == [{"name": "Herbert", "books": [{"title": "Dune"}]}]
    assert out["spreadToMany"]["data"] == [{"name": "Le Guin", "titles": ["Earthsea", "Left Hand"]},
                                           {"name": "Herbert", "titles": ["Dune"]}]
