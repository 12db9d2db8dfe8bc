"""Roles and row-level security (--permissions-file), JWKS (--auth-jwks-file) and the `aud`
check (--auth-audience): every verb allowed and refused, other users' rows out of reach
through filters, select, on_conflict, representation, upserts, `or=` and counts; a refused
request changes nothing. The CLI, a real server and the real postgrest-py client at the end.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import apsw
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SECRET = b"a-long-enough-hmac-secret-for-roles-tests-0123456789-0123456789"

PERMISSIONS = """
role_claim: .role
anonymous: anon
default_role: authenticated
roles:
  anon:
    books: {verbs: [GET]}
  authenticated:
    notes:
      verbs: [GET, POST, PATCH, PUT, DELETE]
      read_columns: [id, owner_id, body, created_at]
      write_columns: [id, body, owner_id]
      rows: owner_id=eq.{sub}
    books: {verbs: [GET]}
    org_docs:
      verbs: [GET, POST]
      rows: ["org=eq.{app_metadata.org_id}", "or=(public.is.true,author.eq.{sub})"]
      check: org=eq.{app_metadata.org_id}
  admin:
    "*": {verbs: [GET, POST, PATCH, PUT, DELETE]}
  prefixer:
    books: {verbs: [GET], rows: "title=like.{prefix}*"}
functions:
  authenticated: [note_count, my_notes, add_note, my_org]
"""

FUNCTIONS = """
functions:
  note_count:
    sql: SELECT count(*) AS n FROM notes
    returns: value
  all_secrets:
    sql: SELECT secret FROM notes
  my_notes:
    sql: SELECT id, body FROM notes WHERE owner_id = request_claim('sub') ORDER BY id
  add_note:
    params: {body: text}
    sql: |
      INSERT INTO notes(owner_id, body) VALUES (request_claim('sub'), :body);
      SELECT id, owner_id, body FROM notes WHERE id = last_insert_rowid()
    returns: row
  my_org:
    sql: SELECT request_claim('app_metadata.org_id') AS org, request_claim('app_metadata') AS md
    returns: row
"""

SCHEMA = """
CREATE TABLE notes(id INTEGER PRIMARY KEY, owner_id TEXT NOT NULL, body TEXT,
                   secret TEXT, created_at TEXT DEFAULT 'now');
INSERT INTO notes(id, owner_id, body, secret) VALUES
  (1, 'alice', 'a1', 'alice-secret'), (2, 'bob', 'b1', 'bob-secret'), (3, 'alice', 'a2', NULL);
CREATE TABLE books(id INTEGER PRIMARY KEY, title TEXT);
INSERT INTO books VALUES (1, 'Dune');
CREATE TABLE org_docs(id INTEGER PRIMARY KEY, org INTEGER, author TEXT, public BOOLEAN);
INSERT INTO org_docs VALUES (1, 7, 'alice', 0), (2, 7, 'bob', 0), (3, 7, 'bob', 1),
  (4, 8, 'carol', 1);
CREATE TABLE audit(id INTEGER PRIMARY KEY);
"""
TABLES = ("notes", "books", "org_docs", "audit")


def make_db(path) -> str:
    conn = apsw.Connection(str(path))
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(SCHEMA)
    conn.close()
    return str(path)


def snapshot(db: str) -> dict:
    conn = apsw.Connection(db)
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall() for t in TABLES}
    finally:
        conn.close()


@pytest.fixture
def env(tmp_path):
    db = make_db(tmp_path / "roles.db")
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "perm.yml").write_text(PERMISSIONS)
    (tmp_path / "functions.yml").write_text(FUNCTIONS)
    app = create_app(ServerConfig(
        db_dsn=db, allow_tables=TABLES, auth_token_file=str(tmp_path / "secret"),
        permissions_file=str(tmp_path / "perm.yml"),
        functions_file=str(tmp_path / "functions.yml")))
    return app.test_client(), db


def token(**claims) -> dict:
    # A day, not minutes: these tokens are made when the module is imported, and a slow
    # CI machine once reached this file 25 minutes later (every request "JWT expired").
    claims.setdefault("exp", int(time.time()) + 86400)
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


ALICE = token(sub="alice", role="authenticated", app_metadata={"org_id": 7})
BOB = token(sub="bob", role="authenticated", app_metadata={"org_id": 7})
ADMIN = token(sub="root", role="admin")


def ids(response) -> list:
    assert response.status_code in (200, 206), response.data
    return [row["id"] for row in response.get_json()]


def assert_denied(response, status=403, message=None):
    assert response.status_code == status, response.data
    body = response.get_json()
    assert body["code"] == "42501", body
    if message:
        assert message in body["message"], body


def refused_unchanged(client, db, call, status=403, message=None):
    before = snapshot(db)
    assert_denied(call(), status, message)
    assert snapshot(db) == before


# -- reads ----------------------------------------------------------------------------------

def test_read_own_rows_only(env):
    client, _db = env
    assert ids(client.get("/notes", headers=ALICE)) == [1, 3]
    assert ids(client.get("/notes", headers=BOB)) == [2]
    assert ids(client.get("/notes?id=eq.2", headers=ALICE)) == []
    assert ids(client.get("/notes?id=eq.2", headers=BOB)) == [2]  # the same shape, bound anew


def test_select_star_shows_readable_columns_only(env):
    client, _db = env
    rows = client.get("/notes?id=eq.1", headers=ALICE).get_json()
    assert rows == [{"id": 1, "owner_id": "alice", "body": "a1", "created_at": "now"}]


@pytest.mark.parametrize("query", [
    "select=secret", "select=id,secret", "select=s:secret", "secret=eq.bob-secret",
    "secret=like.bob*", "or=(secret.eq.bob-secret,id.eq.1)", "and=(id.gt.0,secret.is.null)",
    "not.or=(secret.is.null)", "order=secret", "select=id,secret::text",
])
def test_hidden_column_cannot_be_named(env, query):
    client, _db = env
    assert_denied(client.get("/notes?" + query, headers=ALICE),
                  message="permission denied for column secret")


@pytest.mark.parametrize("query", [
    "or=(owner_id.eq.bob,id.eq.2)", "owner_id=eq.bob", "or=(id.gt.0,owner_id.neq.alice)",
    "not.and=(owner_id.eq.alice)", "owner_id=in.(alice,bob)",
])
def test_filters_cannot_reach_other_rows(env, query):
    client, _db = env
    got = ids(client.get("/notes?" + query, headers=ALICE))
    assert 2 not in got


def test_counts_and_ranges_count_own_rows(env):
    client, _db = env
    r = client.get("/notes", headers={**ALICE, "Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "0-1/2"
    r = client.head("/notes", headers={**BOB, "Prefer": "count=exact", "Range": "0-0"})
    assert r.headers["Content-Range"] == "0-0/1"
    r = client.get("/notes?limit=1&offset=1", headers={**ALICE, "Prefer": "count=exact"})
    assert r.status_code == 206 and ids(r) == [3]


def test_nested_claim_and_or_row_filter(env):
    client, _db = env
    # org 7, and public or written by alice
    assert ids(client.get("/org_docs", headers=ALICE)) == [1, 3]
    assert ids(client.get("/org_docs", headers=BOB)) == [2, 3]
    nobody = token(sub="zed", role="authenticated")  # no app_metadata: matches nothing
    assert ids(client.get("/org_docs", headers=nobody)) == []
    other_org = token(sub="carol", role="authenticated", app_metadata={"org_id": 8})
    assert ids(client.get("/org_docs", headers=other_org)) == [4]


def test_missing_claim_matches_nothing(env):
    client, _db = env
    assert ids(client.get("/notes", headers=token(role="authenticated"))) == []
    odd = token(sub="alice", app_metadata={"org_id": [7]})  # not a scalar: no match
    assert ids(client.get("/org_docs", headers=odd)) == []


def test_claim_values_are_bound_not_parsed(env):
    client, db = env
    for sub in ("alice' OR '1'='1", "x,owner_id.eq.bob", "alice)", "{sub}", "*"):
        assert ids(client.get("/notes", headers=token(sub=sub))) == []
    before = snapshot(db)
    r = client.delete("/notes", headers=token(sub="alice' OR 1=1 --"))
    assert r.status_code == 204 and snapshot(db) == before


def test_default_role_and_unknown_role(env):
    client, _db = env
    assert ids(client.get("/notes", headers=token(sub="alice"))) == [1, 3]  # default_role
    r = client.get("/notes", headers=token(sub="alice", role="superuser"))
    assert r.status_code == 403 and r.get_json()["code"] == "42501"


def test_anonymous_role(env):
    client, _db = env
    assert ids(client.get("/books")) == [1]
    r = client.get("/notes")  # not in anon's map: unknown, as a table not allow-listed
    assert r.status_code == 404 and r.get_json()["code"] == "PGRST205"
    r = client.post("/books", json={"title": "x"})
    assert_denied(r, 401, "permission denied for table books")
    assert r.headers["WWW-Authenticate"].startswith("Bearer")


def test_no_anonymous_role_means_401(tmp_path):
    db = make_db(tmp_path / "a.db")
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "perm.yml").write_text("roles:\n  authenticated:\n    books: {verbs: [GET]}\n"
                                       "default_role: authenticated\n")
    client = create_app(ServerConfig(db_dsn=db, allow_tables=TABLES,
                                     auth_token_file=str(tmp_path / "secret"),
                                     permissions_file=str(tmp_path / "perm.yml"))).test_client()
    r = client.get("/books")
    assert r.status_code == 401 and r.get_json()["code"] == "PGRST302"
    assert ids(client.get("/books", headers=ALICE)) == [1]
    r = client.get("/notes", headers=ALICE)
    assert r.status_code == 404


def test_verb_refused(env):
    client, db = env
    for call in (lambda: client.post("/books", json={"title": "x"}, headers=ALICE),
                 lambda: client.patch("/books?id=eq.1", json={"title": "x"}, headers=ALICE),
                 lambda: client.delete("/books?id=eq.1", headers=ALICE),
                 lambda: client.put("/books?id=eq.1", json={"id": 1, "title": "x"},
                                    headers=ALICE),
                 lambda: client.delete("/org_docs?id=eq.1", headers=ALICE)):
        refused_unchanged(client, db, call, 403, "permission denied for table")


def test_table_outside_role_is_unknown(env):
    client, _db = env
    r = client.get("/audit", headers=ALICE)
    assert r.status_code == 404 and r.get_json()["code"] == "PGRST205"


HIDDEN_205_HINT = "Only tables and views named by --security-allow-table are exposed"


def test_unknown_table_hint_names_only_the_roles_tables(env):
    # PGRST205's "Perhaps you meant" names a table only if the role has a rule for it: anon
    # has books only, `audit` is only admin's ("*"); otherwise the body is that of a name
    # close to nothing
    client, _db = env

    def hint(path, headers=None):
        r = client.get(path, headers=headers or {})
        assert r.status_code == 404 and r.get_json()["code"] == "PGRST205"
        return r.get_json()["hint"]

    assert hint("/bookz") == "Perhaps you meant the table 'books'"
    assert hint("/notez") == hint("/zzzzz") == HIDDEN_205_HINT  # anon: no rule for notes
    assert hint("/notez", ALICE) == "Perhaps you meant the table 'notes'"
    assert hint("/audiit", ALICE) == hint("/audit", ALICE) == HIDDEN_205_HINT
    assert hint("/audiit", ADMIN) == "Perhaps you meant the table 'audit'"
    r = client.options("/notez")  # every verb finds the same
    assert r.status_code == 404 and r.get_json()["hint"] == HIDDEN_205_HINT


def test_options_allow_lists_the_roles_verbs(env):
    client, _db = env

    def allow(path, headers=None):
        r = client.options(path, headers=headers or {})
        assert r.status_code == 200, r.data
        return r.headers["Allow"]

    assert allow("/books") == allow("/books", ALICE) == "OPTIONS,GET,HEAD"
    assert allow("/notes", ALICE) == "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"
    assert allow("/org_docs", ALICE) == "OPTIONS,GET,HEAD,POST"
    assert allow("/audit", ADMIN) == "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"
    # a table without a rule for the role is unknown, as for any verb
    for path, headers in (("/notes", {}), ("/audit", ALICE)):
        r = client.options(path, headers=headers)
        assert r.status_code == 404 and r.get_json()["code"] == "PGRST205"
    r = client.options("/notes", headers={"Authorization": "Bearer not.a.jwt"})
    assert r.status_code == 401 and r.get_json()["code"] == "PGRST301"
    # a CORS preflight needs no token and names no table's verbs
    r = client.options("/audit", headers={"Origin": "http://example.com",
                                          "Access-Control-Request-Method": "DELETE"})
    assert r.status_code == 200 and "DELETE" in r.headers["Access-Control-Allow-Methods"]


def test_options_allow_of_a_write_only_rule(tmp_path):
    db = make_db(tmp_path / "w.db")
    (tmp_path / "perm.yml").write_text(
        "anonymous: anon\nroles:\n  anon:\n    audit: {verbs: [POST]}\n"
        "    books: {verbs: [GET, DELETE]}\n")
    client = create_app(ServerConfig(db_dsn=db, allow_tables=TABLES, auth_disabled=True,
                                     permissions_file=str(tmp_path / "perm.yml"))).test_client()
    assert client.options("/audit").headers["Allow"] == "OPTIONS,POST"  # HEAD comes with GET
    assert client.options("/books").headers["Allow"] == "OPTIONS,GET,HEAD,DELETE"


def test_admin_star_rule(env):
    client, db = env
    assert ids(client.get("/notes", headers=ADMIN)) == [1, 2, 3]
    assert client.get("/notes?select=secret&id=eq.2", headers=ADMIN).get_json() == [
        {"secret": "bob-secret"}]
    r = client.post("/audit", json={"id": 1}, headers=ADMIN)
    assert r.status_code == 201


# -- writes ---------------------------------------------------------------------------------

def test_insert_own_row(env):
    client, db = env
    r = client.post("/notes", json={"owner_id": "alice", "body": "new"},
                    headers={**ALICE, "Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.get_json() == [{"id": 4, "owner_id": "alice", "body": "new", "created_at": "now"}]


def test_insert_for_another_user_is_refused(env):
    client, db = env
    refused_unchanged(client, db, lambda: client.post(
        "/notes", json={"owner_id": "bob", "body": "spam"}, headers=ALICE),
        message="new row violates row-level security policy for table notes")
    # a bulk insert with one bad row: nothing written
    refused_unchanged(client, db, lambda: client.post(
        "/notes", json=[{"owner_id": "alice", "body": "ok"}, {"owner_id": "bob", "body": "x"}],
        headers=ALICE), message="row-level security")


def test_unwritable_column_is_refused(env):
    client, db = env
    refused_unchanged(client, db, lambda: client.post(
        "/notes", json={"owner_id": "alice", "secret": "x"}, headers=ALICE),
        message="permission denied for column secret")
    refused_unchanged(client, db, lambda: client.patch(
        "/notes?id=eq.1", json={"secret": "x"}, headers=ALICE),
        message="permission denied for column secret")
    refused_unchanged(client, db, lambda: client.post(
        "/notes?columns=owner_id,secret", json={"owner_id": "alice", "secret": "x"},
        headers=ALICE), message="permission denied for column secret")


def test_representation_hides_columns(env):
    client, db = env
    r = client.patch("/notes?id=eq.1", json={"body": "edited"},
                     headers={**ALICE, "Prefer": "return=representation"})
    assert r.get_json() == [{"id": 1, "owner_id": "alice", "body": "edited",
                             "created_at": "now"}]
    refused_unchanged(client, db, lambda: client.patch(
        "/notes?id=eq.1&select=id,secret", json={"body": "x"},
        headers={**ALICE, "Prefer": "return=representation"}), message="column secret")
    refused_unchanged(client, db, lambda: client.delete(
        "/notes?id=eq.1&select=secret", headers={**ALICE, "Prefer": "return=representation"}),
        message="column secret")


def test_patch_and_delete_touch_own_rows_only(env):
    client, db = env
    before = snapshot(db)
    r = client.patch("/notes?id=eq.2", json={"body": "hacked"}, headers=ALICE)
    assert r.status_code == 204 and snapshot(db) == before
    r = client.patch("/notes?or=(id.eq.2,id.eq.1)", json={"body": "mine"},
                     headers={**ALICE, "Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "0-0/1"  # the one row changed
    r = client.delete("/notes", headers={**ALICE, "Prefer": "return=representation"})
    assert [row["id"] for row in r.get_json()] == [1, 3]
    assert snapshot(db)["notes"] == [(2, "bob", "b1", "bob-secret", "now")]


def test_patch_cannot_give_a_row_away(env):
    client, db = env
    refused_unchanged(client, db, lambda: client.patch(
        "/notes?id=eq.1", json={"owner_id": "bob"}, headers=ALICE),
        message="new row violates row-level security policy for table notes")


def test_filter_on_hidden_column_in_write_is_refused(env):
    client, db = env
    refused_unchanged(client, db, lambda: client.delete(
        "/notes?secret=eq.alice-secret", headers=ALICE), message="column secret")
    refused_unchanged(client, db, lambda: client.patch(
        "/notes?or=(secret.is.null)", json={"body": "x"}, headers=ALICE),
        message="column secret")


def test_upsert_onto_another_users_row_fails(env):
    client, db = env
    refused_unchanged(client, db, lambda: client.post(
        "/notes", json={"id": 2, "owner_id": "alice", "body": "stolen"},
        headers={**ALICE, "Prefer": "resolution=merge-duplicates"}),
        message="row-level security policy (USING expression) for table notes")
    refused_unchanged(client, db, lambda: client.put(
        "/notes?id=eq.2", json={"id": 2, "owner_id": "alice", "body": "stolen"},
        headers=ALICE), message="USING expression")
    # ignore-duplicates skips the row it cannot see, as PostgreSQL's DO NOTHING
    before = snapshot(db)
    r = client.post("/notes", json={"id": 2, "owner_id": "alice", "body": "x"},
                    headers={**ALICE, "Prefer": "resolution=ignore-duplicates"})
    assert r.status_code == 201 and snapshot(db) == before


def test_upsert_own_rows(env):
    client, db = env
    r = client.post("/notes", json=[{"id": 1, "owner_id": "alice", "body": "merged"},
                                    {"id": 7, "owner_id": "alice", "body": "fresh"}],
                    headers={**ALICE, "Prefer": "resolution=merge-duplicates,"
                                                "return=representation"})
    assert r.status_code == 201
    assert [(row["id"], row["body"]) for row in r.get_json()] == [(1, "merged"), (7, "fresh")]
    r = client.put("/notes?id=eq.3", json={"id": 3, "owner_id": "alice", "body": "put"},
                   headers=ALICE)
    assert r.status_code == 204
    # the updated row must still pass the check
    refused_unchanged(client, db, lambda: client.put(
        "/notes?id=eq.3", json={"id": 3, "owner_id": "bob", "body": "given"}, headers=ALICE),
        message="new row violates row-level security policy for table notes")


def test_on_conflict_on_hidden_column_refused(env):
    client, db = env
    refused_unchanged(client, db, lambda: client.post(
        "/notes?on_conflict=secret", json={"owner_id": "alice", "body": "x"},
        headers={**ALICE, "Prefer": "resolution=merge-duplicates"}), message="column secret")


def test_check_with_nested_claim(env):
    client, db = env
    r = client.post("/org_docs", json={"id": 9, "org": 7, "author": "alice", "public": True},
                    headers=ALICE)
    assert r.status_code == 201
    refused_unchanged(client, db, lambda: client.post(
        "/org_docs", json={"id": 10, "org": 8, "author": "alice"}, headers=ALICE),
        message="row-level security")


# -- RPC and OpenAPI --------------------------------------------------------------------------

def test_rpc_only_listed_functions(env):
    client, _db = env
    r = client.get("/rpc/note_count", headers=ALICE)
    assert r.status_code == 200 and r.get_json() == 3
    assert_denied(client.get("/rpc/all_secrets", headers=ALICE), 403,
                  "permission denied for function all_secrets")
    assert_denied(client.get("/rpc/note_count"), 401, "permission denied for function")
    r = client.get("/rpc/nope", headers=ALICE)
    assert r.status_code == 404 and r.get_json()["code"] == "PGRST202"


def test_openapi_per_role(env):
    client, _db = env
    doc = client.get("/", headers=ALICE).get_json()
    assert set(doc["paths"]) == {"/", "/books", "/notes", "/org_docs", "/rpc/note_count",
                                 "/rpc/my_notes", "/rpc/add_note", "/rpc/my_org"}
    assert set(doc["paths"]["/books"]) == {"get"}
    assert set(doc["paths"]["/org_docs"]) == {"get", "post"}
    assert "secret" not in doc["definitions"]["notes"]["properties"]
    assert "rowFilter.notes.secret" not in doc["parameters"]
    anon = client.get("/").get_json()
    assert set(anon["paths"]) == {"/", "/books"}
    admin = client.get("/", headers=ADMIN).get_json()
    assert {"/audit", "/notes"} <= set(admin["paths"])
    assert "secret" in admin["definitions"]["notes"]["properties"]


# -- the permissions file ---------------------------------------------------------------------

@pytest.mark.parametrize("text,needles", [
    ("roles: {a: {books: {verbs: [GET]}}}\nextra: 1\n", ["extra", "unknown key"]),
    ("roles: {a: {books: {verbs: [FETCH]}}}\n", ["roles.a.books.verbs", "FETCH"]),
    ("roles: {a: {nope: {verbs: [GET]}}}\n", ["roles.a.nope", "not allow-listed"]),
    ("roles: {a: {books: {verbs: [GET], colour: red}}}\n", ["roles.a.books.colour"]),
    ("roles: {a: {books: {verbs: [GET], rows: 'id=zz.1'}}}\n", ["roles.a.books.rows"]),
    ("roles: {a: {books: {verbs: [GET], rows: 'id'}}}\n", ["roles.a.books.rows"]),
    ("roles: {a: {books: {verbs: [GET], rows: 'id=eq.{a b}'}}}\n",
     ["roles.a.books.rows", "claim"]),
    ("roles: {a: {books: {verbs: [GET], read_columns: [nope]}}}\n",
     ["roles.a.books.read_columns", "nope"]),
    ("roles: {a: {books: {verbs: [GET], rows: 'nope=eq.{sub}'}}}\n",
     ["roles.a.books.rows", "nope"]),
    ("anonymous: ghost\nroles: {a: {books: {verbs: [GET]}}}\n", ["anonymous", "ghost"]),
    ("role_claim: role\nroles: {a: {books: {verbs: [GET]}}}\n", ["role_claim"]),
    ("roles: {a: {books: {verbs: [GET]}}}\nfunctions: {b: [f]}\n", ["functions.b"]),
    ("roles: [\n", ["not valid YAML"]),
])
def test_bad_permissions_file_cli(tmp_path, text, needles):
    from tests.plugins.server import free_port

    db = make_db(tmp_path / "bad.db")
    path = tmp_path / "perm.yml"
    path.write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    env["SQLITEREST_PERMISSIONS_FILE"] = str(path)
    result = subprocess.run(
        [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", db, "--auth-disabled",
         "--security-allow-table", "books,notes", "--http-addr", f"127.0.0.1:{free_port()}",
         "--metrics-addr", "", "--workers", "1"],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1, result
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert str(path) in lines[0]


@pytest.mark.parametrize("path,claims,role", [
    (".role", {"role": "admin"}, "admin"),
    (".app.role", {"app": {"role": "admin"}}, "admin"),
    ('."https://x.io/role"', {"https://x.io/role": "admin"}, "admin"),
    (".roles[1]", {"roles": ["anon", "admin"]}, "admin"),
    (".a.roles[0]", {"a": {"roles": ["admin"]}}, "admin"),
    (".roles[5]", {"roles": ["admin"]}, "anon"),  # missing: the default role
])
def test_role_claim_paths(path, claims, role):
    from sqlite_rest.auth.policy import parse_policy

    policy = parse_policy({"role_claim": path, "default_role": "anon",
                           "roles": {"anon": {}, "admin": {}}}, "p.yml", frozenset())
    assert policy.access(claims).role == role


# -- JWKS and aud -----------------------------------------------------------------------------

def _jwk(public_key, kid, alg=None) -> dict:
    algo = {"RSA": jwt.algorithms.RSAAlgorithm, "EC": jwt.algorithms.ECAlgorithm,
            "OKP": jwt.algorithms.OKPAlgorithm}
    if isinstance(public_key, rsa.RSAPublicKey):
        data = json.loads(algo["RSA"].to_jwk(public_key))
    elif isinstance(public_key, ec.EllipticCurvePublicKey):
        data = json.loads(algo["EC"].to_jwk(public_key))
    else:
        data = json.loads(algo["OKP"].to_jwk(public_key))
    data["kid"] = kid
    if alg:
        data["alg"] = alg
    return data


@pytest.fixture(scope="module")
def keys():
    return {
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec": ec.generate_private_key(ec.SECP256R1()),
        "ed": ed25519.Ed25519PrivateKey.generate(),
    }


@pytest.fixture
def jwks_client(tmp_path, keys):
    db = make_db(tmp_path / "j.db")
    jwks = {"keys": [_jwk(keys["rsa"].public_key(), "r1"), _jwk(keys["rsa2"].public_key(), "r2"),
                     _jwk(keys["ec"].public_key(), "e1"), _jwk(keys["ed"].public_key(), "d1")]}
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    (tmp_path / "secret").write_bytes(SECRET)
    app = create_app(ServerConfig(db_dsn=db, allow_tables=TABLES, auth_jwks_file=str(path),
                                  auth_token_file=str(tmp_path / "secret"),
                                  auth_audience="sqlite-rest", auth_key_check_interval=0))
    return app.test_client()


def _bearer(key, alg, kid=None, **claims):
    claims.setdefault("exp", int(time.time()) + 600)
    headers = {"kid": kid} if kid else None
    return {"Authorization": "Bearer " + jwt.encode(claims, key, algorithm=alg,
                                                     headers=headers)}


@pytest.mark.parametrize("name,alg,kid", [
    ("rsa", "RS256", "r1"), ("rsa2", "RS512", "r2"), ("ec", "ES256", "e1"),
    ("ed", "EdDSA", "d1"), ("rsa2", "RS256", None),
])
def test_jwks_algorithms_and_kid(jwks_client, keys, name, alg, kid):
    r = jwks_client.get("/books", headers=_bearer(keys[name], alg, kid, aud="sqlite-rest"))
    assert r.status_code == 200, r.data


def test_jwks_wrong_kid_or_key(jwks_client, keys):
    r = jwks_client.get("/books", headers=_bearer(keys["rsa"], "RS256", "r2", aud="sqlite-rest"))
    assert r.status_code == 401 and r.get_json()["code"] == "PGRST301"
    r = jwks_client.get("/books", headers=_bearer(keys["rsa"], "RS256", "zz", aud="sqlite-rest"))
    assert r.status_code == 401 and "kid" in r.get_json()["details"]
    # algorithm confusion: an EC key never verifies an RS token, an HS token is never checked
    # against a JWKS public key
    r = jwks_client.get("/books", headers=_bearer(keys["rsa"], "RS256", "e1", aud="sqlite-rest"))
    assert r.status_code == 401


def test_audience(jwks_client, keys):
    ok = jwks_client.get("/books", headers=_bearer(keys["ec"], "ES256", "e1",
                                                   aud=["other", "sqlite-rest"]))
    assert ok.status_code == 200
    for claims in ({"aud": "other"}, {}):
        r = jwks_client.get("/books", headers=_bearer(keys["ec"], "ES256", "e1", **claims))
        # PostgREST's 303 "JWT not in audience" (a token without aud too: our choice)
        assert r.status_code == 401 and r.get_json()["code"] == "PGRST303", r.data
        assert r.get_json()["message"] == "JWT not in audience"
    # the HS secret keeps working, with the audience check too
    hs = {"Authorization": "Bearer " + jwt.encode({"aud": "sqlite-rest"}, SECRET, "HS256")}
    assert jwks_client.get("/books", headers=hs).status_code == 200
    hs = {"Authorization": "Bearer " + jwt.encode({"aud": "x"}, SECRET, "HS256")}
    assert jwks_client.get("/books", headers=hs).status_code == 401


def test_jwks_file_rotation(tmp_path, keys):
    db = make_db(tmp_path / "r.db")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(keys["ec"].public_key(), "e1")]}))
    client = create_app(ServerConfig(db_dsn=db, allow_tables=TABLES, auth_jwks_file=str(path),
                                     auth_key_check_interval=0)).test_client()
    assert client.get("/books", headers=_bearer(keys["ec"], "ES256", "e1")).status_code == 200
    path.write_text(json.dumps({"keys": [_jwk(keys["ed"].public_key(), "d1")]}))
    os.utime(path, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    assert client.get("/books", headers=_bearer(keys["ec"], "ES256", "e1")).status_code == 401
    assert client.get("/books", headers=_bearer(keys["ed"], "EdDSA", "d1")).status_code == 200


def test_bad_jwks_file_cli(tmp_path):
    db = make_db(tmp_path / "b.db")
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}')
    env = {k: v for k, v in os.environ.items() if not k.startswith("SQLITEREST_")}
    result = subprocess.run(
        [sys.executable, "-m", "sqlite_rest.cli", "serve", "--db-dsn", db, "--auth-jwks-file",
         str(path), "--security-allow-table", "books", "--metrics-addr", ""],
        capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 1
    assert "oct" in result.stderr and result.stderr.startswith("error: ")


# -- a real server and the real postgrest-py client ---------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    from tests.plugins.server import start_server

    tmp = tmp_path_factory.mktemp("roles-serve")
    db = make_db(tmp / "served.db")
    (tmp / "secret").write_bytes(SECRET)
    (tmp / "perm.yml").write_text(PERMISSIONS)
    (tmp / "functions.yml").write_text(FUNCTIONS)
    srv = start_server(db, "--security-allow-table", ",".join(TABLES), "--auth-token-file",
                       tmp / "secret", "--permissions-file", tmp / "perm.yml",
                       "--functions-file", tmp / "functions.yml", metrics=False)
    srv.db_path = db
    try:
        yield srv
    finally:
        srv.stop()


def _client(srv, headers):
    from postgrest import SyncPostgrestClient

    c = SyncPostgrestClient(srv.base_url)
    c.auth(headers["Authorization"].split(" ", 1)[1])
    return c


def test_postgrest_py_two_users(served):
    from postgrest.exceptions import APIError

    with _client(served, ALICE) as alice, _client(served, BOB) as bob:
        assert [r["id"] for r in alice.table("notes").select("*").execute().data] == [1, 3]
        assert [r["id"] for r in bob.table("notes").select("*").execute().data] == [2]
        assert alice.table("notes").select("*").eq("owner_id", "bob").execute().data == []
        res = alice.table("notes").select("*", count="exact").execute()
        assert res.count == 2
        with pytest.raises(APIError) as exc:
            alice.table("notes").select("secret").execute()
        assert exc.value.code == "42501"
        before = snapshot(served.db_path)
        with pytest.raises(APIError) as exc:
            alice.table("notes").upsert({"id": 2, "owner_id": "alice", "body": "mine"}).execute()
        assert exc.value.code == "42501"
        with pytest.raises(APIError):
            alice.table("notes").insert({"owner_id": "bob", "body": "spam"}).execute()
        assert alice.table("notes").update({"body": "x"}).eq("id", 2).execute().data == []
        assert alice.table("notes").delete().eq("id", 2).execute().data == []
        assert snapshot(served.db_path) == before
        got = bob.table("notes").insert({"owner_id": "bob", "body": "b2"}).execute().data
        assert got[0]["owner_id"] == "bob" and "secret" not in got[0]
        assert alice.rpc("note_count", {}).execute().data == 4
        with pytest.raises(APIError) as exc:
            alice.rpc("all_secrets", {}).execute()
        assert exc.value.code == "42501"


def test_headers_only_location(env):
    client, _db = env
    r = client.post("/notes", json={"owner_id": "alice", "body": "h"},
                    headers={**ALICE, "Prefer": "return=headers-only"})
    assert r.status_code == 201 and r.headers["Location"] == "/notes?id=eq.4"


def test_placeholder_inside_a_pattern(env):
    client, _db = env
    assert ids(client.get("/books", headers=token(role="prefixer", prefix="Du"))) == [1]
    assert ids(client.get("/books", headers=token(role="prefixer", prefix="X"))) == []
    # a claim is literal text inside the pattern, never a wildcard
    for wild in ("*", "%", "_une", "D?ne", "[D]"):
        assert ids(client.get("/books", headers=token(role="prefixer", prefix=wild))) == []
    assert ids(client.get("/books", headers=token(role="prefixer"))) == []
    r = client.get("/books", headers={**token(role="prefixer", prefix="D"),
                                      "Prefer": "count=exact"})
    assert r.headers["Content-Range"] == "0-0/1"


def test_one_plan_serves_every_user_of_a_role(env):
    from sqlite_rest.api import routes

    client, _db = env
    routes._role_shape_plan.cache_clear()
    for user in ("alice", "bob", "carol", "dave"):
        client.get("/notes?id=eq.1", headers=token(sub=user))
    info = routes._role_shape_plan.cache_info()
    assert (info.misses, info.hits) == (1, 3)


def test_jwks_and_audience_on_a_real_server(tmp_path, keys):
    import httpx

    from tests.plugins.server import start_server

    db = make_db(tmp_path / "served-jwks.db")
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [_jwk(keys["ec"].public_key(), "e1"),
                                         _jwk(keys["ed"].public_key(), "d1")]}))
    (tmp_path / "perm.yml").write_text(PERMISSIONS)
    srv = start_server(db, "--security-allow-table", ",".join(TABLES), "--auth-jwks-file", path,
                       "--auth-audience", "sqlite-rest", "--permissions-file",
                       tmp_path / "perm.yml", "--workers", "1", metrics=False)
    try:
        alice = _bearer(keys["ed"], "EdDSA", "d1", aud="sqlite-rest", sub="alice")
        r = httpx.get(srv.base_url + "/notes", headers=alice)
        assert r.status_code == 200 and [row["id"] for row in r.json()] == [1, 3]
        wrong = _bearer(keys["ec"], "ES256", "e1", aud="elsewhere", sub="alice")
        assert httpx.get(srv.base_url + "/notes", headers=wrong).status_code == 401
        assert httpx.get(srv.base_url + "/books").json() == [{"id": 1, "title": "Dune"}]
    finally:
        srv.stop()


def test_function_sql_reads_the_callers_claims(env):
    client, db = env
    assert client.get("/rpc/my_notes", headers=ALICE).get_json() == [
        {"id": 1, "body": "a1"}, {"id": 3, "body": "a2"}]
    assert client.get("/rpc/my_notes", headers=BOB).get_json() == [{"id": 2, "body": "b1"}]
    assert client.get("/rpc/my_notes", headers=token(role="authenticated")).get_json() == []
    r = client.post("/rpc/add_note", json={"body": "via rpc"}, headers=BOB)
    assert r.get_json() == {"id": 4, "owner_id": "bob", "body": "via rpc"}
    assert client.get("/rpc/my_org", headers=ALICE).get_json() == {"org": 7,
                                                                   "md": '{"org_id":7}'}


def test_concurrent_function_writes_keep_their_own_claims(served):
    """Writing calls from two users at once share group commits (one request's thread runs
    the others' work): each row must still carry its own caller's sub."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    users = {"alice": ALICE, "bob": BOB}

    def call(i):
        user = "alice" if i % 2 else "bob"
        r = httpx.post(served.base_url + "/rpc/add_note", json={"body": f"{user}-{i}"},
                       headers=users[user], timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    with ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(call, range(200)))
    assert all(row["body"].startswith(row["owner_id"] + "-") for row in rows)
    conn = apsw.Connection(str(served.db_path))
    try:
        stored = conn.execute("SELECT owner_id, body FROM notes WHERE body LIKE '%-%'").fetchall()
    finally:
        conn.close()
    assert len(stored) == 200 and all(body.startswith(owner + "-") for owner, body in stored)
