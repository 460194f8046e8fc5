"""JSON Web Tokens (HS256) for the Iaso app, with the standard library only.

The Iaso Android app logs in with ``POST /api/token/`` and sends
``Authorization: Bearer <access token>`` afterwards (Iaso uses simplejwt with HS256).
The signing key is random, generated once per registry and kept **outside** it, in a
private file beside the registry (``REG.server-key``, mode 600) or, for a PostGIS
registry, under ``~/.config/georeg/``: copying the registry never copies the key, and
deleting the key file signs every phone out.

**Credential stamps.** Every token (access, refresh, and the pages' session cookie)
carries ``cst``, a short keyed hash of the user's *stored* password hash.  Setting a
password stores a new hash (new salt), so the stamp of every token issued before no
longer matches and :func:`decode` refuses it: a changed password or a removed user
signs out phones and browsers, not only Digest.  The lookup needs the registry, which
this module does not know: while a request is served the app sets :data:`CREDENTIALS`
to a function ``name -> stored password hash | None`` (``auth.stored_credential``), and
:func:`issue_pair` / :func:`decode` use it.  Outside a request (unit tests, scripts)
it is unset and tokens are checked without stamps.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from storage.errors import SetupError

ALGORITHM = "HS256"
ACCESS_SECONDS = 7 * 24 * 3600  # a week in the field without re-login
REFRESH_SECONDS = 60 * 24 * 3600
KEY_ENV = "GEOREG_SERVER_KEY_FILE"


#: While the server answers a request: ``name -> the user's stored password hash`` (None
#: when there is no such active user).  See the module docstring.
CREDENTIALS: ContextVar[Callable[[str], str | None] | None] = ContextVar(
    "georeg_token_credentials", default=None)


class InvalidToken(Exception):
    """The token is malformed, not ours, of the wrong type, expired, or signed out (its
    user is gone or has changed password since it was issued)."""


def stamp(username: str, key: bytes) -> str | None:
    """The user's current credential stamp, or None when stamps are not in use (outside
    a request).  64 bits of HMAC: the token's signature already stops forgery, the stamp
    only has to change with the password, and it reveals nothing about the hash."""
    lookup = CREDENTIALS.get()
    if lookup is None:
        return None
    stored = lookup(username)
    if stored is None:
        raise InvalidToken("the user no longer exists")
    return hmac.new(key, f"cst:{username}:{stored}".encode(), hashlib.sha256).hexdigest()[:16]


def stamped(claims: dict[str, Any], key: bytes) -> dict[str, Any]:
    """``claims`` with the credential stamp of their ``username`` (when in use)."""
    current = stamp(str(claims["username"]), key)
    return claims if current is None else claims | {"cst": current}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    pad = "=" * (-len(text) % 4)
    try:
        return base64.urlsafe_b64decode(text + pad)
    except (ValueError, TypeError) as error:
        raise InvalidToken("token is not base64url") from error


def encode(claims: dict[str, Any], key: bytes) -> str:
    header = {"alg": ALGORITHM, "typ": "JWT"}
    signing_input = (
        _b64(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, separators=(",", ":")).encode())
    )
    signature = hmac.new(key, signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


def decode(token: str, key: bytes, *, token_type: str = "access", now: float | None = None
           ) -> dict[str, Any]:
    """Verify signature, algorithm, type, expiry and (in a request) the credential stamp;
    the claims, or :class:`InvalidToken`."""
    parts = (token or "").strip().split(".")
    if len(parts) != 3:
        raise InvalidToken("a token has three dot-separated parts")
    try:
        header = json.loads(_unb64(parts[0]))
        claims = json.loads(_unb64(parts[1]))
    except ValueError as error:
        raise InvalidToken("token parts are not JSON") from error
    if not isinstance(header, dict) or header.get("alg") != ALGORITHM:
        raise InvalidToken("only HS256 tokens are accepted")
    expected = hmac.new(key, f"{parts[0]}.{parts[1]}".encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, _unb64(parts[2])):
        raise InvalidToken("bad signature")
    if not isinstance(claims, dict):
        raise InvalidToken("claims are not an object")
    if claims.get("token_type") != token_type:
        raise InvalidToken(f"not an {token_type} token")
    exp = claims.get("exp")
    if not isinstance(exp, (int, float)) or exp < (now if now is not None else time.time()):
        raise InvalidToken("token expired")
    current = stamp(str(claims.get("username")), key)
    if current is not None and not hmac.compare_digest(str(claims.get("cst", "")), current):
        raise InvalidToken("signed out: the password was changed since this token was issued")
    return claims


def issue_pair(username: str, key: bytes, *, now: float | None = None) -> dict[str, str]:
    """simplejwt's response body: ``{"access": …, "refresh": …}`` (stamped, see above)."""
    t = int(now if now is not None else time.time())
    base = stamped({"user_id": username, "username": username, "iat": t}, key)
    return {
        "access": encode(base | {"token_type": "access", "exp": t + ACCESS_SECONDS,
                                 "jti": secrets.token_hex(8)}, key),
        "refresh": encode(base | {"token_type": "refresh", "exp": t + REFRESH_SECONDS,
                                  "jti": secrets.token_hex(8)}, key),
    }


def key_path(registry: str) -> Path:
    """Where the signing key of this registry lives (see the module docstring)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    if not str(registry).startswith("postgres"):
        return Path(str(registry) + ".server-key")
    digest = hashlib.sha256(str(registry).split("@")[-1].encode()).hexdigest()[:16]
    return Path("~/.config/georeg").expanduser() / f"server-key-{digest}"


def load_or_create_key(path: Path) -> bytes:
    """The key in ``path``, made (32 random bytes, mode 600) the first time."""
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise SetupError(
                f"{path} (the server's token signing key) can be read by other users "
                f"(mode {mode:o}). Make it private with: chmod 600 {path}"
            )
        data = path.read_bytes().strip()
        if len(data) < 32:
            raise SetupError(f"{path} is too short to be a signing key; delete it to make a new one.")
        return data
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode("ascii")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another server process made it first
        return load_or_create_key(path)
    try:
        os.write(fd, key)
    finally:
        os.close(fd)
    return key
