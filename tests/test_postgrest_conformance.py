"""PostgREST's behaviour, case by case, as its own spec suite states it (test/spec/Feature/…),
on a small SQLite schema of our own. Each test names the spec file its cases come from; the
cases are restated here, not copied.

Areas checked and found equal are not repeated here (they live in test_api_read/write,
test_embedding, test_types, test_query_parser); this module holds the cases that differed.
"""
from __future__ import annotations

import apsw
import orjson
import pytest

from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig

SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY);
CREATE TABLE clients (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                       client_id INTEGER REFERENCES clients(id));
CREATE TABLE tasks (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                    project_id INTEGER REFERENCES projects(id));
CREATE TABLE langs (name TEXT PRIMARY KEY, rank INTEGER);
CREATE TABLE no_pk (a TEXT, b TEXT);
CREATE TABLE with_default (id INTEGER PRIMARY KEY, note TEXT DEFAULT 'none');
INSERT INTO items VALUES (1), (2), (3), (4), (5);
INSERT INTO clients VALUES (1, 'Acme'), (2, 'Globex');
INSERT INTO projects VALUES (1, 'Rocket', 1), (2, 'Anvil', 1), (3, 'Laser', 2), (4, 'Lone', NULL);
INSERT INTO tasks VALUES (1, 'Design rocket', 1), (2, 'Build rocket', 1), (3, 'Design anvil', 2);
INSERT INTO langs VALUES ('Go', 1), ('Rust', 2), ('Zig', 3);
INSERT INTO no_pk VALUES ('1', '0'), ('2', '0'), (NULL, NULL);
"""

TABLES = "items,clients,projects,tasks,langs,no_pk,with_default"


def make_db(path, schema: str) -> str:
    conn = apsw.Connection(str(path))
    conn.execute(schema)
    conn.close()
    return str(path)


def app_client(db: str, tables):
    """The test client of the production app over ``db``, auth disabled."""
    return create_app(ServerConfig(db_dsn=db, allow_tables=tuple(tables),
                                   auth_disabled=True)).test_client()


@pytest.fixture
def db(tmp_path):
    return make_db(tmp_path / "conformance.db", SCHEMA)


@pytest.fixture
def client(db):
    with app_client(db, (TABLES,)) as c:
        yield c


def rows(db, sql):
    conn = apsw.Connection(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def body(response):
    return orjson.loads(response.data)


# --- QuerySpec: a parameter for an embedding select does not have ----------------------------

@pytest.mark.parametrize("url, name", [
    ("/clients?select=*&missing_projects.name=like.*x*", "missing_projects"),
    ("/clients?select=*,acme:projects(*)&acmes.name=eq.x", "acmes"),
    # a nested level names only the unknown embedding, not its path
    ("/clients?select=id,projects(id,tasks(id))&projects.tasks2.name=like.D*", "tasks2"),
])
def test_a_parameter_of_an_unknown_embedding_is_pgrst108(client, url, name):
    r = client.get(url)
    assert r.status_code == 400
    assert body(r) == {
        "code": "PGRST108", "details": None,
        "message": f"'{name}' is not an embedded resource in this request",
        "hint": f"Verify that '{name}' is included in the 'select' query parameter."}


# --- UpdateSpec, DeleteSpec, InsertSpec, UpsertSpec: Content-Range of a write ---------------

@pytest.mark.parametrize("method, url, payload, prefer, status, content_range", [
    # PATCH's range spans the rows it changed (0-0 for one), with the total when counted
    ("PATCH", "/items?id=eq.2", {"id": 20}, None, 204, "0-0/*"),
    ("PATCH", "/no_pk?b=eq.0", {"b": "0"}, None, 204, "0-1/*"),
    ("PATCH", "/no_pk?b=eq.0", {"b": "0"}, "count=exact", 204, "0-1/2"),
    ("PATCH", "/no_pk?b=eq.0", {"b": "0"}, "return=representation", 200, "0-1/*"),
    ("PATCH", "/items?id=eq.99", {"id": 98}, None, 204, "*/*"),
    ("PATCH", "/items?id=eq.99", {"id": 98}, "count=exact", 204, "*/0"),
    # POST and DELETE name no rows, only the count
    ("POST", "/items", {"id": 10}, None, 201, "*/*"),
    ("DELETE", "/items?id=lt.3", None, None, 204, "*/*"),
    ("DELETE", "/items?id=lt.3", None, "count=exact", 204, "*/2"),
    # PUT has no Content-Range at all
    ("PUT", "/items?id=eq.9", {"id": 9}, None, 204, None),
    ("PUT", "/items?id=eq.9", {"id": 9}, "return=representation", 201, None),
])
def test_the_content_range_of_a_write(client, method, url, payload, prefer, status,
                                      content_range):
    r = client.open(url, method=method, json=payload,
                    headers={"Prefer": prefer} if prefer else {})
    assert r.status_code == status, r.data
    assert r.headers.get("Content-Range") == content_range


def test_patch_takes_an_array_of_one_object(client, db):
    # MaxAffectedSpec patches with [{…}]: PostgREST updates from the array's rows
    r = client.patch("/langs?name=eq.Go", json=[{"rank": 19}])
    assert (r.status_code, r.headers["Content-Range"]) == (204, "0-0/*")
    assert rows(db, "SELECT rank FROM langs WHERE name = 'Go'") == [(19,)]


# --- Preferences: which wins, which are applied, in which order -------------------------------

@pytest.mark.parametrize("method, url, payload, prefer, applied", [
    # the order is PostgREST's (resolution, missing, return, count, tx, handling, max-affected),
    # not the order sent (InsertSpec: "missing=default, return=representation")
    ("POST", "/with_default", {"id": 1},
     ["return=representation", "missing=default"], "missing=default, return=representation"),
    ("POST", "/langs", {"name": "C", "rank": 9},
     ["return=representation, count=exact", "resolution=merge-duplicates"],
     "resolution=merge-duplicates, return=representation, count=exact"),
    ("DELETE", "/items?id=eq.1", None, ["max-affected=5, handling=strict"],
     "handling=strict, max-affected=5"),
    # the first value of a preference wins (PostgREST's fromHeaders)
    ("GET", "/items", None, ["count=exact, count=planned"], "count=exact"),
    # missing= means nothing to PUT; max-affected only PATCH and DELETE
    ("PUT", "/items?id=eq.1", {"id": 1}, ["missing=default, count=exact"], "count=exact"),
    ("POST", "/items", {"id": 7}, ["handling=strict, max-affected=5"], "handling=strict"),
    # resolution= on a table with no key to conflict on is ignored (UpsertSpec)
    ("POST", "/no_pk", [{"a": "1", "b": "0"}],
     ["return=representation", "resolution=merge-duplicates"], "return=representation"),
])
def test_preference_applied(client, method, url, payload, prefer, applied):
    r = client.open(url, method=method, json=payload,
                    headers=[("Prefer", value) for value in prefer])
    assert r.status_code < 300, r.data
    assert r.headers["Preference-Applied"] == applied


def test_the_first_tx_preference_wins(client, db):
    r = client.post("/items", json={"id": 30}, headers={"Prefer": "tx=commit, tx=rollback"})
    assert (r.status_code, r.headers["Preference-Applied"]) == (201, "tx=commit")
    assert rows(db, "SELECT id FROM items WHERE id = 30") == [(30,)]


def test_max_affected_does_not_limit_a_post(client, db):
    # MaxAffectedSpec: PostgREST checks it on PATCH, DELETE and functions only
    r = client.post("/items", json=[{"id": 40}, {"id": 41}],
                    headers={"Prefer": "handling=strict, max-affected=1"})
    assert r.status_code == 201
    assert rows(db, "SELECT count(*) FROM items WHERE id >= 40") == [(2,)]


# --- UpsertSpec ---------------------------------------------------------------------------

def test_ignore_duplicates_that_inserts_nothing_is_201(client):
    # only merge-duplicates answers 200 when nothing was inserted
    prefer = [("Prefer", "return=representation"), ("Prefer", "resolution=ignore-duplicates")]
    r = client.post("/langs", json=[{"name": "Go", "rank": 5}], headers=prefer)
    assert (r.status_code, body(r)) == (201, [])
    prefer[1] = ("Prefer", "resolution=merge-duplicates")
    r = client.post("/langs", json=[{"name": "Go", "rank": 5}], headers=prefer)
    assert (r.status_code, body(r)) == (200, [{"name": "Go", "rank": 5}])


def test_merge_duplicates_on_a_table_without_a_key_inserts(client, db):
    r = client.post("/no_pk", json=[{"a": "1", "b": "0"}],
                    headers={"Prefer": "return=representation, resolution=merge-duplicates"})
    assert (r.status_code, body(r)) == (201, [{"a": "1", "b": "0"}])
    assert rows(db, "SELECT count(*) FROM no_pk WHERE a = '1'") == [(2,)]


# --- RangeSpec ----------------------------------------------------------------------------

@pytest.mark.parametrize("offset, status, content_range", [
    (4, 206, "4-4/5"),
    (5, 206, "*/5"),   # an offset at the end is an empty page, not 416 (only past it is)
    (6, 416, "*/5"),
])
def test_an_offset_is_unsatisfiable_only_past_the_end(client, offset, status, content_range):
    r = client.get(f"/items?offset={offset}", headers={"Prefer": "count=exact"})
    assert (r.status_code, r.headers["Content-Range"]) == (status, content_range)
    if status == 416:
        assert body(r)["details"] == f"An offset of {offset} was requested, but there are " \
                                     "only 5 rows."
    else:
        assert body(r) == ([{"id": 5}] if offset == 4 else [])


def test_a_range_ending_before_its_start(client):
    r = client.get("/items", headers={"Range": "1-0"})
    assert r.status_code == 416
    assert body(r) == {"code": "PGRST103", "message": "Requested range not satisfiable",
                       "details": "The lower boundary must be lower than or equal to the "
                                  "upper boundary in the Range header.", "hint": None}


# --- SingularSpec, InsertSpec (CSV): error messages -----------------------------------------

def test_singular_error_message(client):
    r = client.get("/items?id=lt.0", headers={"Accept": "application/vnd.pgrst.object+json"})
    assert r.status_code == 406
    assert (body(r)["message"], body(r)["details"]) == (
        "Cannot coerce the result to a single JSON object", "The result contains 0 rows")


def test_csv_lines_of_another_width(client):
    r = client.post("/no_pk", data="a,b\nfoo,bar\nbaz", headers={"Content-Type": "text/csv"})
    assert r.status_code == 400
    assert (body(r)["code"], body(r)["message"]) == (
        "PGRST102", "All lines must have same number of fields")


# --- RpcSpec, MaxAffectedSpec: function calls ------------------------------------------------

FUNCTIONS = """
functions:
  item_range:
    params: {min: integer, max: integer}
    sql: SELECT id FROM items WHERE id > :min AND id <= :max
  add_them:
    params: {a: integer, b: integer}
    sql: SELECT :a + :b AS sum
    returns: value
  project:
    params: {id: integer}
    sql: SELECT id, name FROM projects WHERE id = :id
    returns: row
  project_client:
    params: {id: integer}
    sql: SELECT id, client_id FROM projects WHERE id = :id
    returns: row
  hello:
    params: {name: text}
    sql: SELECT 'Hello, ' || :name AS hello
    returns: value
  delete_items:
    sql: DELETE FROM items RETURNING id
  forget:
    sql: DELETE FROM items
    returns: nothing
"""


@pytest.fixture
def rpc(db, tmp_path):
    path = tmp_path / "functions.yml"
    path.write_text(FUNCTIONS)
    app = create_app(ServerConfig(db_dsn=db, allow_tables=(TABLES,), auth_disabled=True,
                                  functions_file=str(path)))
    with app.test_client() as c:
        yield c


@pytest.mark.parametrize("url, prefer, content_range", [
    ("/rpc/add_them?a=3&b=4", None, "0-0/*"),
    ("/rpc/add_them?a=3&b=4", "count=exact", "0-0/1"),
    ("/rpc/project?id=1", "count=exact", "0-0/1"),
    ("/rpc/project?id=99", None, "0-0/*"),  # null is still the one result
])
def test_a_single_result_is_row_0_of_1(rpc, url, prefer, content_range):
    r = rpc.get(url, headers={"Prefer": prefer} if prefer else {})
    assert (r.status_code, r.headers["Content-Range"]) == (200, content_range)


def test_columns_names_the_arguments_of_a_post(rpc):
    # the body's other keys are ignored, as an insert's are
    r = rpc.post("/rpc/hello?columns=name", json={"name": "John", "smth": "here", "id": 13})
    assert (r.status_code, body(r)) == (200, "Hello, John")


def test_an_array_body_passes_its_first_object(rpc):
    r = rpc.post("/rpc/add_them", json=[{"a": 1, "b": 2}, {"a": 4, "b": 6}])
    assert (r.status_code, body(r)) == (200, 3)
    r = rpc.post("/rpc/add_them", json=[{"a": 1, "b": 2}, {"a": 4}])
    assert (r.status_code, body(r)["code"], body(r)["message"]) == (
        400, "PGRST102", "All object keys must match")


@pytest.mark.parametrize("function, status", [("delete_items", 200), ("delete_items", 400)])
def test_max_affected_limits_a_function(rpc, db, function, status):
    limit = 5 if status == 200 else 4
    r = rpc.post(f"/rpc/{function}", headers={"Prefer": f"handling=strict, max-affected={limit}"})
    assert r.status_code == status
    if status == 400:
        assert body(r) == {"code": "PGRST124", "details": "The query affects 5 rows",
                           "hint": None,
                           "message": "Query result exceeds max-affected preference constraint"}
        assert rows(db, "SELECT count(*) FROM items") == [(5,)]  # rolled back
    else:
        assert r.headers["Preference-Applied"] == f"handling=strict, max-affected={limit}"
        assert rows(db, "SELECT count(*) FROM items") == [(0,)]


@pytest.mark.parametrize("function", ["add_them?a=1&b=2", "project?id=1", "forget"])
def test_max_affected_needs_a_set_returning_function(rpc, function):
    r = rpc.post(f"/rpc/{function.split('?')[0]}", json=dict(
        p.split("=") for p in function.partition("?")[2].split("&") if p),
        headers={"Prefer": "handling=strict, max-affected=1"})
    assert (r.status_code, body(r)["code"]) == (400, "PGRST128")


def test_max_affected_without_strict_is_not_applied(rpc, db):
    r = rpc.post("/rpc/delete_items", headers={"Prefer": "max-affected=1"})
    assert r.status_code == 200 and "Preference-Applied" not in r.headers
    assert rows(db, "SELECT count(*) FROM items") == [(0,)]


def test_preference_applied_on_a_function_call(rpc):
    # return=, missing= and resolution= are a table write's, never echoed on a call
    prefer = "return=representation, missing=default, resolution=merge-duplicates, " \
             "count=exact, tx=commit, handling=lenient"
    r = rpc.post("/rpc/item_range", json={"min": 0, "max": 2}, headers={"Prefer": prefer})
    assert r.headers["Preference-Applied"] == "count=exact, tx=commit, handling=lenient"
    r = rpc.get("/rpc/item_range?min=0&max=2", headers={"Prefer": prefer})
    assert r.headers["Preference-Applied"] == "count=exact, tx=commit, handling=lenient"


# --- AuthSpec, ErrorSpec (JWT Errors), AudienceJwtSecretSpec ------------------------------------

SECRET = b"reallyreallyreallyreallyverysafe"


@pytest.fixture
def authed(db, tmp_path):
    def make(**options):
        key = tmp_path / "secret"
        key.write_bytes(SECRET)
        app = create_app(ServerConfig(db_dsn=db, allow_tables=(TABLES,), auth_token_file=str(key),
                                      **options))
        return app.test_client()
    return make


def _token(claims, secret=SECRET, header=None):
    import jwt
    return jwt.encode(claims, secret, algorithm="HS256", headers=header)


def _unsigned(claims):
    import base64
    part = lambda d: base64.urlsafe_b64encode(orjson.dumps(d)).rstrip(b"=").decode()  # noqa
    return f"{part({'typ': 'JWT', 'alg': 'none'})}.{part(claims)}.c2ln"


@pytest.mark.parametrize("token, code, message, details", [
    ("", "PGRST301", "Empty JWT is sent in Authorization header", None),
    ("eyJhbGciOiJIUzI1NiJ9.e30", "PGRST301", "Expected 3 parts in JWT; got 2", None),
    ("quifquirndsjagnrgniur.fonvoienqhhdj.iuqvnvhojah", "PGRST301",
     "JWT cryptographic operation failed", None),
    (_unsigned({}), "PGRST301", "Wrong or unsupported encoding algorithm",
     "the JWT algorithm 'none' is not accepted"),
    (_token({}, b"wrong secret, wrong secret, wrong"), "PGRST301",
     "No suitable key or wrong key type", "None of the keys was able to decode the JWT"),
    ("@-35 exp", "PGRST303", "JWT expired", None),
    ("@35 nbf", "PGRST303", "JWT not yet valid", None),
    ("@35 iat", "PGRST303", "JWT issued at future", None),
    (_token({"exp": "invalid"}), "PGRST303", "The JWT 'exp' claim must be a number", None),
    (_token({"nbf": "invalid"}), "PGRST303", "The JWT 'nbf' claim must be a number", None),
    (_token({"iat": "invalid"}), "PGRST303", "The JWT 'iat' claim must be a number", None),
    (_token({"aud": {"invalid": "value"}}), "PGRST303",
     "The JWT 'aud' claim must be a string or an array of strings", None),
    (_token({"aud": [{"invalid": "value"}, "test"]}), "PGRST303",
     "The JWT 'aud' claim must be a string or an array of strings", None),
])
def test_jwt_errors(authed, token, code, message, details):
    if token.startswith("@"):  # a time claim relative to now
        import time
        offset, claim = token[1:].split()
        token = _token({claim: int(time.time()) + int(offset)})
    r = authed().get("/items", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401
    assert body(r) == {"code": code, "message": message, "details": details, "hint": None}
    assert r.headers["WWW-Authenticate"] == \
        f'Bearer error="invalid_token", error_description="{message}"'


def test_jwt_time_claims_have_30_seconds_of_skew(authed):
    import time
    now = int(time.time())
    token = _token({"exp": now - 25, "nbf": now + 25, "iat": now + 25})
    assert authed().get("/items", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_jwt_nan_time_is_not_a_number(authed):
    import base64
    import hashlib
    import hmac
    part = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()  # noqa: E731
    signing = part(b'{"alg":"HS256"}') + "." + part(b'{"exp":NaN}')
    token = f"{signing}.{part(hmac.new(SECRET, signing.encode(), hashlib.sha256).digest())}"
    r = authed().get("/items", headers={"Authorization": f"Bearer {token}"})
    assert (r.status_code, body(r)["message"]) == (401, "The JWT 'exp' claim must be a number")


def test_another_authorization_scheme_is_no_token(authed):
    r = authed().get("/items", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert (r.status_code, r.headers["WWW-Authenticate"]) == (401, "Bearer")
    assert body(r) == {"code": "PGRST302", "message": "Anonymous access is disabled",
                       "details": None, "hint": None}


@pytest.mark.parametrize("claims, status", [
    ({"aud": "spec tests"}, 200),
    ({"aud": ["other", "spec tests"]}, 200),
    ({"aud": "not set"}, 401),
    ({"aud": ["a", "b"]}, 401),
    # the time claims are checked first, as PostgREST
    ({"aud": "spec tests", "exp": 1}, 401),
    ({"exp": 1}, 401),
])
def test_jwt_audience(authed, claims, status):
    r = authed(auth_audience="spec tests").get(
        "/items", headers={"Authorization": f"Bearer {_token(claims)}"})
    assert r.status_code == status
    if status == 401:
        assert body(r)["code"] == "PGRST303"
        assert body(r)["message"] == ("JWT expired" if "exp" in claims else "JWT not in audience")


# --- EmbedDisambiguationSpec: a table with a foreign key to itself --------------------------------

FAMILY = """
CREATE TABLE family (id INTEGER PRIMARY KEY, name TEXT,
                     parent_id INTEGER REFERENCES family(id));
INSERT INTO family VALUES (1, 'Root', NULL), (2, 'Kid One', 1), (3, 'Kid Two', 1),
                          (4, 'Grandkid', 2);
"""


@pytest.fixture
def family(db):
    conn = apsw.Connection(db)
    conn.execute(FAMILY)
    conn.close()
    app = create_app(ServerConfig(db_dsn=db, allow_tables=("family",), auth_disabled=True))
    with app.test_client() as c:
        yield c


@pytest.mark.parametrize("url, expected", [
    # the foreign key column names the parent (many-to-one), recursively
    ("/family?id=in.(3,4)&select=id,parent_id(id,name,parent_id(*))&order=id",
     [{"id": 3, "parent_id": {"id": 1, "name": "Root", "parent_id": None}},
      {"id": 4, "parent_id": {"id": 2, "name": "Kid One",
                              "parent_id": {"id": 1, "name": "Root", "parent_id": None}}}]),
    # the table's name names the children (one-to-many), with or without the column as hint
    ("/family?id=eq.1&select=id,children:family(id)", [{"id": 1, "children": [{"id": 2},
                                                                                {"id": 3}]}]),
    ("/family?id=eq.1&select=name,children:family!parent_id(name,"
     "children:family!parent_id(name))",
     [{"name": "Root", "children": [{"name": "Kid One", "children": [{"name": "Grandkid"}]},
                                    {"name": "Kid Two", "children": []}]}]),
    ("/family?id=eq.2&select=name,parent_id(name,children:family!parent_id(name))",
     [{"name": "Kid One", "parent_id": {"name": "Root", "children": [{"name": "Kid One"},
                                                                      {"name": "Kid Two"}]}}]),
])
def test_self_reference_embeds_parents_and_children(family, url, expected):
    r = family.get(url)
    assert (r.status_code, body(r)) == (200, expected)


def test_a_self_reference_hint_names_the_childrens_column_only(family):
    # PostgREST matches a self relationship's hint on the children's column, not the key's name
    r = family.get("/family?select=id,family!family_parent_id_fkey(id)")
    assert (r.status_code, body(r)["code"]) == (400, "PGRST200")


def test_an_embedding_outside_the_allow_list_reveals_nothing(db):
    # agents and departments are related both ways: building the embedding named both keys
    # (PGRST201) or the hidden table's columns (42703) before the allow-list was checked
    conn = apsw.Connection(db)
    conn.execute("""
        CREATE TABLE departments (id INTEGER PRIMARY KEY, head_id INTEGER REFERENCES agents(id));
        CREATE TABLE agents (id INTEGER PRIMARY KEY,
                             department_id INTEGER REFERENCES departments(id));""")
    conn.close()
    app = create_app(ServerConfig(db_dsn=db, allow_tables=("agents",), auth_disabled=True))
    client = app.test_client()
    for url in ("/agents?select=*,departments(*)", "/agents?select=*,departments(*)&limit=0",
                "/agents?select=*,departments!department_id(nope)"):
        r = client.get(url)
        assert (r.status_code, body(r)["code"]) == (400, "PGRST200"), url
        assert "head_id" not in r.get_data(as_text=True)


# --- OptionsSpec, CorsSpec -----------------------------------------------------------------------

def test_options_on_the_root(client):
    # a CORS preflight of the OpenAPI description (it was a 500: the preflight lacked its environ)
    r = client.options("/", headers={"Origin": "http://example.com",
                                     "Access-Control-Request-Method": "GET"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Origin"] == "*"


# --- ErrorSpec: PGRST205's hint; OptionsSpec: Allow per relation --------------------------------

HINT_SCHEMA = """
CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT);
CREATE TABLE no_key (a TEXT);
CREATE TABLE secrets (id INTEGER PRIMARY KEY, pin TEXT);
CREATE VIEW author_names AS SELECT name FROM authors;
CREATE VIEW authors_rw AS SELECT id, name FROM authors;
CREATE TRIGGER authors_rw_i INSTEAD OF INSERT ON authors_rw
  BEGIN INSERT INTO authors (id, name) VALUES (NEW.id, NEW.name); END;
CREATE TRIGGER authors_rw_u INSTEAD OF UPDATE OF name ON authors_rw
  BEGIN UPDATE authors SET name = NEW.name WHERE id = OLD.id; END;
CREATE TRIGGER "authors_rw d" INSTEAD OF DELETE ON authors_rw
  BEGIN DELETE FROM authors WHERE id = OLD.id; END;
CREATE VIEW authors_ins AS SELECT id, name FROM authors;
CREATE TRIGGER IF NOT EXISTS main.authors_ins_i INSTEAD OF INSERT ON authors_ins
  BEGIN SELECT 'INSTEAD OF DELETE'; END;
CREATE VIEW authors_upd AS SELECT id, name FROM authors;
CREATE TRIGGER authors_upd_u INSTEAD OF UPDATE ON authors_upd BEGIN SELECT 1; END;
CREATE VIEW authors_del AS SELECT id, name FROM authors;
CREATE TRIGGER authors_del_d INSTEAD OF DELETE ON authors_del BEGIN SELECT 1; END;
"""
HINT_TABLES = ("authors", "no_key", "author_names", "authors_rw", "authors_ins", "authors_upd",
               "authors_del")  # secrets exists but is not allow-listed
DEFAULT_205_HINT = "Only tables and views named by --security-allow-table are exposed"


@pytest.fixture
def hint_db(tmp_path):
    return make_db(tmp_path / "hints.db", HINT_SCHEMA)


@pytest.fixture
def hint_client(hint_db):
    with app_client(hint_db, HINT_TABLES) as c:
        yield c


def not_found_205(name, hint=DEFAULT_205_HINT):
    return {"code": "PGRST205", "details": None, "hint": hint,
            "message": f"Could not find the table '{name}' in the schema cache"}


@pytest.mark.parametrize("method", ["GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS"])
def test_an_unknown_table_hints_the_closest(hint_client, method):
    kw = {"json": {"id": 1}} if method in ("POST", "PATCH", "PUT") else {}
    r = hint_client.open("/authorz?id=eq.1", method=method, **kw)
    assert r.status_code == 404
    if method != "HEAD":
        assert body(r) == not_found_205(
            "authorz", "Perhaps you meant the table 'authors'")


@pytest.mark.parametrize("name, close", [
    ("authorx", "authors"), ("authorxx", "authors"),  # at least 0.75 similar, as PostgREST
    ("authxxs", None), ("autxxxxs", None), ("Author_Names", "author_names"),
    ("author_namez", "author_names")])
def test_the_hint_needs_a_close_name(hint_client, name, close):
    r = hint_client.get("/" + name)
    assert r.status_code == 404
    assert body(r) == not_found_205(
        name, f"Perhaps you meant the table '{close}'" if close else DEFAULT_205_HINT)


def test_the_hint_never_names_a_hidden_table(hint_client):
    # `secrets` exists but is not allow-listed: never suggested, and a close name answers
    # exactly as a name close to nothing (the same body but for the name asked)
    for name in ("secret", "secretz", "secrets"):
        r = hint_client.get("/" + name)
        assert r.status_code == 404
        assert body(r) == not_found_205(name)


def test_the_hint_of_a_replica(hint_db, tmp_path):
    from pathlib import Path
    from urllib.parse import quote

    from tests.plugins.replicas import snapshot_replica

    url = snapshot_replica(Path(hint_db), tmp_path / "replica")
    client = create_app(ServerConfig(
        db_dsn=f"file:replica.db?vfs=litestream&replica_url={quote(url, safe='')}",
        allow_tables=HINT_TABLES, auth_disabled=True)).test_client()
    assert body(client.get("/authorz")) == not_found_205(
        "authorz", "Perhaps you meant the table 'authors'")
    assert body(client.get("/secretz")) == not_found_205("secretz")


ALLOW_PER_RELATION = [
    ("/authors", "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"),
    ("/no_key", "OPTIONS,GET,HEAD,POST,PATCH,DELETE"),      # PUT needs a primary key
    ("/author_names", "OPTIONS,GET,HEAD"),                 # a view without triggers
    ("/authors_rw", "OPTIONS,GET,HEAD,POST,PATCH,DELETE"),  # views have no primary key
    ("/authors_ins", "OPTIONS,GET,HEAD,POST"),
    ("/authors_upd", "OPTIONS,GET,HEAD,PATCH"),
    ("/authors_del", "OPTIONS,GET,HEAD,DELETE"),
]


@pytest.mark.parametrize("path, allow", ALLOW_PER_RELATION)
def test_options_allow_per_relation(hint_client, path, allow):
    r = hint_client.options(path)
    assert r.status_code == 200
    assert r.data == b""
    assert r.headers["Allow"] == allow
    assert r.headers["Content-Length"] == "0"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert "Content-Type" not in r.headers and "Access-Control-Allow-Methods" not in r.headers


@pytest.mark.parametrize("path, allow", ALLOW_PER_RELATION)
def test_the_openapi_document_lists_what_options_allows(hint_client, path, allow):
    """The OpenAPI paths and OPTIONS tell one story: a view's writes are its triggers', PUT
    needs a primary key (before, every view was read-only there and every table had PUT)."""
    operations = hint_client.get("/").get_json()["paths"][path]
    verbs = {"OPTIONS", "HEAD"} | {verb.upper() for verb in operations}
    assert verbs == set(allow.split(","))


def test_a_view_writes_through_its_instead_of_triggers(hint_client, hint_db):
    r = hint_client.post("/authors_rw", json={"id": 9, "name": "Le Guin"})
    assert r.status_code == 201
    assert rows(hint_db, "SELECT name FROM authors WHERE id = 9") == [("Le Guin",)]
    r = hint_client.post("/author_names", json={"name": "x"})  # no trigger: SQLite refuses
    assert r.status_code == 400


def test_options_on_an_unknown_or_hidden_table_is_404(hint_client):
    assert body(hint_client.options("/secrets")) == not_found_205("secrets")
    r = hint_client.options("/nowhere")
    assert r.status_code == 404 and body(r) == not_found_205("nowhere")


@pytest.mark.parametrize("path", ["/author_names", "/secrets", "/nowhere"])
def test_a_cors_preflight_is_answered_for_any_table(hint_client, path):
    # PostgREST's CORS middleware answers a preflight before the table is looked up
    r = hint_client.options(path, headers={"Origin": "http://example.com",
                                           "Access-Control-Request-Method": "POST"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Methods"] == \
        "GET, HEAD, POST, PATCH, PUT, DELETE, OPTIONS"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Max-Age"] == "86400"


# --- NullsStripSpec: Accept ...;nulls=stripped ------------------------------------------------------

ARRAY_STRIP = "application/vnd.pgrst.array+json;nulls=stripped"
OBJECT_STRIP = "application/vnd.pgrst.object+json;nulls=stripped"


@pytest.mark.parametrize("accept", [ARRAY_STRIP, "application/vnd.pgrst.array;nulls=stripped"])
def test_array_nulls_stripped(client, accept):
    r = client.get("/projects?select=id,client_id&order=id", headers={"Accept": accept})
    assert r.status_code == 200
    assert r.headers["Content-Type"] == ARRAY_STRIP + "; charset=utf-8"
    assert body(r) == [{"id": 1, "client_id": 1}, {"id": 2, "client_id": 1},
                       {"id": 3, "client_id": 2}, {"id": 4}]
    # inside embeddings too, at any depth (json_strip_nulls); nulls in arrays stay
    r = client.get("/clients?select=name,projects(name,client:clients(name))&projects.id=eq.9"
                   "&id=eq.1", headers={"Accept": accept})
    assert body(r) == [{"name": "Acme", "projects": []}]
    r = client.get("/projects?select=id,clients(name,id)&id=in.(1,4)&order=id",
                   headers={"Accept": accept})
    assert body(r) == [{"id": 1, "clients": {"name": "Acme", "id": 1}}, {"id": 4}]
    # the plain array media type keeps them
    r = client.get("/projects?select=id,client_id&id=eq.4",
                   headers={"Accept": "application/vnd.pgrst.array+json"})
    assert body(r) == [{"id": 4, "client_id": None}]
    assert r.headers["Content-Type"] == "application/json; charset=utf-8"


def test_object_nulls_stripped(client):
    r = client.get("/projects?select=id,client_id&id=eq.4", headers={"Accept": OBJECT_STRIP})
    assert r.status_code == 200 and body(r) == {"id": 4}
    assert r.headers["Content-Type"] == OBJECT_STRIP + "; charset=utf-8"
    r = client.get("/projects", headers={"Accept": OBJECT_STRIP})
    assert r.status_code == 406 and body(r)["code"] == "PGRST116"


def test_write_representation_nulls_stripped(client):
    r = client.post("/projects?select=id,name,client_id", json={"id": 9, "name": "N"},
                    headers={"Accept": ARRAY_STRIP, "Prefer": "return=representation"})
    assert r.status_code == 201 and body(r) == [{"id": 9, "name": "N"}]
    assert r.headers["Content-Type"] == ARRAY_STRIP + "; charset=utf-8"
    r = client.patch("/projects?id=eq.9&select=id,client_id", json={"name": "M"},
                     headers={"Accept": OBJECT_STRIP, "Prefer": "return=representation"})
    assert r.status_code == 200 and body(r) == {"id": 9}


def test_function_results_nulls_stripped(rpc):
    r = rpc.get("/rpc/project_client?id=4", headers={"Accept": ARRAY_STRIP})
    assert (r.status_code, body(r)) == (200, {"id": 4})
    r = rpc.get("/rpc/project_client?id=4")
    assert body(r) == {"id": 4, "client_id": None}


# --- AggregateFunctionsSpec (inside embeddings), and PostgreSQL's `t.count` ----------------------

@pytest.fixture
def aggregating(db):
    app = create_app(ServerConfig(db_dsn=db, allow_tables=(TABLES,), auth_disabled=True,
                                  aggregates_enabled=True))
    with app.test_client() as c:
        yield c


def test_a_bare_count_is_the_rows_count_even_with_aggregates_off(client):
    # supabase-style apps write comments(count): PostgreSQL reads projects.count as
    # count(projects), so PostgREST answers it whether or not aggregates are enabled
    assert body(client.get("/clients?select=name,projects(count)&order=id")) == [
        {"name": "Acme", "projects": [{"count": 2}]}, {"name": "Globex", "projects": [{"count": 1}]}]
    assert body(client.get("/clients?select=name,n:projects(total:count)&id=eq.2")) == [
        {"name": "Globex", "n": [{"total": 1}]}]
    assert body(client.get("/projects?select=count")) == [{"count": 4}]
    assert body(client.get("/projects?select=client_id,count&order=client_id")) == [
        {"client_id": 1, "count": 2}, {"client_id": 2, "count": 1}, {"client_id": None, "count": 1}]
    # an explicit aggregate stays behind the flag, inside an embedding too
    assert client.get("/clients?select=name,projects(count())").status_code == 400


def test_aggregates_inside_an_embedding_group_its_rows(aggregating):
    assert body(aggregating.get("/clients?select=name,projects(count())&order=id")) == [
        {"name": "Acme", "projects": [{"count": 2}]}, {"name": "Globex", "projects": [{"count": 1}]}]
    # the embedding's other fields group it; order applies to the groups; none: []
    got = body(aggregating.get("/projects?select=name,tasks(id.max(),project_id)"
                               "&tasks.order=project_id&order=id"))
    assert got == [{"name": "Rocket", "tasks": [{"max": 2, "project_id": 1}]},
                   {"name": "Anvil", "tasks": [{"max": 3, "project_id": 2}]},
                   {"name": "Laser", "tasks": []}, {"name": "Lone", "tasks": []}]
    r = aggregating.get("/clients?select=name,...projects(id.sum())")
    assert r.status_code == 400 and body(r)["code"] == "PGRST100"
