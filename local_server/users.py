"""Users of ``georeg serve``: add, list, remove, check a password.

Passwords are stored as an scrypt hash and as the HTTP Digest ``HA1`` values
(``H(name:realm:password)``, MD5 and SHA-256) for one realm — what Digest needs, since
ODK Collect speaks only Digest on plain HTTP — and never in plain text.  The HA1 values
are password equivalents (Digest signs in with them alone), so the registry must be kept
like a password store (docs/server.md).  A new password gets a new scrypt salt, so its
hash — from which tokens' credential stamps derive (``jwt.py``) — always changes.  A user may be limited to subtrees (``roots``: unit uuids); a user
with no roots, and every admin, sees the whole registry.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.registry import Registry

ROLES = ("collector", "reviewer", "admin")
DEFAULT_REALM = "georeg"
_NAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_SCRYPT = (2**14, 8, 1)


@dataclass(frozen=True)
class User:
    fid: int
    name: str
    role: str
    root_uuids: tuple[str, ...] = ()
    root_paths: tuple[str, ...] = field(default=(), compare=False)

    @property
    def roots(self) -> list[str]:
        return list(self.root_uuids)

    @property
    def sees_everything(self) -> bool:
        return self.role == "admin" or not self.root_uuids

    def can_see(self, unit_path: str | None) -> bool:
        """Is a unit with this key path (``/k1/k2/…/``) inside the user's subtrees?"""
        if self.sees_everything:
            return True
        if not unit_path:
            return False
        return any(unit_path.startswith(p) for p in self.root_paths)

    def has_role(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.fid, "name": self.name, "role": self.role,
                "roots": list(self.root_uuids)}


# --- hashing -----------------------------------------------------------------------------


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    n, r, p = _SCRYPT
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64salt, b64hash = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"scrypt${n}${r}${p}${b64salt}${b64hash}"


def verify_password(stored: str, password: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if kind != "scrypt":
        return False
    got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n), r=int(r),
                         p=int(p), dklen=32)
    return hmac.compare_digest(got, base64.b64decode(digest))


def ha1(name: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    h = hashlib.sha256 if algorithm.upper().startswith("SHA-256") else hashlib.md5
    return h(f"{name}:{realm}:{password}".encode()).hexdigest()


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise InvalidInput("The password must have at least 8 characters.")


# --- users -------------------------------------------------------------------------------


def _resolve_root(conn: Connection, ref: str) -> str:
    row = conn.execute(
        text("SELECT uuid FROM org_unit WHERE uuid = :r OR source_ref = :r OR code = :r "
             "ORDER BY CASE WHEN uuid = :r THEN 0 WHEN source_ref = :r THEN 1 ELSE 2 END, "
             "version_id DESC LIMIT 1"), {"r": ref}).first()
    if row is None:
        raise NotFound(f"No org unit with uuid, source ref or code {ref!r} in the registry "
                       "(give the root of the user's area).")
    return str(row[0])


def add_user(reg: Registry, name: str, password: str, *, role: str = "collector",
             roots: list[str] | tuple[str, ...] = (), realm: str = DEFAULT_REALM,
             author: str | None = None) -> dict[str, Any]:
    if not _NAME.match(name or ""):
        raise InvalidInput(f"User name {name!r}: use 1-64 letters, digits, '.', '_', '-' or '@'.")
    if role not in ROLES:
        raise InvalidInput(f"Role {role!r}: expected one of {', '.join(ROLES)}.")
    _check_password(password)
    with reg.write(origin="server", author=author, operation="users add") as conn:
        if conn.execute(text("SELECT 1 FROM app_user WHERE name = :n"), {"n": name}).first():
            raise ConflictError(f"A user named {name!r} already exists; remove it first or "
                                "choose another name.")
        uuids = [(_resolve_root(conn, ref), ref) for ref in roots]
        fid = conn.execute(
            text("INSERT INTO app_user (name, role, password_hash, digest_realm, ha1_md5, "
                 "ha1_sha256, created_by) VALUES (:n, :r, :h, :realm, :m, :s, :by) "
                 "RETURNING fid"),
            {"n": name, "r": role, "h": hash_password(password), "realm": realm,
             "m": ha1(name, realm, password, "MD5"), "s": ha1(name, realm, password, "SHA-256"),
             "by": author}).scalar_one()
        for uuid, ref in dict(uuids).items():
            conn.execute(text("INSERT INTO app_user_root (user_id, unit_uuid, unit_ref) "
                              "VALUES (:u, :x, :r)"), {"u": fid, "x": uuid, "r": ref})
    return {"id": int(fid), "name": name, "role": role, "roots": [u for u, _ in uuids]}


def set_password(reg: Registry, name: str, password: str) -> None:
    _check_password(password)
    with reg.write(origin="server", operation="users password") as conn:
        row = conn.execute(text("SELECT digest_realm FROM app_user WHERE name = :n"),
                           {"n": name}).first()
        if row is None:
            raise NotFound(f"No user named {name!r}.")
        realm = str(row[0])
        conn.execute(text("UPDATE app_user SET password_hash = :h, ha1_md5 = :m, "
                          "ha1_sha256 = :s WHERE name = :n"),
                     {"h": hash_password(password), "m": ha1(name, realm, password, "MD5"),
                      "s": ha1(name, realm, password, "SHA-256"), "n": name})


def remove_user(reg: Registry, name: str) -> dict[str, Any]:
    with reg.write(origin="server", operation="users remove") as conn:
        fid = conn.execute(text("SELECT fid FROM app_user WHERE name = :n"),
                           {"n": name}).scalar()
        if fid is None:
            raise NotFound(f"No user named {name!r}.")
        conn.execute(text("DELETE FROM app_user_root WHERE user_id = :u"), {"u": fid})
        conn.execute(text("DELETE FROM app_user WHERE fid = :u"), {"u": fid})
    return {"removed": name}


def list_users(reg: Registry) -> list[dict[str, Any]]:
    with reg.read() as conn:
        rows = conn.execute(text("SELECT fid, name, role, active, created_at FROM app_user "
                                 "ORDER BY name")).all()
        roots = _roots(conn)
    return [{"id": int(r[0]), "name": r[1], "role": r[2], "active": bool(r[3]),
             "created_at": str(r[4]), "roots": roots.get(int(r[0]), [])} for r in rows]


def count_users(reg: Registry) -> int:
    with reg.read() as conn:
        return int(conn.execute(text("SELECT count(*) FROM app_user WHERE active")).scalar_one())


def _roots(conn: Connection, user_id: int | None = None) -> dict[int, list[str]]:
    sql = "SELECT user_id, unit_uuid FROM app_user_root"
    params: dict[str, Any] = {}
    if user_id is not None:
        sql += " WHERE user_id = :u"
        params["u"] = user_id
    out: dict[int, list[str]] = {}
    for uid, uuid in conn.execute(text(sql + " ORDER BY fid"), params):
        out.setdefault(int(uid), []).append(str(uuid))
    return out


def root_paths(conn: Connection, root_uuids: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Key paths of the roots (all versions: unit keys are stable across versions)."""
    paths: set[str] = set()
    for uuid in root_uuids:
        for (path,) in conn.execute(text("SELECT DISTINCT path FROM org_unit WHERE uuid = :u"),
                                    {"u": uuid}):
            paths.add(str(path))
    return tuple(sorted(paths))


def user_record(conn: Connection, name: str) -> tuple[User, dict[str, Any]] | None:
    """The user and its stored secrets (hash, realm, HA1), or None."""
    row = conn.execute(
        text("SELECT fid, name, role, password_hash, digest_realm, ha1_md5, ha1_sha256 "
             "FROM app_user WHERE name = :n AND active"), {"n": name}).first()
    if row is None:
        return None
    uuids = tuple(_roots(conn, int(row[0])).get(int(row[0]), []))
    user = User(int(row[0]), str(row[1]), str(row[2]), uuids, root_paths(conn, uuids))
    return user, {"password_hash": row[3], "realm": row[4], "ha1_md5": row[5],
                  "ha1_sha256": row[6]}


def get_user(reg: Registry, name: str) -> User | None:
    with reg.read() as conn:
        found = user_record(conn, name)
    return None if found is None else found[0]


def in_area(conn: Connection, within: list[tuple[int, str]], version_id: int,
            uuid: str | None) -> bool | None:
    """Is the unit inside the area in this version? None when the version has no such
    unit.  A unit made on a phone and still waiting for review lies where its creation
    request puts it (followed up a chain of such units)."""
    for _ in range(100):  # a chain of pending units is short; a loop is not followed
        if uuid is None:
            return False
        row = conn.execute(text("SELECT path FROM org_unit WHERE version_id = :v AND "
                                "uuid = :u"), {"v": version_id, "u": uuid}).first()
        if row is not None:
            return any(vid == version_id and str(row[0]).startswith(path)
                       for vid, path in within)
        pending = conn.execute(
            text("SELECT new_parent_uuid FROM change_request WHERE unit_uuid = :u AND "
                 "kind = 'creation' AND status = 'new'"), {"u": uuid}).first()
        if pending is None:
            return None
        uuid = pending[0]
    return False


def unit_visible(conn: Connection, user: User, unit_uuid: str | None) -> bool:
    """Is the unit (by uuid, any version) inside one of the user's subtrees?

    A unit made on a phone and still waiting for review is in no version yet: it lies
    where its creation request puts it (followed up a chain of such units), as for the
    change requests themselves (:func:`in_area`), so a collector's
    submission for the unit she just created stays in her list and her reviewer's."""
    if user.sees_everything:
        return True
    if not unit_uuid:
        return False
    known = False
    for (path,) in conn.execute(text("SELECT DISTINCT path FROM org_unit WHERE uuid = :u"),
                                {"u": unit_uuid}):
        if user.can_see(str(path)):
            return True
        known = True
    if known:
        return False
    pending = conn.execute(text(
        "SELECT version_id FROM change_request WHERE unit_uuid = :u AND kind = 'creation' "
        "AND status = 'new' ORDER BY fid DESC LIMIT 1"), {"u": unit_uuid}).first()
    if pending is None:
        return False
    version_id = int(pending[0])  # root paths are the same in every version
    return bool(in_area(conn, [(version_id, p) for p in user.root_paths], version_id,
                         unit_uuid))


def unit_known(conn: Connection, unit_uuid: str) -> bool:
    """Is the unit in some version, or waiting for review as a creation?"""
    return conn.execute(text(
        "SELECT 1 FROM org_unit WHERE uuid = :u UNION ALL SELECT 1 FROM change_request "
        "WHERE unit_uuid = :u AND kind = 'creation' AND status = 'new'"),
        {"u": unit_uuid}).first() is not None
