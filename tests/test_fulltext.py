"""Full-text search: fts, plfts, phfts, wfts over SQLite FTS5 (#14 item 6)."""
from __future__ import annotations

from urllib.parse import quote

import apsw
import pytest

from sqlite_rest.api.fulltext import fts5_query
from sqlite_rest.api.query import QueryError
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig


@pytest.mark.parametrize("op,text,query", [
    ("plfts", "The Fat cats", '"The" AND "Fat" AND "cats"'),
    ("phfts", "fat cat ate", '"fat cat ate"'),
    ("wfts", '"fat cat" or rat -dog', '(("fat cat") OR ("rat")) NOT ("dog")'),
    ("wfts", "cat", '("cat")'),
    ("fts", "fat & (cat | rat)", '("fat" AND ("cat" OR "rat"))'),
    ("fts", "fat & !cat", '("fat" NOT "cat")'),
    ("fts", "fat <-> cat <-> ate", '"fat cat ate"'),
    ("fts", "supernova:*", '"supernova"*'),
    ("plfts", 'say "NOT" OR NEAR(x)', '"say" AND "NOT" AND "OR" AND "NEAR" AND "x"'),
])
def test_search_text_becomes_an_fts5_query_of_quoted_terms(op, text, query):
    assert fts5_query(op, text) == query


@pytest.mark.parametrize("op,text", [
    ("fts", "!cat"), ("fts", "(cat"), ("fts", "a &"), ("fts", "a | !b"), ("plfts", "  ,; "),
    ("wfts", "-dog"), ("fts", ""),
])
def test_search_text_without_a_query_is_refused(op, text):
    with pytest.raises(QueryError):
        fts5_query(op, text)


@pytest.fixture
def client(tmp_path):
    conn = apsw.Connection(str(tmp_path / "fts.db"))
    conn.execute("""
        CREATE TABLE posts (id INTEGER PRIMARY KEY, title TEXT, body TEXT);
        CREATE VIRTUAL TABLE posts_fts USING fts5(title, body, content='posts',
                                                  content_rowid='id', tokenize='porter');
        CREATE TRIGGER posts_ai AFTER INSERT ON posts BEGIN
            INSERT INTO posts_fts(rowid, title, body) VALUES (new.id, new.title, new.body);
        END;
        INSERT INTO posts (title, body) VALUES
            ('Fat cats', 'The fat cat ate the rat'), ('Dogs', 'A dog chased the cat'),
            ('Rats', 'Rats are fast'), ('Supernovae', 'A supernova exploded');
        CREATE VIRTUAL TABLE notes USING fts5(body);
        INSERT INTO notes VALUES ('fat cat sat'), ('lean dog');
        CREATE TABLE plain (id INTEGER PRIMARY KEY, body TEXT);
    """)
    conn.close()
    app = create_app(ServerConfig(db_dsn=str(tmp_path / "fts.db"),
                                  allow_tables=("posts", "notes", "plain"), auth_disabled=True))
    with app.test_client() as c:
        yield c


def ids(client, query):
    pairs = query if type(query) is tuple else (query,)
    r = client.get("/posts?select=id&order=id&" +
                   "&".join(quote(pair, safe="=.(),:*") for pair in pairs))
    assert r.status_code == 200, r.data
    return [row["id"] for row in r.get_json()]


@pytest.mark.parametrize("query,expected", [
    ("body=fts.fat & cat", [1]),
    ("body=fts.cat & !rat", [2]),
    ("body=plfts.cats ate", [1]),            # the porter tokenizer stems, as english would
    ("body=phfts.fat cat", [1]),
    ("body=phfts.cat fat", []),
    ('body=wfts."fat cat" or rat -dog', [1, 3]),
    ("body=fts(english).supernova:*", [4]),
    ("body=not.plfts.cat", [3, 4]),
    ("or=(body.plfts.dog,title.plfts.rats)", [2, 3]),
    (("title=plfts.cats", "body=plfts.rat"), [1]),
])
def test_search_a_table_through_its_fts_index(client, query, expected):
    assert ids(client, query) == expected


def test_search_an_fts5_table_directly(client):
    assert client.get("/notes?body=plfts.cat").get_json() == [{"body": "fat cat sat"}]


@pytest.mark.parametrize("url,code,message", [
    ("/plain?body=fts.cat", "PGRST100", "no full-text index for column 'body'"),
    ("/posts?id=fts.cat", "PGRST100", "no full-text index for column 'id'"),
    ("/posts?nope=fts.cat", "42703", "nope"),
    ("/posts?body=fts.!cat", "PGRST100", "cannot start with a negation"),
    ("/posts?body=fts().cat", "PGRST100", "language"),
])
def test_search_errors_are_400(client, url, code, message):
    r = client.get(url)
    assert r.status_code == 400 and r.get_json()["code"] == code
    assert message in r.get_json()["message"]
