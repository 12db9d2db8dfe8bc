"""JWT bearer authentication against real key files (HS secret file, RSA PEM)."""
from __future__ import annotations

import base64
import json
import os
import time

import apsw
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sqlite_rest.app import create_app
from sqlite_rest.auth.authenticator import access_denied, auth_failed
from sqlite_rest.config import ServerConfig

SECRET = b"a-long-enough-hmac-secret-for-tests-0123456789-0123456789abcdefgh"


@pytest.fixture(scope="module")
def rsa_keys():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key, public_pem


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "auth.db"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT); INSERT INTO t VALUES (1, 'a');"
                 "CREATE TABLE hidden (id INTEGER PRIMARY KEY)")
    conn.close()
    return str(path)


@pytest.fixture
def hs_client(tmp_path, db):
    key = tmp_path / "token.key"
    key.write_bytes(SECRET)
    app = create_app(ServerConfig(db_dsn=db, allow_tables=("t",), auth_token_file=str(key),
                                  auth_key_check_interval=0))
    return app.test_client()


@pytest.fixture
def rs_client(tmp_path, db, rsa_keys):
    pem = tmp_path / "public.pem"
    pem.write_bytes(rsa_keys[1])
    app = create_app(ServerConfig(db_dsn=db, allow_tables=("t",), auth_rsa_public_key=str(pem),
                                  auth_key_check_interval=0))
    return app.test_client()


def bearer(token, scheme="Bearer"):
    return {"Authorization": f"{scheme} {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def assert_401(response, code):
    assert response.status_code == 401, response.data
    assert response.get_json()["code"] == code
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hs_ok(hs_client, alg):
    token = jwt.encode({"sub": "u", "exp": int(time.time()) + 60}, SECRET, algorithm=alg)
    r = hs_client.get("/t", headers=bearer(token))
    assert r.status_code == 200
    assert r.get_json() == [{"id": 1, "v": "a"}]


def test_scheme_is_case_insensitive(hs_client):
    token = jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")
    assert hs_client.get("/t", headers=bearer(token, "bearer")).status_code == 200
    assert hs_client.get("/t", headers=bearer(token, "BEARER")).status_code == 200


def test_missing_token(hs_client):
    assert_401(hs_client.get("/t"), "PGRST302")
    # the apikey header alone is tolerated but is not a credential
    assert_401(hs_client.get("/t", headers={"apikey": "x"}), "PGRST302")


@pytest.mark.parametrize("header", ["Bearer", "Bearer not-a-jwt", "Bearer a.b.c"])
def test_malformed(hs_client, header):
    assert_401(hs_client.get("/t", headers={"Authorization": header}), "PGRST301")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc"])
def test_another_scheme_is_no_token(hs_client, header):
    # PostgREST reads only a Bearer token: any other scheme is an anonymous request
    assert_401(hs_client.get("/t", headers={"Authorization": header}), "PGRST302")


def test_expired(hs_client):
    token = jwt.encode({"exp": int(time.time()) - 3600}, SECRET, algorithm="HS256")
    r = hs_client.get("/t", headers=bearer(token))
    assert_401(r, "PGRST303")
    assert "expired" in r.get_json()["message"].lower()


def test_small_clock_skew_is_tolerated(hs_client):
    token = jwt.encode({"exp": int(time.time()) - 5, "nbf": int(time.time()) + 5}, SECRET,
                       algorithm="HS256")
    assert hs_client.get("/t", headers=bearer(token)).status_code == 200


def test_nbf_in_future(hs_client):
    token = jwt.encode({"nbf": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    assert_401(hs_client.get("/t", headers=bearer(token)), "PGRST303")


def test_iat_in_future(hs_client):
    token = jwt.encode({"iat": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    assert_401(hs_client.get("/t", headers=bearer(token)), "PGRST303")


def test_cached_token_still_expires(hs_client):
    token = jwt.encode({"exp": time.time() - 29}, SECRET, algorithm="HS256")  # within leeway
    assert hs_client.get("/t", headers=bearer(token)).status_code == 200
    state = hs_client.application.extensions["sqlite_rest"]
    state.authenticator.leeway = 0  # same token again, now past its exp: the cache must not help
    assert_401(hs_client.get("/t", headers=bearer(token)), "PGRST303")


def test_wrong_key(hs_client):
    token = jwt.encode({"sub": "u"}, b"another-secret-another-secret-1234", algorithm="HS256")
    assert_401(hs_client.get("/t", headers=bearer(token)), "PGRST301")


def test_alg_none_rejected(hs_client, rs_client):
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "admin"}).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert_401(hs_client.get("/t", headers=bearer(token)), "PGRST301")
        assert_401(rs_client.get("/t", headers=bearer(token)), "PGRST301")


def test_rs256_ok(rs_client, rsa_keys):
    for alg in ("RS256", "RS384", "RS512"):
        token = jwt.encode({"sub": "u"}, rsa_keys[0], algorithm=alg)
        assert rs_client.get("/t", headers=bearer(token)).status_code == 200


def test_hs_token_signed_with_rsa_public_key_rejected(rs_client, rsa_keys):
    """Algorithm confusion: HS256 with the (public) PEM bytes as the HMAC secret."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps({"sub": "admin"}).encode())
    import hashlib
    import hmac

    signing_input = f"{header}.{payload}".encode()
    signature = b64url(hmac.new(rsa_keys[1], signing_input, hashlib.sha256).digest())
    assert_401(rs_client.get("/t", headers=bearer(f"{header}.{payload}.{signature}")),
               "PGRST301")


def test_rs_token_with_other_key_rejected(rs_client):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    token = jwt.encode({"sub": "u"}, other, algorithm="RS256")
    assert_401(rs_client.get("/t", headers=bearer(token)), "PGRST301")


def test_hs_token_on_rsa_only_server_rejected(rs_client):
    token = jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")
    assert_401(rs_client.get("/t", headers=bearer(token)), "PGRST301")


def test_key_file_rotation(tmp_path, hs_client):
    old = jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")
    assert hs_client.get("/t", headers=bearer(old)).status_code == 200
    new_secret = b"the-rotated-secret-0123456789-abcdefghij-0123456789"
    key = tmp_path / "token.key"
    key.write_bytes(new_secret)
    stat = key.stat()
    os.utime(key, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert_401(hs_client.get("/t", headers=bearer(old)), "PGRST301")
    new = jwt.encode({"sub": "u"}, new_secret, algorithm="HS256")
    assert hs_client.get("/t", headers=bearer(new)).status_code == 200


def test_rotation_is_seen_within_the_check_interval(tmp_path, db):
    key = tmp_path / "token.key"
    key.write_bytes(SECRET)
    c = create_app(ServerConfig(db_dsn=db, allow_tables=("t",), auth_token_file=str(key),
                                auth_key_check_interval=0.3)).test_client()
    old = jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")
    assert c.get("/t", headers=bearer(old)).status_code == 200
    key.write_bytes(b"x" * 64)
    assert c.get("/t", headers=bearer(old)).status_code == 200  # not re-checked yet
    time.sleep(0.35)
    assert_401(c.get("/t", headers=bearer(old)), "PGRST301")


def test_rsa_key_rotation(tmp_path, rs_client, rsa_keys):
    token = jwt.encode({"sub": "u"}, rsa_keys[0], algorithm="RS256")
    assert rs_client.get("/t", headers=bearer(token)).status_code == 200
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "public.pem"
    pem.write_bytes(other.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    stat = pem.stat()
    os.utime(pem, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    assert_401(rs_client.get("/t", headers=bearer(token)), "PGRST301")
    assert rs_client.get("/t", headers=bearer(jwt.encode({}, other, algorithm="RS256"))
                         ).status_code == 200


def test_both_keys_configured(tmp_path, db, rsa_keys):
    key = tmp_path / "token.key"
    key.write_bytes(SECRET)
    pem = tmp_path / "public.pem"
    pem.write_bytes(rsa_keys[1])
    c = create_app(ServerConfig(db_dsn=db, allow_tables=("t",), auth_token_file=str(key),
                                auth_rsa_public_key=str(pem), auth_key_check_interval=0)).test_client()
    assert c.get("/t", headers=bearer(jwt.encode({}, SECRET, algorithm="HS256"))).status_code == 200
    assert c.get("/t", headers=bearer(jwt.encode({}, rsa_keys[0], algorithm="RS256"))
                 ).status_code == 200


def test_auth_is_required_unless_explicitly_disabled(db, caplog):
    with pytest.raises(ValueError, match="auth-disabled"):
        create_app(ServerConfig(db_dsn=db, allow_tables=("t",)))
    with caplog.at_level("WARNING"):
        app = create_app(ServerConfig(db_dsn=db, allow_tables=("t",), auth_disabled=True))
    assert "AUTHENTICATION IS DISABLED" in caplog.text
    assert app.test_client().get("/t").status_code == 200


def test_missing_key_file_fails_at_startup(tmp_path, db):
    with pytest.raises(OSError):
        create_app(ServerConfig(db_dsn=db, allow_tables=("t",),
                                auth_token_file=str(tmp_path / "absent.key")))


def test_signals_for_metrics(hs_client):
    failures, denied = [], []

    def on_fail(sender, reason):
        failures.append(reason)

    def on_denied(sender, table):
        denied.append(table)

    auth_failed.connect(on_fail)
    access_denied.connect(on_denied)
    try:
        hs_client.get("/t")
        hs_client.get("/t", headers=bearer("x.y.z"))
        token = jwt.encode({}, SECRET, algorithm="HS256")
        r = hs_client.get("/hidden", headers=bearer(token))
        assert r.status_code == 404
    finally:
        auth_failed.disconnect(on_fail)
        access_denied.disconnect(on_denied)
    assert failures == ["jwt_missing", "jwt_invalid"]
    assert denied == ["hidden"]


def test_liveness_and_preflight_need_no_token(hs_client):
    assert hs_client.get("/live").status_code == 200
    assert hs_client.options("/t", headers={"Access-Control-Request-Method": "GET"}
                             ).status_code == 200
    assert_401(hs_client.get("/"), "PGRST302")


def test_a_plain_options_needs_a_token(hs_client):
    # it tells which tables exist (200 or 404), so it is checked as a GET is
    assert_401(hs_client.options("/t"), "PGRST302")
    assert_401(hs_client.options("/nope"), "PGRST302")
    auth = {"Authorization": "Bearer " + jwt.encode({"sub": "u"}, SECRET, algorithm="HS256")}
    r = hs_client.options("/t", headers=auth)
    assert r.status_code == 200 and r.headers["Allow"] == "OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"
    r = hs_client.options("/hidden", headers=auth)  # not allow-listed
    assert r.status_code == 404 and r.get_json()["code"] == "PGRST205"
