import jwt
from tests.test_errors_contract import Env, _replica_client, SECRET

def test_roles_on_a_replica(tmp_path):
    env = Env(tmp_path)
    key = tmp_path / "secret.key"
    key.write_bytes(SECRET)
    perm = tmp_path / "perm.yml"
    perm.write_text("roles:\n  reader:\n    books:\n      verbs: [GET]\n      read_columns: [id, title]\n      rows: title=eq.{sub}\n")
    client = _replica_client(env, auth_token_file=str(key), permissions_file=str(perm))
    h = {"Authorization": "Bearer " + jwt.encode({"role": "reader", "sub": "Alpha"}, SECRET, algorithm="HS256")}
    r = client.get("/books", headers=h)
    assert r.get_json() == [{"id": 1, "title": "Alpha"}], r.data
    assert client.get("/books?select=pages", headers=h).status_code == 403
