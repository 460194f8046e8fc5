"""Who is calling: HTTP Digest (what ODK Collect speaks on a plain-HTTP LAN), Basic only
over https, and bearer tokens through a hook.

* **Digest** (RFC 7616 / RFC 2617): one challenge ``WWW-Authenticate: Digest
  realm=…, qop="auth", algorithm=MD5, nonce=…, opaque=…``.  Answers with
  ``algorithm=MD5`` or ``algorithm=SHA-256`` (qop ``auth``, or no qop as in RFC 2069) are
  checked against the HA1 values stored per user and realm (``users.py``).  Nonces are
  stateless: ``time.random:HMAC(server key, time.random)``; after ``settings.nonce_seconds`` an answer
  gets a fresh challenge with ``stale=true`` (clients retry without asking the user).
  A replayed answer (same nonce, cnonce and nonce count) is refused — across the
  worker processes of ``serve --workers N`` too (``settings.replay_store``).
  Collect only offers MD5-or-omitted algorithms in its restricted profile, so the single
  challenge names MD5 (several challenges in one response confuse common clients).
* **Basic**: answered only when the server runs behind https (``settings.https`` or the
  request's scheme), as Collect does.
* **Bearer tokens** (the Iaso app): the token verifier hook.  Register with
  ``register_token_verifier(fn)`` where ``fn(request, ctx) -> User | None`` returns the
  user of a valid ``Authorization: Bearer …`` header (or None when the token is not
  its kind); it is tried before Digest/Basic when the header starts with ``Bearer``.

``authenticate(request, ctx)`` returns the :class:`~local_server.users.User` or None;
``require(request, ctx, role="reviewer")`` returns the user or raises
:class:`AuthRequired` (401 with a Digest challenge) / :class:`Forbidden` (403).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from werkzeug.wrappers import Request

from local_server import users
from local_server.users import User
from storage.errors import GeoregError

_SERVER_KEY = secrets.token_bytes(32)
_OPAQUE = secrets.token_hex(16)

TokenVerifier = Callable[[Request, Any], "User | None"]
_verifiers: list[TokenVerifier] = []


class AuthRequired(GeoregError):
    """No or wrong credentials: 401 with a Digest challenge."""

    code = "unauthorized"
    exit_code = 1
    http_status = 401


class Forbidden(GeoregError):
    """Signed in, but not allowed (role, or outside the user's area)."""

    code = "forbidden"
    exit_code = 1
    http_status = 403


def register_token_verifier(fn: TokenVerifier) -> TokenVerifier:
    """Add a bearer-token verifier (usable as a decorator); registering twice is a no-op."""
    if fn not in _verifiers:
        _verifiers.append(fn)
    return fn


# --- nonces ------------------------------------------------------------------------------


def _make_nonce(now: float | None = None) -> str:
    """``time.random:HMAC`` — unique per challenge, checkable without server state."""
    stamp = f"{int(now if now is not None else time.time())}.{secrets.token_hex(8)}"
    mac = hmac.new(_SERVER_KEY, stamp.encode(), hashlib.sha256).hexdigest()[:32]
    return base64.b64encode(f"{stamp}:{mac}".encode()).decode()


def _nonce_state(nonce: str, max_age: int) -> str:
    """'ok', 'stale' or 'bad'."""
    try:
        stamp, mac = base64.b64decode(nonce.encode(), validate=True).decode().split(":")
        issued = int(stamp.split(".")[0])
    except (ValueError, UnicodeDecodeError):
        return "bad"
    good = hmac.new(_SERVER_KEY, stamp.encode(), hashlib.sha256).hexdigest()[:32]
    if not hmac.compare_digest(good, mac):
        return "bad"
    return "ok" if 0 <= time.time() - issued <= max_age else "stale"


def challenge_headers(ctx: Any, stale: bool = False) -> dict[str, str]:
    realm = ctx.settings.realm
    value = (f'Digest realm="{realm}", qop="auth", algorithm=MD5, nonce="{_make_nonce()}", '
             f'opaque="{_OPAQUE}"')
    if stale:
        value += ", stale=true"
    return {"WWW-Authenticate": value}


# --- header parsing ----------------------------------------------------------------------


def _parse_params(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " ,\t":
            i += 1
        eq = value.find("=", i)
        if eq < 0:
            break
        key = value[i:eq].strip().lower()
        i = eq + 1
        if i < n and value[i] == '"':
            i += 1
            buf = []
            while i < n and value[i] != '"':
                if value[i] == "\\" and i + 1 < n:
                    i += 1
                buf.append(value[i])
                i += 1
            i += 1
            out[key] = "".join(buf)
        else:
            end = value.find(",", i)
            end = n if end < 0 else end
            out[key] = value[i:end].strip()
            i = end
    return out


def _h(algorithm: str, data: str) -> str:
    fn = hashlib.sha256 if algorithm == "SHA-256" else hashlib.md5
    return fn(data.encode()).hexdigest()


def _digest_user(request: Request, ctx: Any, params: dict[str, str]) -> User | None:
    name = params.get("username", "")
    algorithm = (params.get("algorithm") or "MD5").upper()
    if algorithm not in ("MD5", "SHA-256"):
        return None
    nonce = params.get("nonce", "")
    state = _nonce_state(nonce, ctx.settings.nonce_seconds)
    if state != "ok":
        if state == "stale":
            ctx.stale_nonce = True
        return None
    uri = params.get("uri", "")
    if unquote(urlsplit(uri).path) != unquote(request.path):
        return None
    found = _cached_record(ctx, name)
    if found is None:
        return None
    user, secrets_ = found
    if secrets_["realm"] != params.get("realm"):
        return None
    ha1 = secrets_["ha1_sha256"] if algorithm == "SHA-256" else secrets_["ha1_md5"]
    ha2 = _h(algorithm, f"{request.method}:{uri}")
    qop = params.get("qop")
    if qop == "auth":
        expected = _h(algorithm, f"{ha1}:{nonce}:{params.get('nc', '')}:"
                                 f"{params.get('cnonce', '')}:auth:{ha2}")
    elif qop is None:
        expected = _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    else:
        return None
    if hmac.compare_digest(expected, params.get("response", "")):
        if qop == "auth" and not _fresh_count(nonce, params.get("cnonce", ""),
                                              params.get("nc", ""),
                                              ctx.settings.nonce_seconds,
                                              ctx.settings.replay_store):
            return None  # a replayed answer: a fresh challenge follows
        return user
    return None


# --- replay protection ---------------------------------------------------------------
# With qop=auth every answer carries a nonce count (nc) that the client increases for
# each request under one nonce.  A captured request sent again repeats its count: it
# is refused.  The counts live for the life of a nonce: in memory for one process, in
# a small SQLite file the workers share when ``serve --workers N`` runs several.
_counts: dict[tuple[str, str], tuple[float, int]] = {}
_counts_lock = threading.Lock()


def _fresh_count(nonce: str, cnonce: str, nc: str, max_age: int,
                 store: str | None = None) -> bool:
    try:
        count = int(nc, 16)
    except ValueError:
        return False
    if store is not None:
        return _shared_counts(store).fresh(nonce, cnonce, count, max_age)
    now = time.monotonic()
    with _counts_lock:
        if len(_counts) > 10_000:
            for key in [k for k, (t, _) in _counts.items() if now - t > max_age]:
                del _counts[key]
        seen = _counts.get((nonce, cnonce))
        if seen is not None and count <= seen[1]:
            return False
        _counts[(nonce, cnonce)] = (now, count)
    return True


class SharedNonceCounts:
    """Highest nonce count seen per (nonce, cnonce), in an SQLite file shared by the
    worker processes of one server (each process opens its own connection).

    One UPSERT per answer decides atomically across processes: it raises the stored
    count only when the new one is higher, and a count that is not higher is a replay.
    The file holds nothing secret (nonces are public) and lives in a private temporary
    folder for the life of the server.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.pid = -1
        self.calls = 0
        self.conn: Any = None

    def _connection(self) -> Any:
        import os
        import sqlite3

        if self.conn is None or self.pid != os.getpid():  # a forked worker: its own
            self.conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = OFF")  # a crash ends the server too
            self.conn.execute("CREATE TABLE IF NOT EXISTS seen (nonce TEXT NOT NULL, "
                              "cnonce TEXT NOT NULL, nc INTEGER NOT NULL, at REAL NOT NULL, "
                              "PRIMARY KEY (nonce, cnonce)) WITHOUT ROWID")
            self.pid = os.getpid()
        return self.conn

    def fresh(self, nonce: str, cnonce: str, count: int, max_age: int) -> bool:
        now = time.time()
        with self.lock:
            conn = self._connection()
            self.calls += 1
            if self.calls % 1000 == 0:
                conn.execute("DELETE FROM seen WHERE at < ?", (now - max_age,))
            cur = conn.execute(
                "INSERT INTO seen (nonce, cnonce, nc, at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (nonce, cnonce) DO UPDATE SET nc = excluded.nc, at = excluded.at "
                "WHERE excluded.nc > seen.nc", (nonce, cnonce, count, now))
            return bool(cur.rowcount == 1)


_shared: dict[str, SharedNonceCounts] = {}


def _shared_counts(path: str) -> SharedNonceCounts:
    with _counts_lock:
        if path not in _shared:
            _shared[path] = SharedNonceCounts(path)
        return _shared[path]


#: Seconds a user's record (role, area, HA1) is reused between requests: a removed user or
#: a changed password takes effect within this delay.
USER_CACHE_SECONDS = 5.0
_user_cache: dict[tuple[int, str], tuple[float, Any]] = {}


def _cached_record(ctx: Any, name: str) -> tuple[User, dict[str, Any]] | None:
    key = (id(ctx.registry), name)
    hit = _user_cache.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < USER_CACHE_SECONDS:
        return hit[1]  # type: ignore[no-any-return]
    with ctx.registry.read() as conn:
        found = users.user_record(conn, name)
    if len(_user_cache) > 1000:
        _user_cache.clear()
    _user_cache[key] = (now, found)
    return found


def check_password(ctx: Any, username: str, password: str) -> User | None:
    """The user when the name and password match (scrypt), else None."""
    with ctx.registry.read() as conn:
        found = users.user_record(conn, username)
    if found is None:
        users.verify_password(_DUMMY_HASH, password)  # same time whether or not the user exists
        return None
    user, stored = found
    return user if users.verify_password(stored["password_hash"], password) else None


_DUMMY_HASH = users.hash_password(secrets.token_hex(8))


def find_user(ctx: Any, username: str) -> User | None:
    with ctx.registry.read() as conn:
        found = users.user_record(conn, username)
    return None if found is None else found[0]


def _is_https(request: Request, ctx: Any) -> bool:
    return bool(ctx.settings.https) or request.scheme == "https"


def authenticate(request: Request, ctx: Any) -> User | None:
    """The signed-in user of this request, or None (the result is cached on ``ctx``)."""
    cached = getattr(ctx, "user", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    header = request.headers.get("Authorization", "")
    scheme, _, rest = header.partition(" ")
    scheme = scheme.lower()
    user: User | None = None
    if scheme == "bearer":
        for verify in _verifiers:
            user = verify(request, ctx)
            if user is not None:
                break
    elif scheme == "digest":
        user = _digest_user(request, ctx, _parse_params(rest))
    elif scheme == "basic" and _is_https(request, ctx):
        try:
            name, _, password = base64.b64decode(rest.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user = check_password(ctx, name, password)
    if user is not None:
        ctx.user = user
    return user


def require(request: Request, ctx: Any, role: str = "collector") -> User:
    """The signed-in user with at least ``role`` (collector < reviewer < admin)."""
    user = authenticate(request, ctx)
    if user is None:
        if request.headers.get("Authorization"):
            raise AuthRequired("Wrong user name or password (HTTP Digest).")
        raise AuthRequired("Sign in with a user name and password (HTTP Digest).")
    if not user.has_role(role):
        raise Forbidden(f"This needs the role {role}; {user.name!r} is a {user.role}.")
    return user
