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

**Password guessing** (:class:`SignInLimiter`): failed sign-ins by password (the
``/login`` form, ``POST /api/token/``, Basic) and by Digest are counted per (user name,
client address) and, more loosely, per client address; past a few, that pair or
address is locked for a time that doubles with each further failure, and every attempt
meanwhile gets **429** with ``Retry-After``.  Failing on purpose from one machine thus
never locks the user out of their own.  A Digest nonce stops accepting answers after a
few wrong ones.  Each failure and each lock is logged to the server's stderr (name,
address, route; never the password).  The client address is the connection's, or
behind a proxy listed in ``settings.trusted_proxies`` the one it forwards (``app.py``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import sys
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


class TooManyAttempts(GeoregError):
    """Too many failed sign-ins for this name or from this address: 429 + Retry-After."""

    code = "too_many_attempts"
    exit_code = 1
    http_status = 429

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many failed sign-ins for this user or from this device: wait "
                         f"{retry_after} s and try again.", retry_after=retry_after)
        self.retry_after = retry_after


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
    guard = limiter(ctx)
    if guard.nonce_spent(nonce):
        return None  # too many wrong answers on this nonce: a fresh challenge follows
    keys = SignInLimiter.keys(name, _address(ctx))
    guard.begin(keys)
    failed: bool | None = None  # (an error while checking is no guess)
    try:
        user, failed = _check_digest(request, ctx, params, name, algorithm, nonce, uri)
        return user
    finally:
        guard.end(keys, failed, nonce)


def _check_digest(request: Request, ctx: Any, params: dict[str, str], name: str,
                  algorithm: str, nonce: str, uri: str) -> tuple[User | None, bool | None]:
    """The user, and whether the answer was wrong: (user, False) right, (None, True)
    wrong, (None, None) right but replayed (a fresh challenge follows; no guess)."""
    found = _cached_record(ctx, name)
    if found is None:
        _log_failure(ctx, name, "Digest, unknown user")
        return None, True
    user, secrets_ = found
    if secrets_["realm"] != params.get("realm"):
        _log_failure(ctx, name, f"Digest, realm {params.get('realm', '')[:40]!r}")
        return None, True
    ha1 = secrets_["ha1_sha256"] if algorithm == "SHA-256" else secrets_["ha1_md5"]
    ha2 = _h(algorithm, f"{request.method}:{uri}")
    qop = params.get("qop")
    if qop == "auth":
        expected = _h(algorithm, f"{ha1}:{nonce}:{params.get('nc', '')}:"
                                 f"{params.get('cnonce', '')}:auth:{ha2}")
    elif qop is None:
        expected = _h(algorithm, f"{ha1}:{nonce}:{ha2}")
    else:
        return None, None  # a qop we do not offer: not a guess
    if not hmac.compare_digest(expected, params.get("response", "")):
        _log_failure(ctx, name, "Digest")
        return None, True
    if qop == "auth" and not _fresh_count(nonce, params.get("cnonce", ""), params.get("nc", ""),
                                          ctx.settings.nonce_seconds,
                                          ctx.settings.replay_store):
        return None, None
    return user, False


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
    """Highest nonce count seen per (nonce, cnonce), and the page sessions signed out, in
    an SQLite file shared by the worker processes of one server (each process opens its
    own connection).

    One UPSERT per answer decides atomically across processes: it raises the stored
    count only when the new one is higher, and a count that is not higher is a replay.
    The file holds nothing secret (nonces and session ids are not credentials) and lives
    in a private temporary folder for the life of the server.
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
            self.conn.execute("CREATE TABLE IF NOT EXISTS revoked (jti TEXT PRIMARY KEY, "
                              "until REAL NOT NULL) WITHOUT ROWID")
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

    def revoke(self, jti: str, until: float) -> None:
        """Remember a signed-out session id until its cookie would have expired."""
        with self.lock:
            conn = self._connection()
            conn.execute("DELETE FROM revoked WHERE until < ?", (time.time(),))
            conn.execute("INSERT OR REPLACE INTO revoked (jti, until) VALUES (?, ?)",
                         (jti, until))

    def is_revoked(self, jti: str) -> bool:
        with self.lock:
            return self._connection().execute(
                "SELECT 1 FROM revoked WHERE jti = ?", (jti,)).fetchone() is not None


_shared: dict[str, SharedNonceCounts] = {}


def _shared_counts(path: str) -> SharedNonceCounts:
    with _counts_lock:
        if path not in _shared:
            _shared[path] = SharedNonceCounts(path)
        return _shared[path]


# --- password guessing ----------------------------------------------------------------


class SignInLimiter:
    """Failed sign-ins per (user name, client address), per client address and per
    Digest nonce, in this server process's memory (one per app; with
    ``serve --workers N`` each process counts its own).

    **Why per name *and address*.**  A lock on the name alone lets anyone lock a real
    user out by failing on purpose from another machine.  So, as mature servers do, the
    lock that stops guessing one password is per (name, address): guesses at ``amina``
    from one laptop lock that laptop out of ``amina``, while amina on her own phone
    signs in as usual.  A second, looser count per address across all names stops one
    machine from guessing many names (or one name under many spellings).

    The first :attr:`FREE_PER_USER` failures of a (name, address) pair
    (:attr:`FREE_PER_ADDRESS` of an address: several people may share one, e.g. behind
    a proxy) cost nothing; from then on each failure locks the pair or the address for
    1, 2, 4 … seconds, at most :attr:`LOCK_MAX`.  While locked, every attempt — right
    password or not — is refused (429), so guessing drops to a few tries an hour while
    someone who mistyped waits a second or two.  Each lock is logged (``log``).  A
    successful sign-in clears its pair's count (not the address's: one good account
    must not reset the count for guesses at others); a count is forgotten
    :attr:`FORGET_AFTER` seconds after its last failure.

    Attempts are reserved (:meth:`begin`) before the password is checked and settled
    (:meth:`end`) after, so parallel requests cannot slip past the count: once a key has
    failed, it may have only as many checks in flight as it has free failures left, and
    past them one at a time (before its first failure a key is not limited, so an
    honest phone's parallel requests never wait: a first burst of guesses gets at most
    one per server thread).  A Digest nonce takes at most :attr:`NONCE_FAILURES` wrong
    answers; then it is spent (the client gets a fresh challenge; the failures count
    above too).

    Not covered: guesses at one name spread over many addresses (a botnet) are limited
    only per address; a per-name lock would stop them but hand everyone the lock-out
    above.  On a LAN the addresses are few; behind a proxy see ``--trusted-proxy``.
    """

    FREE_PER_USER = 5
    FREE_PER_ADDRESS = 20
    LOCK_MAX = 900
    FORGET_AFTER = 3600
    NONCE_FAILURES = 3
    MAX_ENTRIES = 10_000

    def __init__(self, log: Callable[[str], None] | None = None) -> None:
        self._lock = threading.Lock()
        self._log = log
        # key -> [failures, last failure, locked until, checks in flight] (monotonic time)
        self._counts: dict[tuple[str, ...], list[float]] = {}
        self._nonces: dict[str, tuple[int, float]] = {}  # failures, first failure

    @staticmethod
    def keys(name: str, address: str | None) -> list[tuple[str, ...]]:
        """The counts one attempt touches: its (name, address) pair, and its address."""
        keys: list[tuple[str, ...]] = [("user", name[:200], address or "-")]
        if address:
            keys.append(("address", address))
        return keys

    def _free(self, key: tuple[str, ...]) -> int:
        return self.FREE_PER_USER if key[0] == "user" else self.FREE_PER_ADDRESS

    def _record(self, key: tuple[str, ...], now: float) -> list[float]:
        record = self._counts.get(key)
        if record is None:
            if len(self._counts) > self.MAX_ENTRIES:
                self._counts = {k: v for k, v in self._counts.items()
                                if v[3] or v[2] > now or now - v[1] < self.FORGET_AFTER}
            record = self._counts[key] = [0, 0.0, 0.0, 0]
        elif record[0] and now - record[1] > self.FORGET_AFTER:
            record[0] = 0
        return record

    def begin(self, keys: list[tuple[str, ...]]) -> None:
        """Reserve one password check for these keys, or raise :class:`TooManyAttempts`."""
        now = time.monotonic()
        with self._lock:
            records = [(key, self._record(key, now)) for key in keys]
            for key, (failures, _last, until, pending) in records:
                if until > now:
                    raise TooManyAttempts(max(1, math.ceil(until - now)))
                if failures and pending and failures + pending >= self._free(key):
                    raise TooManyAttempts(1)
            for _key, record in records:
                record[3] += 1

    def end(self, keys: list[tuple[str, ...]], failed: bool | None,
            nonce: str | None = None) -> None:
        """Settle a check reserved by :meth:`begin`: failed, succeeded (False: clears
        the pair's count) or neither (None: e.g. a replayed Digest answer)."""
        now = time.monotonic()
        locks: list[str] = []
        with self._lock:
            for key in keys:
                record = self._record(key, now)
                record[3] = max(0, record[3] - 1)
                if failed:
                    record[0] += 1
                    record[1] = now
                    over = record[0] - self._free(key)
                    record[2] = now + min(2.0 ** over, self.LOCK_MAX) if over >= 0 else 0.0
                    if over >= 0:
                        locks.append(self._describe(key, record[2] - now, int(record[0])))
                elif failed is False and key[0] == "user":
                    record[0], record[2] = 0, 0.0
            if failed and nonce is not None:
                if len(self._nonces) > self.MAX_ENTRIES:
                    self._nonces = {k: v for k, v in self._nonces.items()
                                    if now - v[1] < self.FORGET_AFTER}
                count, first = self._nonces.get(nonce, (0, now))
                self._nonces[nonce] = (count + 1, first)
        if self._log is not None:
            for line in locks:
                self._log(line)

    @staticmethod
    def _describe(key: tuple[str, ...], seconds: float, failures: int) -> str:
        if key[0] == "user":
            return (f"sign-in locked: user {key[1][:64]!r} from {key[2]} for "
                    f"{math.ceil(seconds)} s after {failures} failures")
        return (f"sign-in locked: address {key[1]} for {math.ceil(seconds)} s after "
                f"{failures} failures across user names")

    def nonce_spent(self, nonce: str) -> bool:
        with self._lock:
            return self._nonces.get(nonce, (0, 0.0))[0] >= self.NONCE_FAILURES


_limiter_lock = threading.Lock()


def limiter(ctx: Any) -> SignInLimiter:
    """The app's limiter (kept on the context's shared attributes, so each app — each
    test server — counts on its own)."""
    found = getattr(ctx, "_georeg_signin_limiter", None)
    if found is None:
        with _limiter_lock:
            found = getattr(ctx, "_georeg_signin_limiter", None)
            if found is None:
                found = SignInLimiter(log=_log_line)
                ctx._georeg_signin_limiter = found
    return found  # type: ignore[no-any-return]


def _address(ctx: Any) -> str | None:
    request = getattr(ctx, "request", None)
    return None if request is None else request.remote_addr


def _log_line(line: str) -> None:
    print(f"[georeg serve] {line}", file=sys.stderr, flush=True)


def _log_failure(ctx: Any, name: str, how: str) -> None:
    """One line in the server's log: the name (repr: no line breaks from a client), the
    address and the route — never the password."""
    request = getattr(ctx, "request", None)
    route = f"{request.method} {request.path}" if request is not None else "-"
    print(f"[georeg serve] sign-in failed ({how}): user {name[:64]!r} from "
          f"{_address(ctx) or '-'} on {route}", file=sys.stderr, flush=True)


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
    """The user when the name and password match (scrypt), else None; raises
    :class:`TooManyAttempts` while the name or the client's address is locked."""
    keys = SignInLimiter.keys(username, _address(ctx))
    guard = limiter(ctx)
    guard.begin(keys)
    failed: bool | None = None  # (an error while checking is no guess)
    try:
        with ctx.registry.read() as conn:
            found = users.user_record(conn, username)
        if found is None:
            users.verify_password(_DUMMY_HASH, password)  # the same time for unknown users
            failed = True
            _log_failure(ctx, username, "password, unknown user")
            return None
        failed = not users.verify_password(found[1]["password_hash"], password)
        if failed:
            _log_failure(ctx, username, "password")
            return None
        # the fresh record replaces a cached one: tokens issued now carry the current stamp
        _user_cache[(id(ctx.registry), username)] = (time.monotonic(), found)
        return found[0]
    finally:
        guard.end(keys, failed)


def stored_credential(ctx: Any, username: str) -> str | None:
    """The user's stored password hash (what token stamps are derived from, see
    ``jwt.py``), None for no such active user; cached like Digest's records, so a changed
    password signs tokens out within :data:`USER_CACHE_SECONDS`."""
    found = _cached_record(ctx, username)
    return None if found is None else str(found[1]["password_hash"])


# --- signed-out sessions ----------------------------------------------------------------
# A page session signed out with /logout stays refused until it expires, even if someone
# kept a copy of its cookie: its id is remembered in memory (one process), or in the file
# the workers share for nonce counts (``serve --workers N``).  A restart forgets them.


def revoke_session(ctx: Any, jti: str, until: float) -> None:
    store = ctx.settings.replay_store
    if store is not None:
        _shared_counts(store).revoke(jti, until)
        return
    revoked = _revoked(ctx)
    with _counts_lock:
        now = time.time()
        for old in [k for k, t in revoked.items() if t < now]:
            del revoked[old]
        revoked[jti] = until


def session_revoked(ctx: Any, jti: str) -> bool:
    store = ctx.settings.replay_store
    if store is not None:
        return _shared_counts(store).is_revoked(jti)
    with _counts_lock:
        return jti in _revoked(ctx)


def _revoked(ctx: Any) -> dict[str, float]:
    found = getattr(ctx, "_georeg_revoked_sessions", None)
    if found is None:
        with _limiter_lock:
            found = getattr(ctx, "_georeg_revoked_sessions", None)
            if found is None:
                found = {}
                ctx._georeg_revoked_sessions = found
    return found  # type: ignore[no-any-return]


_DUMMY_HASH = users.hash_password(secrets.token_hex(8))


def find_user(ctx: Any, username: str) -> User | None:
    with ctx.registry.read() as conn:
        found = users.user_record(conn, username)
    return None if found is None else found[0]


def is_https(request: Request, ctx: Any) -> bool:
    """Behind https (``serve --https``, or a TLS request): Basic is answered and the
    session cookie is ``Secure``."""
    return bool(ctx.settings.https) or request.scheme == "https"


def authenticate(request: Request, ctx: Any) -> User | None:
    """The signed-in user of this request, or None (the result is cached on ``ctx``)."""
    cached = getattr(ctx, "user", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    if getattr(ctx, "signin_refused", False):
        return None  # asked twice in one request: count a wrong password once
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
    elif scheme == "basic" and is_https(request, ctx):
        try:
            name, _, password = base64.b64decode(rest.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return None
        user = check_password(ctx, name, password)
    if user is not None:
        ctx.user = user
    elif scheme:
        ctx.signin_refused = True
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
