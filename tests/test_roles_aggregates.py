from tests.test_roles import ALICE, BOB, make_db, PERMISSIONS, TABLES, SECRET
from sqlite_rest.app import create_app
from sqlite_rest.config import ServerConfig


def _client(tmp_path, enabled=True):
    db = make_db(tmp_path / "agg.db")
    (tmp_path / "secret").write_bytes(SECRET)
    (tmp_path / "perm.yml").write_text(PERMISSIONS)
    return create_app(ServerConfig(db_dsn=db, allow_tables=TABLES,
                                   auth_token_file=str(tmp_path / "secret"),
                                   permissions_file=str(tmp_path / "perm.yml"),
                                   aggregates_enabled=enabled)).test_client()


def test_aggregates_under_roles(tmp_path):
    c = _client(tmp_path)
    assert c.get("/notes?select=count()", headers=ALICE).get_json() == [{"count": 2}]
    assert c.get("/notes?select=count()", headers=BOB).get_json() == [{"count": 1}]
    assert c.get("/notes?select=id.max()", headers=ALICE).get_json() == [{"max": 3}]
    r = c.get("/notes?select=secret.max()", headers=ALICE)
    assert r.status_code == 403 and r.get_json()["code"] == "42501"


def test_aggregates_gate_holds_under_roles(tmp_path):
    c = _client(tmp_path, enabled=False)
    r = c.get("/notes?select=count()", headers=ALICE)
    assert r.status_code == 400 and r.get_json()["code"] == "PGRST123", r.data
