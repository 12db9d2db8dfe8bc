"""Roles and row-level security through the real clients (#14 proof): postgrest-py and
postgrest-js against a real `sqlite-rest serve` with a permissions file and HS256 tokens. A role
reads only its own rows, refused writes reach the client as its error object (42501), an
insert failing the row check is refused, embeddings and RPC follow the role, requests without
a token get the anonymous role — and no refused request changes anything."""
from __future__ import annotations

import time
from pathlib import Path

import apsw
import jwt
import pytest
from postgrest import SyncPostgrestClient
from postgrest.exceptions import APIError

from tests.plugins.postgrest_js import run_node
from tests.plugins.server import start_server

SECRET = b"a-secret-for-the-clients-under-roles-test-0123456789"
SCHEMA = """
CREATE TABLE users (id TEXT PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE notes (id INTEGER PRIMARY KEY, owner_id TEXT REFERENCES users(id), body TEXT,
                    secret TEXT);
CREATE TABLE comments (id INTEGER PRIMARY KEY, note_id INTEGER REFERENCES notes(id),
                       owner_id TEXT, text TEXT);
"""
ROWS = """
DELETE FROM comments; DELETE FROM notes; DELETE FROM users;
INSERT INTO users VALUES ('alice', 'Alice'), ('bob', 'Bob'), ('vic', 'Vic');
INSERT INTO notes VALUES (1, 'alice', 'a1', 's1'), (2, 'bob', 'b1', 's2'),
                         (3, 'alice', 'a2', 's3'), (4, 'vic', 'v1', 's4');
-- bob commented on alice's note: alice must not see his comment
INSERT INTO comments VALUES (1, 1, 'alice', 'mine'), (2, 1, 'bob', 'his'),
                            (3, 2, 'bob', 'his too');
"""
PERMISSIONS = """
anonymous: anon
roles:
  anon:
    users: {verbs: [GET]}
  member:
    users: {verbs: [GET]}
    notes:
      verbs: [GET, POST, PATCH, DELETE]
      read_columns: [id, owner_id, body]
      write_columns: [id, owner_id, body]
      rows: owner_id=eq.{sub}
    comments: {verbs: [GET], rows: "owner_id=eq.{sub}"}
  viewer:
    notes: {verbs: [GET], rows: "owner_id=eq.{sub}"}
functions:
  member: [my_note_count]
"""
FUNCTIONS = """
functions:
  my_note_count:
    sql: SELECT count(*) FROM notes WHERE owner_id = request_claim('sub')
    returns: value
  all_notes:
    sql: SELECT id, owner_id, body, secret FROM notes
  add_note:
    params: {body: text}
    sql: INSERT INTO notes (owner_id, body) VALUES (request_claim('sub'), :body)
    returns: nothing
"""
JS_SCRIPT = Path(__file__).resolve().parent / "js" / "postgrest_js_roles.cjs"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clients-roles")
    db = tmp / "notes.db"
    conn = apsw.Connection(str(db))
    conn.execute("PRAGMA journal_mode=WAL").fetchall()
    conn.execute(SCHEMA)
    conn.close()
    (tmp / "secret").write_bytes(SECRET)
    (tmp / "perm.yml").write_text(PERMISSIONS)
    (tmp / "functions.yml").write_text(FUNCTIONS)
    srv = start_server(db, "--security-allow-table", "users,notes,comments",
                       "--auth-token-file", tmp / "secret", "--permissions-file",
                       tmp / "perm.yml", "--functions-file", tmp / "functions.yml",
                       metrics=False)
    srv.db_path = db
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def db(server):
    """Fresh rows for each test; ``db()`` is every row of every table, to compare."""
    conn = apsw.Connection(str(server.db_path))
    conn.set_busy_timeout(5000)
    with conn:
        conn.execute(ROWS)

    def snapshot():
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("users", "notes", "comments")}
    yield snapshot
    conn.close()


def token(sub: str, role: str) -> str:
    return jwt.encode({"sub": sub, "role": role, "exp": int(time.time()) + 600}, SECRET,
                      algorithm="HS256")


@pytest.fixture
def clients(server):
    made = {}
    for name, sub, role in (("alice", "alice", "member"), ("viewer", "vic", "viewer"),
                            ("anon", None, None)):
        c = SyncPostgrestClient(server.base_url)
        if sub:
            c.auth(token(sub, role))
        made[name] = c
    yield made
    for c in made.values():
        c.session.close()


def refused(call, code: str) -> APIError:
    with pytest.raises(APIError) as info:
        call.execute()
    assert info.value.code == code, info.value
    return info.value


# -- postgrest-py ----------------------------------------------------------------------------

def test_postgrest_py_reads_only_the_roles_rows(clients, db):
    alice = clients["alice"]
    r = alice.from_("notes").select("*", count="exact").order("id").execute()
    assert r.data == [{"id": 1, "owner_id": "alice", "body": "a1"},
                      {"id": 3, "owner_id": "alice", "body": "a2"}]
    assert r.count == 2
    assert alice.from_("notes").select("id").eq("owner_id", "bob").execute().data == []
    assert "secret" in refused(alice.from_("notes").select("id,secret"), "42501").message
    refused(alice.from_("notes").select("id").like("secret", "s*"), "42501")


def test_postgrest_py_refused_writes_change_nothing(clients, db):
    alice, viewer = clients["alice"], clients["viewer"]
    before = db()
    error = refused(alice.from_("notes").insert({"id": 10, "owner_id": "bob", "body": "spam"}),
                    "42501")
    assert "row-level security" in error.message
    # bob's note is not alice's: the update and delete match nothing
    assert alice.from_("notes").update({"body": "mine now"}).eq("id", 2).execute().data == []
    assert alice.from_("notes").delete().eq("id", 2).execute().data == []
    refused(alice.from_("notes").upsert({"id": 2, "owner_id": "alice", "body": "taken"}),
            "42501")
    assert "notes" in refused(viewer.from_("notes").insert(
        {"id": 11, "owner_id": "vic", "body": "x"}), "42501").message
    refused(viewer.from_("notes").update({"body": "x"}).eq("owner_id", "vic"), "42501")
    refused(alice.rpc("add_note", {"body": "via rpc"}), "42501")
    assert db() == before
    # the allowed write goes through, and only it
    r = alice.from_("notes").insert({"id": 12, "owner_id": "alice", "body": "mine"}).execute()
    assert r.data == [{"id": 12, "owner_id": "alice", "body": "mine"}]
    assert db()["notes"] == before["notes"] + [(12, "alice", "mine", None)]


def test_postgrest_py_embedding_under_a_role(clients, db):
    alice = clients["alice"]
    r = alice.from_("users").select("name,notes(body,comments(text))").order("id").execute()
    assert r.data == [{"name": "Alice", "notes": [{"body": "a1", "comments": [{"text": "mine"}]},
                                                  {"body": "a2", "comments": []}]},
                      {"name": "Bob", "notes": []},
                      {"name": "Vic", "notes": []}]
    r = alice.from_("comments").select("text,notes(body,users(name))").execute()
    assert r.data == [{"text": "mine", "notes": {"body": "a1", "users": {"name": "Alice"}}}]
    r = alice.from_("users").select("name,notes!inner(id)").order("id").execute()
    assert r.data == [{"name": "Alice", "notes": [{"id": 1}, {"id": 3}]}]


def test_postgrest_py_rpc_grants(clients, db):
    assert clients["alice"].rpc("my_note_count", {}).execute().data == 2
    error = refused(clients["alice"].rpc("all_notes", {}), "42501")
    assert "all_notes" in error.message


def test_postgrest_py_anonymous(clients, db):
    anon = clients["anon"]
    before = db()
    assert [u["id"] for u in anon.from_("users").select("id").order("id").execute().data] == \
        ["alice", "bob", "vic"]
    refused(anon.from_("notes").select("*"), "PGRST205")
    refused(anon.from_("users").insert({"id": "eve", "name": "Eve"}), "42501")
    refused(anon.rpc("my_note_count", {}), "42501")
    assert db() == before


# -- postgrest-js (Node) -----------------------------------------------------------------------

def test_postgrest_js_under_roles(server, db, postgrest_js):
    """The same calls with Supabase's JavaScript client (tests/js/postgrest_js_roles.cjs)."""
    before = db()
    out = run_node(postgrest_js, JS_SCRIPT, server.base_url, token("alice", "member"),
                   token("vic", "viewer"))

    def error(name, status, code):
        assert out[name]["status"] == status, out[name]
        assert out[name]["data"] is None, out[name]
        assert out[name]["error"]["code"] == code, out[name]
        return out[name]["error"]

    assert out["own"] == {"status": 200, "count": 2, "error": None, "data": [
        {"id": 1, "owner_id": "alice", "body": "a1"}, {"id": 3, "owner_id": "alice", "body": "a2"}]}
    assert out["othersByFilter"]["data"] == []
    assert "secret" in error("hiddenColumn", 403, "42501")["message"]
    error("hiddenColumnFilter", 403, "42501")
    assert "row-level security" in error("insertForBob", 403, "42501")["message"]
    assert out["updateBobs"]["data"] == [] and out["updateBobs"]["status"] == 200
    assert out["deleteBobs"]["data"] == [] and out["deleteBobs"]["status"] == 200
    error("upsertBobs", 403, "42501")
    error("viewerInsert", 403, "42501")
    error("viewerUpdate", 403, "42501")
    assert out["embedOneToMany"]["data"] == [
        {"name": "Alice", "notes": [{"body": "a1", "comments": [{"text": "mine"}]},
                                    {"body": "a2", "comments": []}]},
        {"name": "Bob", "notes": []}, {"name": "Vic", "notes": []}]
    assert out["embedManyToOne"]["data"] == [
        {"text": "mine", "notes": {"body": "a1", "users": {"name": "Alice"}}}]
    assert out["embedInner"]["data"] == [{"name": "Alice", "notes": [{"id": 1}, {"id": 3}]}]
    assert out["rpcAllowed"] == {"status": 200, "count": None, "error": None, "data": 2}
    assert "all_notes" in error("rpcRefused", 403, "42501")["message"]
    error("rpcWriteRefused", 403, "42501")
    assert [u["id"] for u in out["anonRead"]["data"]] == ["alice", "bob", "vic"]
    error("anonNotes", 404, "PGRST205")
    error("anonInsert", 401, "42501")
    error("anonRpc", 401, "42501")
    # every refused call changed nothing; the one allowed insert (last) is the only change
    assert out["insertOwn"]["status"] == 201
    assert out["insertOwn"]["data"] == [{"id": 12, "owner_id": "alice", "body": "from js"}]
    after = db()
    assert after["notes"] == before["notes"] + [(12, "alice", "from js", None)]
    assert {t: rows for t, rows in after.items() if t != "notes"} == \
        {t: rows for t, rows in before.items() if t != "notes"}
