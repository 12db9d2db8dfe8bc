"""Roles inside resource embeddings (#14): an embedded table is read as the role reads it —
a rule with GET, its readable columns, its row filter (claims bound) — for many-to-one,
one-to-many, many-to-many (the junction too), !inner and is.null, nested embeddings and the
representation of writes. Other users' rows never appear through an embedding."""
from __future__ import annotations

import time

import apsw
import jwt
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SECRET = b"a-long-enough-hmac-secret-for-embedding-roles-0123456789-01234"

SCHEMA = """
CREATE TABLE users(id TEXT PRIMARY KEY, name TEXT, email TEXT);
CREATE TABLE projects(id INTEGER PRIMARY KEY, owner_id TEXT REFERENCES users(id), title TEXT,
                      budget INTEGER);
CREATE TABLE tasks(id INTEGER PRIMARY KEY, project_id INTEGER REFERENCES projects(id),
                   owner_id TEXT, body TEXT, secret TEXT);
CREATE TABLE labels(id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE task_labels(task_id INTEGER REFERENCES tasks(id),
                         label_id INTEGER REFERENCES labels(id), owner_id TEXT,
                         PRIMARY KEY (task_id, label_id));
CREATE TABLE audit(id INTEGER PRIMARY KEY, task_id INTEGER REFERENCES tasks(id), note TEXT);
CREATE TABLE hidden(id INTEGER PRIMARY KEY, task_id INTEGER REFERENCES tasks(id));
INSERT INTO users VALUES ('alice', 'Alice', 'a@x'), ('bob', 'Bob', 'b@x');
INSERT INTO projects VALUES (1, 'alice', 'A-proj', 100), (2, 'bob', 'B-proj', 200);
INSERT INTO tasks VALUES (1, 1, 'alice', 'a-task', 's1'), (2, 1, 'bob', 'b-in-a', 's2'),
                         (3, 2, 'bob', 'b-task', 's3'), (4, 2, 'alice', 'a-in-b', 's4');
INSERT INTO labels VALUES (1, 'red'), (2, 'blue');
-- bob's link puts 'blue' on alice's task 1: alice must not see it
INSERT INTO task_labels VALUES (1, 1, 'alice'), (1, 2, 'bob'), (3, 1, 'bob'), (3, 2, 'bob');
INSERT INTO audit VALUES (1, 1, 'n');
"""
TABLES = ("users", "projects", "tasks", "labels", "task_labels", "audit")  # not "hidden"

PERMISSIONS = """
anonymous: anon
roles:
  anon:
    tasks: {verbs: [GET], rows: "owner_id=eq.nobody"}
    audit: {verbs: [POST]}
  member:
    users: {verbs: [GET], read_columns: [id, name]}
    projects:
      verbs: [GET, POST]
      read_columns: [id, owner_id, title]
      rows: owner_id=eq.{sub}
    tasks:
      verbs: [GET, POST, PATCH, DELETE]
      read_columns: [id, project_id, owner_id, body]
      rows: owner_id=eq.{sub}
    labels: {verbs: [GET]}
    task_labels: {verbs: [GET], rows: "owner_id=eq.{sub}"}
    audit: {verbs: [POST]}
  no_junction:
    tasks: {verbs: [GET]}
    labels: {verbs: [GET]}
  junction_write_only:
    tasks: {verbs: [GET]}
    labels: {verbs: [GET]}
    task_labels: {verbs: [POST]}
  junction_keys_hidden:
    tasks: {verbs: [GET]}
    labels: {verbs: [GET]}
    task_labels: {verbs: [GET], read_columns: [owner_id]}
  narrow:
    tasks: {verbs: [GET], read_columns: [id, body]}
    projects: {verbs: [GET]}
"""


def token(**claims) -> dict:
    # A day, not minutes: these tokens are made when the module is imported, and a slow
    # CI machine once reached this file 25 minutes later (every request "JWT expired").
    claims.setdefault("exp", int(time.time()) + 86400)
    return {"Authorization": "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")}


ALICE = token(sub="alice", role="member")
BOB = token(sub="bob", role="member")


@pytest.fixture
def env(tmp_path):
    db = str(tmp_path / "roles.db")
    conn = apsw.Connection(db)
    conn.execute(SCHEMA)
    conn.close()
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "perm.yml").write_text(PERMISSIONS)
    app = create_app(ServerConfig(
        db_dsn=db, allow_tables=TABLES, auth_token_file=str(tmp_path / "secret"),
        permissions_file=str(tmp_path / "perm.yml")))
    with app.test_client() as client:
        yield client, db


def rows(client, url, headers, status=200):
    r = client.get(url, headers=headers)
    assert r.status_code == status, r.data
    return r.get_json()


def assert_error(response, status: int, code: str, message: str = ""):
    assert response.status_code == status, response.data
    body = response.get_json()
    assert body["code"] == code, body
    assert message in body["message"], body


def table_rows(db: str, table: str) -> list:
    conn = apsw.Connection(db)
    try:
        return conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
    finally:
        conn.close()


# -- many-to-one ------------------------------------------------------------------------------

def test_many_to_one_shows_only_the_roles_rows(env):
    client, _db = env
    # task 4 is alice's, in bob's project: the project is null for her, as PostgreSQL's RLS
    assert rows(client, "/tasks?select=id,projects(title)&order=id", ALICE) == [
        {"id": 1, "projects": {"title": "A-proj"}}, {"id": 4, "projects": None}]
    assert rows(client, "/tasks?select=id,projects(title)&order=id", BOB) == [
        {"id": 2, "projects": None}, {"id": 3, "projects": {"title": "B-proj"}}]
    # a spread reads through the same filter
    assert rows(client, "/tasks?select=id,...projects(title)&order=id", ALICE) == [
        {"id": 1, "title": "A-proj"}, {"id": 4, "title": None}]


def test_many_to_one_star_is_the_readable_columns(env):
    client, _db = env
    assert rows(client, "/tasks?select=id,projects(*)&id=eq.1", ALICE) == [
        {"id": 1, "projects": {"id": 1, "owner_id": "alice", "title": "A-proj"}}]
    assert rows(client, "/projects?select=title,users(*)", ALICE) == [
        {"title": "A-proj", "users": {"id": "alice", "name": "Alice"}}]


@pytest.mark.parametrize("query,column", [
    ("select=id,projects(budget)", "budget of table projects"),
    ("select=id,projects(title,b:budget)", "budget of table projects"),
    ("select=id,projects(title)&projects.budget=gt.150", "budget of table projects"),
    ("select=id,projects(title)&projects.or=(budget.gt.150,id.eq.2)",
     "budget of table projects"),
    ("select=id,projects(title,users(email))", "email of table users"),
])
def test_many_to_one_hidden_column_is_refused(env, query, column):
    client, _db = env
    assert_error(client.get("/tasks?" + query, headers=ALICE), 403, "42501",
                 "permission denied for column " + column)


def test_embedded_filters_cannot_widen_the_row_filter(env):
    client, _db = env
    got = rows(client, "/tasks?select=id,projects(title,owner_id)"
                       "&projects.or=(owner_id.eq.bob,id.eq.2)&order=id", ALICE)
    assert got == [{"id": 1, "projects": None}, {"id": 4, "projects": None}]


# -- one-to-many and nesting ------------------------------------------------------------------

def test_one_to_many_shows_only_the_roles_rows(env):
    client, _db = env
    # bob's task 2 in alice's project stays out of her array
    assert rows(client, "/projects?select=title,tasks(id,body)", ALICE) == [
        {"title": "A-proj", "tasks": [{"id": 1, "body": "a-task"}]}]
    # and out of the count a bare `count` gives (supabase's tasks(count))
    assert rows(client, "/projects?select=title,tasks(count)", ALICE) == [
        {"title": "A-proj", "tasks": [{"count": 1}]}]
    assert rows(client, "/tasks?select=count", ALICE) == [{"count": 2}]
    # and out of a to-many spread's arrays; a hidden column is refused there too
    assert rows(client, "/projects?select=title,...tasks(ids:id,bodies:body)", ALICE) == [
        {"title": "A-proj", "ids": [1], "bodies": ["a-task"]}]
    assert_error(client.get("/projects?select=title,...tasks(secret)", headers=ALICE), 403,
                 "42501", "permission denied for column secret of table tasks")
    assert rows(client, "/projects?select=title,tasks(*)", BOB) == [
        {"title": "B-proj", "tasks": [{"id": 3, "project_id": 2, "owner_id": "bob",
                                       "body": "b-task"}]}]
    assert rows(client, "/projects?select=title,tasks(*)&id=eq.2", ALICE) == []


def test_nested_embeddings_apply_each_tables_rule(env):
    client, _db = env
    assert rows(client, "/users?select=name,projects(title,tasks(body))&order=id", ALICE) == [
        {"name": "Alice", "projects": [{"title": "A-proj", "tasks": [{"body": "a-task"}]}]},
        {"name": "Bob", "projects": []}]
    assert rows(client, "/users?select=name,projects(title,tasks(body))&order=id", BOB) == [
        {"name": "Alice", "projects": []},
        {"name": "Bob", "projects": [{"title": "B-proj", "tasks": [{"body": "b-task"}]}]}]


def test_one_to_many_hidden_column_is_refused(env):
    client, _db = env
    for query in ("select=title,tasks(secret)", "select=title,tasks(id)&tasks.order=secret",
                  "select=title,tasks(id)&tasks.secret=eq.s2"):
        assert_error(client.get("/projects?" + query, headers=ALICE), 403, "42501",
                     "permission denied for column secret of table tasks")


# -- many-to-many -----------------------------------------------------------------------------

def test_many_to_many_applies_the_junctions_row_filter(env):
    client, _db = env
    # the link 1-blue is bob's: alice sees only her own links
    assert rows(client, "/tasks?select=id,labels(name)&order=id", ALICE) == [
        {"id": 1, "labels": [{"name": "red"}]}, {"id": 4, "labels": []}]
    assert rows(client, "/tasks?select=id,labels(name)&order=id", BOB) == [
        {"id": 2, "labels": []}, {"id": 3, "labels": [{"name": "red"}, {"name": "blue"}]}]
    # from the other side, the tasks' own row filter applies as well
    assert rows(client, "/labels?select=name,tasks(id)&order=id", ALICE) == [
        {"name": "red", "tasks": [{"id": 1}]}, {"name": "blue", "tasks": []}]


def test_many_to_many_needs_read_on_the_junction(env):
    client, _db = env
    # no rule for the junction: as if the tables were not related
    assert_error(client.get("/tasks?select=id,labels(name)",
                            headers=token(sub="x", role="no_junction")), 400, "PGRST200")
    assert_error(client.get("/tasks?select=id,labels(name)",
                            headers=token(sub="x", role="junction_write_only")),
                 403, "42501", "permission denied for table task_labels")
    assert_error(client.get("/tasks?select=id,labels(name)",
                            headers=token(sub="x", role="junction_keys_hidden")),
                 403, "42501", "of table task_labels")
    # without the embedding the same roles read tasks
    assert client.get("/tasks?select=id", headers=token(role="no_junction")).status_code == 200


# -- !inner and is.null -----------------------------------------------------------------------

def test_inner_and_null_filters_see_only_the_roles_rows(env):
    client, _db = env
    assert rows(client, "/tasks?select=id,projects!inner(title)", ALICE) == [
        {"id": 1, "projects": {"title": "A-proj"}}]
    assert rows(client, "/tasks?select=id,projects()&projects=is.null", ALICE) == [{"id": 4}]
    assert rows(client, "/tasks?select=id,labels!inner(name)&labels.name=eq.blue",
                ALICE) == []
    assert rows(client, "/tasks?select=id,labels!inner(name)&labels.name=eq.blue",
                BOB) == [{"id": 3, "labels": [{"name": "blue"}]}]
    assert rows(client, "/projects?select=title,tasks!inner(id)&tasks.owner_id=eq.bob",
                ALICE) == []
    assert_error(client.get("/tasks?select=id,projects!inner(title)&projects.budget=gt.1",
                            headers=ALICE), 403, "42501", "budget")


# -- tables the role may not read -------------------------------------------------------------

def test_embedding_a_table_without_read_is_refused_as_at_top_level(env):
    client, _db = env
    top = client.get("/audit", headers=ALICE)
    assert_error(top, 403, "42501", "permission denied for table audit")
    assert_error(client.get("/tasks?select=id,audit(*)", headers=ALICE), 403, "42501",
                 top.get_json()["message"])
    # the anonymous role: 401, as its top-level read
    assert_error(client.get("/tasks?select=id,audit(note)"), 401, "42501",
                 "permission denied for table audit")


def test_embedding_a_table_without_a_rule_is_answered_as_unrelated(env):
    client, _db = env
    unrelated = client.get("/tasks?select=id,nothing(*)", headers=ALICE)
    assert_error(unrelated, 400, "PGRST200")
    # "hidden" exists and is related but not allow-listed; "users" has no rule for "narrow"
    assert_error(client.get("/tasks?select=id,hidden(*)", headers=ALICE), 400, "PGRST200")
    assert_error(client.get("/projects?select=id,users(*)", headers=token(role="narrow")),
                 400, "PGRST200")


def test_correlation_columns_must_be_readable(env):
    client, _db = env
    # "narrow" cannot read tasks.project_id: embedding projects would reveal it
    assert_error(client.get("/tasks?select=id,projects(title)", headers=token(role="narrow")),
                 403, "42501", "column project_id of table tasks")
    assert rows(client, "/tasks?select=id,body&id=eq.1", token(role="narrow")) == [
        {"id": 1, "body": "a-task"}]


def test_missing_claim_matches_no_embedded_row(env):
    client, _db = env
    assert rows(client, "/users?select=id,projects(title)&order=id", token(role="member")) == [
        {"id": "alice", "projects": []}, {"id": "bob", "projects": []}]


def test_count_with_embedding_counts_the_roles_rows(env):
    client, _db = env
    r = client.get("/tasks?select=id,projects(title)",
                   headers={**ALICE, "Prefer": "count=exact"})
    assert r.status_code == 200 and r.headers["Content-Range"] == "0-1/2"


# -- write responses --------------------------------------------------------------------------

REPRESENTATION = {"Prefer": "return=representation"}


def test_insert_representation_embeds_through_the_rules(env):
    client, db = env
    r = client.post("/tasks?select=id,body,projects(*),labels(name)",
                    json=[{"id": 10, "project_id": 1, "owner_id": "alice", "body": "new"},
                          {"id": 11, "project_id": 2, "owner_id": "alice", "body": "new2"}],
                    headers={**ALICE, **REPRESENTATION})
    assert r.status_code == 201, r.data
    assert r.get_json() == [
        {"id": 10, "body": "new", "projects": {"id": 1, "owner_id": "alice", "title": "A-proj"},
         "labels": []},
        {"id": 11, "body": "new2", "projects": None, "labels": []}]  # bob's project: hidden
    r = client.post("/projects?select=title,tasks(id)", json={"id": 3, "owner_id": "alice",
                                                              "title": "New"},
                    headers={**ALICE, **REPRESENTATION})
    assert r.status_code == 201 and r.get_json() == [{"title": "New", "tasks": []}]
    assert (3, "alice", "New", None) in table_rows(db, "projects")


def test_update_and_delete_representation_embed_only_the_roles_rows(env):
    client, _db = env
    r = client.patch("/tasks?id=eq.1&select=id,body,labels(name),projects(title)",
                     json={"body": "edited"}, headers={**ALICE, **REPRESENTATION})
    assert r.status_code == 200 and r.get_json() == [
        {"id": 1, "body": "edited", "labels": [{"name": "red"}],
         "projects": {"title": "A-proj"}}]
    r = client.delete("/tasks?id=eq.4&select=id,projects(title)",
                      headers={**ALICE, **REPRESENTATION})
    assert r.status_code == 200 and r.get_json() == [{"id": 4, "projects": None}]


@pytest.mark.parametrize("select,status,code", [
    ("id,projects(budget)", 403, "42501"),
    ("id,audit(note)", 403, "42501"),
    ("id,tasks_unrelated(*)", 400, "PGRST200"),
    ("id,hidden(*)", 400, "PGRST200"),
])
def test_refused_representation_writes_nothing(env, select, status, code):
    client, db = env
    before = {t: table_rows(db, t) for t in ("tasks", "projects")}
    r = client.post(f"/tasks?select={select}",
                    json={"id": 20, "project_id": 1, "owner_id": "alice", "body": "x"},
                    headers={**ALICE, **REPRESENTATION})
    assert_error(r, status, code)
    r = client.patch(f"/tasks?id=eq.1&select={select}", json={"body": "changed"},
                     headers={**ALICE, **REPRESENTATION})
    assert_error(r, status, code)
    assert {t: table_rows(db, t) for t in ("tasks", "projects")} == before


def test_star_with_an_embedding_and_relationship_errors_under_a_role(env):
    client, _db = env
    assert rows(client, "/tasks?select=*,projects(title)&id=eq.1", ALICE) == [
        {"id": 1, "project_id": 1, "owner_id": "alice", "body": "a-task",
         "projects": {"title": "A-proj"}}]
    # a readable table that is not related: PostgREST's PGRST200, as without roles
    assert_error(client.get("/labels?select=id,projects(title)", headers=ALICE), 400,
                 "PGRST200")


def test_claims_of_any_json_value_plan_embeddings(env):
    client, _db = env
    odd = token(sub="alice", role="member", big=2 ** 70, nested={"b": [1.5, None, True]})
    for _ in range(2):  # planned, then from the cache
        assert rows(client, "/tasks?select=id,projects(title)&order=id", odd) == [
            {"id": 1, "projects": {"title": "A-proj"}}, {"id": 4, "projects": None}]
    assert rows(client, "/tasks?select=id,projects(title)&order=id", BOB)[1] == {
        "id": 3, "projects": {"title": "B-proj"}}
