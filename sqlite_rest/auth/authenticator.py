"""JWT bearer authentication (pyjwt).

- ``Authorization: Bearer <jwt>``; the scheme is case-insensitive.
- HS256/384/512 with the raw bytes of --auth-token-file; RS256/384/512 with the PEM of
  --auth-rsa-public-key. Each key file is re-read when its mtime (or size) changes, so keys
  rotate without a restart.
- Each key only verifies its own algorithm family: an HS token is never checked against the
  RSA public key (the classic algorithm-confusion attack), and ``alg: none`` is never allowed.
- --auth-jwks-file: a JWKS (RS*, PS*, ES*, EdDSA keys; a token's ``kid`` picks the key, a
  token without one is tried against every key of its algorithm), re-read like the others.
  Each JWKS key verifies only the algorithms of its key type (and its ``alg`` when given).
- --auth-audience: the token's ``aud`` must name it (a token without ``aud`` is refused).
- ``exp``/``nbf``/``iat`` are checked with `ServerConfig.auth_leeway_seconds` of skew.
- Failures: 401 PGRST302 (no token), PGRST301 (bad token), PGRST303 (bad claims), each with a
  ``WWW-Authenticate: Bearer`` challenge and PostgREST's message (`DECODE_ERRORS`, and the
  claim checks of `check_claims`, in PostgREST's order); the `auth_failed` signal fires for
  metrics. An Authorization header of another scheme (Basic, …) is no token, as PostgREST.
- The ``apikey`` header (sent by Supabase-style PostgREST clients) is tolerated and ignored.
"""
from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from typing import Optional

import jwt
from blinker import Namespace
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from ..config import ServerConfig
from ..errors import ApiError, api_error

log = logging.getLogger("sqlite_rest.auth")

_signals = Namespace()
#: Sent with ``reason=<str>`` on every rejected request (metrics count it:
#: sqlite_rest_auth_failed_requests_total). ``sender`` is the Flask app.
auth_failed = _signals.signal("sqlite-rest-auth-failed")
#: Sent with ``table=<str>`` when a request names a table outside --security-allow-table
#: (answered 404 like an unknown table, but counted:
#: sqlite_rest_access_check_failed_requests_total).
access_denied = _signals.signal("sqlite-rest-access-denied")

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512")

#: Verified tokens kept per process (token -> claims), so a client re-sending the same token
#: costs one dict lookup plus the time checks instead of a signature verification.
TOKEN_CACHE_SIZE = 1024


class KeyFile:
    """A key file re-read when its (mtime, size, inode) changes. The file is stat()ed at most
    once per `stat_interval` seconds, so a rotation is seen within that time."""

    def __init__(self, path: str, loader, stat_interval: float = 1.0):
        self.path = path
        self.stat_interval = stat_interval
        self._loader = loader
        self._stamp: Optional[tuple] = None
        self._key = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()

    def key(self):
        """The current key; raises OSError/ValueError when the file is unreadable or bad."""
        now = time.monotonic()
        if self._key is not None and now - self._checked_at < self.stat_interval:
            return self._key
        st = os.stat(self.path)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    with open(self.path, "rb") as f:
                        self._key = self._loader(f.read())
                    self._stamp = stamp
        self._checked_at = now
        return self._key

    @property
    def stamp(self):
        return self._stamp


def _load_hmac_secret(data: bytes) -> bytes:
    if not data:
        raise ValueError("the token file is empty")
    return data


def _load_rsa_public_key(data: bytes) -> RSAPublicKey:
    key = load_pem_public_key(data)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("the public key file does not hold an RSA public key")
    return key


#: Token algorithms a JWKS key may verify, by its key type (kty): a key only verifies its own
#: family, never an HS token (algorithm confusion), and "oct" (HMAC) keys are not accepted.
JWKS_ALGORITHMS = {
    "RSA": ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    "EC": ("ES256", "ES384", "ES512", "ES256K"),
    "OKP": ("EdDSA",),
}


def _load_jwks(data: bytes):
    """A JWKS file -> [(kid or None, kty, PyJWK)]; at least one usable key."""
    try:
        document = json.loads(data)
    except ValueError as exc:
        raise ValueError(f"the JWKS file is not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('the JWKS file has no "keys" array')
    keys = []
    for i, entry in enumerate(document["keys"]):
        kty = entry.get("kty") if isinstance(entry, dict) else None
        if kty not in JWKS_ALGORITHMS:
            raise ValueError(f"JWKS key {i}: kty {kty!r} is not accepted (RSA, EC, OKP)")
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK(entry)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, KeyError) as exc:
            raise ValueError(f"JWKS key {i} ({entry.get('kid')!r}): {exc}") from None
        # PyJWK pins one algorithm (RS256 for an RSA key without "alg"): keep the public key
        # itself, and let the key type (and "alg" when given) decide the algorithms.
        keys.append((entry.get("kid"), kty, entry.get("alg"), key.key))
    if not keys:
        raise ValueError("the JWKS file has no signing key")
    return keys


#: PostgREST's messages of a token that cannot be decoded (401 PGRST301).
DECODE_ERRORS = {
    "empty": "Empty JWT is sent in Authorization header",
    "parts": "Expected 3 parts in JWT; got {parts}",
    "algorithm": "Wrong or unsupported encoding algorithm",
    "key": "No suitable key or wrong key type",
    "crypto": "JWT cryptographic operation failed",
}


def bearer_token(authorization: Optional[str]) -> Optional[str]:
    """The token of ``Bearer <token>`` ('' when empty); None without a Bearer scheme, which
    PostgREST treats as no token at all."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _is_number(value) -> bool:
    # NaN would pass every time comparison: not a number here (nor in PostgREST's JSON)
    return type(value) is int or (type(value) is float and math.isfinite(value))


def _challenge(error: Optional[str], description: Optional[str]) -> dict:
    if error is None:
        return {"WWW-Authenticate": "Bearer"}
    description = (description or "").replace('"', "'")
    return {"WWW-Authenticate": f'Bearer error="{error}", error_description="{description}"'}


class Authenticator:
    def __init__(self, config: ServerConfig):
        if not (config.auth_disabled or config.auth_configured):
            raise ValueError(
                "authentication is required: pass --auth-token-file, --auth-rsa-public-key or "
                "--auth-jwks-file (or --auth-disabled for local use)")
        self.disabled = config.auth_disabled
        self.leeway = config.auth_leeway_seconds
        interval = config.auth_key_check_interval
        self.hmac = (KeyFile(config.auth_token_file, _load_hmac_secret, interval)
                     if config.auth_token_file else None)
        self.rsa = (KeyFile(config.auth_rsa_public_key, _load_rsa_public_key, interval)
                    if config.auth_rsa_public_key else None)
        self.jwks = (KeyFile(config.auth_jwks_file, _load_jwks, interval)
                     if config.auth_jwks_file else None)
        self.audience = config.auth_audience
        self._cache: dict[str, dict] = {}
        self._cache_stamps: tuple = ()

    def check_keys(self) -> None:
        """Load every configured key now (at startup: a bad key file fails fast)."""
        for keyfile in (self.hmac, self.rsa, self.jwks):
            if keyfile is not None:
                keyfile.key()

    def _fail(self, app, key: str, reason: str, error: Optional[str] = "invalid_token",
              details: Optional[str] = None) -> ApiError:
        auth_failed.send(app, reason=key)
        return api_error(key, reason=reason, details=details, headers=_challenge(error, reason))

    def authenticate(self, app, authorization: Optional[str]) -> Optional[dict]:
        """Claims of the request's token; None when auth is disabled. Raises ApiError."""
        if self.disabled:
            return None
        token = bearer_token(authorization)
        if token is None:
            raise self._fail(app, "jwt_missing", "no token", error=None)
        if not token:
            raise self._fail(app, "jwt_invalid", DECODE_ERRORS["empty"])
        parts = token.count(".") + 1
        if parts != 3:
            raise self._fail(app, "jwt_invalid", DECODE_ERRORS["parts"].format(parts=parts))
        keyfiles = [k for k in (self.hmac, self.rsa, self.jwks) if k is not None]
        try:
            for keyfile in keyfiles:
                keyfile.key()
        except (OSError, ValueError) as exc:
            log.error("JWT key file unreadable: %s", exc)
            auth_failed.send(app, reason="jwt_key_unavailable")
            raise api_error("jwt_key_unavailable") from None
        stamps = tuple(k.stamp for k in keyfiles)
        if stamps != self._cache_stamps:  # a key rotated: forget what the old keys verified
            self._cache = {}
            self._cache_stamps = stamps
        claims = self._cache.get(token)
        if claims is None:
            claims = self._verify(app, token)
            if len(self._cache) >= TOKEN_CACHE_SIZE:
                self._cache.clear()
            self._cache[token] = claims
        problem = self.check_claims(claims)  # a cached token expires too
        if problem is not None:
            raise self._fail(app, "jwt_claims", problem)
        return claims

    def check_claims(self, claims: dict) -> Optional[str]:
        """PostgREST's claim checks, in its order (the first failure is the message): exp,
        nbf, iat (numbers, with the leeway), then aud (a string or an array of strings that
        names --auth-audience). Unlike PostgREST, a token without an audience is refused when
        --auth-audience is set (design/roles.md)."""
        now = time.time()
        for name, failed, message in (
                ("exp", lambda t: now - self.leeway > t, "JWT expired"),
                ("nbf", lambda t: now + self.leeway < t, "JWT not yet valid"),
                ("iat", lambda t: now + self.leeway < t, "JWT issued at future")):
            value = claims.get(name)
            if value is None:
                continue
            if not _is_number(value):
                return f"The JWT '{name}' claim must be a number"
            if failed(value):
                return message
        aud = claims.get("aud")
        audiences = [aud] if type(aud) is str else aud
        if aud is not None and not (type(audiences) is list
                                    and all(type(a) is str for a in audiences)):
            return "The JWT 'aud' claim must be a string or an array of strings"
        if self.audience is not None and self.audience not in (audiences or ()):
            return "JWT not in audience"
        return None

    def _verify(self, app, token: str) -> dict:
        """The claims of a token whose signature one of the keys verifies (its claims are
        `check_claims`'s)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise self._fail(app, "jwt_invalid", DECODE_ERRORS["crypto"]) from None
        alg = header.get("alg")
        candidates = []
        if alg in HMAC_ALGORITHMS and self.hmac is not None:
            candidates.append((self.hmac.key(), list(HMAC_ALGORITHMS)))
        elif alg in RSA_ALGORITHMS and self.rsa is not None:
            candidates.append((self.rsa.key(), list(RSA_ALGORITHMS)))
        if self.jwks is not None and alg not in HMAC_ALGORITHMS:
            kid = header.get("kid")
            for key_id, kty, key_alg, key in self.jwks.key():
                if alg not in JWKS_ALGORITHMS[kty] or (key_alg and key_alg != alg):
                    continue
                if kid is not None and key_id != kid:
                    continue
                candidates.append((key, [alg]))
        if not candidates:
            if self.jwks is not None and header.get("kid") is not None:
                raise self._fail(app, "jwt_invalid", DECODE_ERRORS["key"],
                                 details=f"no key of the JWKS has kid "
                                         f"{str(header.get('kid'))[:60]!r} for algorithm "
                                         f"{str(alg)[:20]!r}")
            raise self._fail(app, "jwt_invalid", DECODE_ERRORS["algorithm"],
                             details=f"the JWT algorithm {str(alg)[:20]!r} is not accepted")
        for key, algorithms in candidates:
            try:
                claims = jwt.decode(token, key=key, algorithms=algorithms,
                                    options={"verify_exp": False, "verify_nbf": False,
                                             "verify_iat": False, "verify_aud": False,
                                             "verify_iss": False})
            except jwt.InvalidSignatureError:
                continue  # another key of the JWKS (no kid) may verify it
            except jwt.DecodeError as exc:
                if "payload" in str(exc).lower():  # signed, but its claims are no JSON object
                    raise self._fail(app, "jwt_claims", "Parsing claims failed") from None
                raise self._fail(app, "jwt_invalid", DECODE_ERRORS["crypto"]) from None
            except jwt.InvalidTokenError:
                raise self._fail(app, "jwt_invalid", DECODE_ERRORS["crypto"]) from None
            return claims
        raise self._fail(app, "jwt_invalid", DECODE_ERRORS["key"],
                         details="None of the keys was able to decode the JWT")


def warn_if_disabled(config: ServerConfig) -> None:
    if config.auth_disabled and config.warn_auth_disabled:
        log.warning(
            "AUTHENTICATION IS DISABLED (--auth-disabled): every client can read and write "
            "every allow-listed table. Never expose this server beyond localhost."
        )
