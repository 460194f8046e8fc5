"""Where the Iaso API, the REST API and the pages meet the server core.

The core (``local_server/app.py``, ``auth.py`` and the users/projects/forms/submissions
modules) owns requests, users and stored forms and submissions; this module is the one
place the three front ends above call it, so they read as plain handlers.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text
from werkzeug.wrappers import Request, Response

from local_server import auth, projects
from local_server.jwt import InvalidToken, decode, key_path, load_or_create_key
from storage.errors import ConflictError, GeoregError, InvalidInput, NotFound
from storage.registry import Registry
from storage.versions import VersionRef, resolve_version

Handler = Callable[..., Response]


def error_response(error: GeoregError) -> Response:
    return Response(json.dumps(error.to_dict(), ensure_ascii=False, default=str),
                    status=error.http_status, content_type="application/json")


def wrap(handler: Handler) -> Handler:
    """Refuse NUL characters up front (PostgreSQL cannot hold them in text); our errors
    propagate to the app, which answers them with the one JSON error body."""

    @functools.wraps(handler)
    def run(request: Request, ctx: Any, **kw: Any) -> Response:
        if any("\x00" in v for v in [*request.args.values(), *kw.values()]
               if isinstance(v, str)):
            raise InvalidInput("A query parameter or path holds a NUL character.")
        return handler(request, ctx, **kw)

    return run


# --- registry, keys ---------------------------------------------------------------------


def registry(ctx: Any) -> Registry:
    return ctx.registry  # type: ignore[no-any-return]


def signing_key(ctx: Any) -> bytes:
    """The registry's token key (kept per app on the context's shared attributes)."""
    key = getattr(ctx, "_georeg_jwt_key", None)
    if key is None:
        location = registry(ctx).location
        where = str(location.path) if location.path is not None else str(location.url)
        key = load_or_create_key(key_path(where))
        ctx._georeg_jwt_key = key
    return bytes(key)


# --- users -----------------------------------------------------------------------------


def bearer_user(request: Request, ctx: Any) -> Any | None:
    """The user of a valid ``Authorization: Bearer`` token, else None (registered as the
    core's bearer verifier too)."""
    header = request.headers.get("Authorization", "")
    if not header[:7].lower() == "bearer ":
        return None
    try:
        claims = decode(header[7:].strip(), signing_key(ctx))
    except InvalidToken:
        return None
    return find_user(ctx, str(claims.get("username")))


def require_user(request: Request, ctx: Any) -> Any:
    """The signed-in user (Digest, or a Bearer token through the verifier registered
    below); 401 with a Digest challenge otherwise."""
    user = auth.authenticate(request, ctx)
    if user is None:
        if request.headers.get("Authorization"):
            raise auth.AuthRequired("Wrong credentials or expired token: sign in again "
                                    "(HTTP Digest, or a Bearer token from POST /api/token/).")
        raise auth.AuthRequired("Sign in: HTTP Digest, or a Bearer token from "
                                "POST /api/token/.")
    return user


def require_role(request: Request, ctx: Any, roles: tuple[str, ...]) -> Any:
    user = require_user(request, ctx)
    if user_role(user) not in roles:
        raise auth.Forbidden(f"This needs the role {' or '.join(roles)}; {user_name(user)!r} "
                             f"is a {user_role(user)}.")
    return user


def mobile_user(request: Request, ctx: Any, app_id: str | None, write: bool = False) -> Any:
    """The Iaso app's user (Bearer token or Digest); the project must exist when named."""
    user = require_user(request, ctx)
    if app_id:
        project_dict(ctx, app_id)
    return user


def check_password(ctx: Any, username: str, password: str) -> Any | None:
    return auth.check_password(ctx, username, password)


def find_user(ctx: Any, username: str) -> Any | None:
    return auth.find_user(ctx, username)


def user_name(user: Any) -> str:
    return str(user.name)


def user_role(user: Any) -> str:
    return str(user.role)


def _root_refs(user: Any) -> list[str]:
    return [str(r) for r in (getattr(user, "root_uuids", None) or [])]


def user_paths(conn: Connection, user: Any, version: VersionRef) -> list[str] | None:
    """The user's subtrees as key paths (the same in every version: keys are stable);
    None when the user sees everything."""
    if user.sees_everything:
        return None
    return list(user.root_paths)


def user_root_keys(conn: Connection, user: Any, version: VersionRef) -> list[int]:
    refs = _root_refs(user)
    keys = []
    for ref in refs:
        row = conn.execute(
            text("SELECT unit_key FROM org_unit WHERE version_id = :v AND uuid = :r"),
            {"v": version.id, "r": ref}).first()
        if row is not None:
            keys.append(int(row[0]))
    return keys


def user_version_paths(conn: Connection, user: Any) -> list[tuple[int, str]] | None:
    """The user's subtrees in every version, for filters that span versions."""
    refs = _root_refs(user)
    if user.sees_everything:
        return None
    out = []
    for ref in refs:
        for vid, path in conn.execute(
            text("SELECT version_id, path FROM org_unit WHERE uuid = :r"),
            {"r": ref}):
            out.append((int(vid), str(path)))
    return out


def _creation(conn: Connection, unit_uuid: str) -> Any:
    """The latest creation request that proposed ``unit_uuid`` (a unit made on a phone)."""
    return conn.execute(
        text("SELECT fid, new_parent_uuid, status FROM change_request WHERE unit_uuid = :u "
             "AND kind = 'creation' ORDER BY CASE status WHEN 'rejected' THEN 1 ELSE 0 END, "
             "fid DESC LIMIT 1"), {"u": unit_uuid}).first()


def unit_place(conn: Connection, version: VersionRef, unit_uuid: str
               ) -> tuple[str | None, str | None, Any]:
    """Where a unit lives now, for the area check: ``(path, name, creation)``.

    In order: the version phones download (``version``); else the newest version that
    holds it — a creation or move approved by a reviewer is written to the draft, which
    phones see only once it is published, and submissions already tied to the phone's
    uuid must keep finding it meanwhile; else, for a unit made on a phone whose request
    is not approved yet, where that request places it (under its parent, found the same
    way).  ``path`` is None when the unit is nowhere; ``creation`` is then its creation
    request row, if any (e.g. a rejected one), for a true refusal message."""
    uuid: str | None = unit_uuid
    creation = None
    for _ in range(16):  # pending units under pending units, but never a loop
        if uuid is None:
            break
        row = conn.execute(
            text("SELECT path, name FROM org_unit WHERE uuid = :u ORDER BY "
                 "CASE WHEN version_id = :v THEN 0 ELSE 1 END, version_id DESC LIMIT 1"),
            {"v": version.id, "u": uuid}).first()
        if row is not None:
            return str(row[0]), str(row[1]), creation
        found = _creation(conn, uuid)
        if found is None or found.status == "rejected":
            return None, None, found if creation is None else creation
        creation = creation or found
        uuid = found.new_parent_uuid
    return None, None, creation


def check_in_area(reg: Registry, user: Any, version: VersionRef, unit_uuid: str | None,
                  what: str, *, any_version: bool = False) -> None:
    """A collector may only create, change or submit for units inside their subtree.

    The unit is looked for where it lives now (``unit_place``).  ``any_version`` (for
    submissions) also accepts a unit inside the area in any version, the rule ODK Collect
    submissions follow (``users.unit_visible``), so both clients agree.  A refusal says
    what is true: outside the area (naming the unit), unknown, or a rejected proposal."""
    from local_server import users as users_mod

    with reg.read() as conn:
        paths = user_paths(conn, user, version)
        if paths is None:
            return
        if unit_uuid is None:
            raise auth.Forbidden(f"{what}: you can only add units inside your area (give a parent).")
        if any_version and users_mod.unit_visible(conn, user, unit_uuid):
            return
        path, name, creation = unit_place(conn, version, unit_uuid)
    if path is not None:
        if any(path.startswith(p) for p in paths):
            return
        raise auth.Forbidden(f"{what}: the unit {name!r} ({unit_uuid}) is outside your area.",
                             unit=unit_uuid)
    if creation is not None and creation.status == "rejected":
        raise ConflictError(f"{what}: the unit {unit_uuid} was proposed on a phone and the "
                            f"proposal was rejected (change request #{creation.fid}); it is not "
                            "in the registry.", unit=unit_uuid)
    raise NotFound(f"{what}: no org unit {unit_uuid} in this registry (neither a unit of any "
                   "version nor one proposed on a phone).", unit=unit_uuid)


def device(ctx: Any) -> str | None:
    return getattr(ctx, "device_id", None)


# --- projects and the version phones see ------------------------------------------------


def project_dict(ctx: Any, app_id: str | None) -> dict[str, Any] | None:
    if not app_id:
        return None
    project = projects.get_project(registry(ctx), app_id)
    return {"id": project["id"], "name": project["name"], "app_id": project["app_id"]}


def mobile_version(conn: Connection, ctx: Any, app_id: str | None) -> VersionRef:
    """The default version of the first source: what every phone downloads."""
    row = conn.execute(text("SELECT name FROM data_source ORDER BY fid LIMIT 1")).first()
    if row is None:
        raise NotFound("This registry has no data source yet: import one first.")
    return resolve_version(conn, str(row[0]))


# --- forms and submissions (the core's tables, read here) -----------------------------


def _iso(value: Any) -> str | None:
    return None if value is None else str(value)


def _epoch(value: Any) -> float | None:
    import datetime as dt

    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _form_version_dict(ctx: Any, row: Any) -> dict[str, Any]:
    return {"id": int(row.vid), "version_id": row.version, "form_id": int(row.form_fid),
            "form_name": row.title, "full_name": f"{row.title} - V{row.version}",
            "file": ctx.url(f"/api/formversions/{int(row.vid)}/form.xml"),
            "xls_file": None, "md5": row.md5, "mapped": False, "start_period": None,
            "end_period": None, "created_at": _epoch(row.vcreated),
            "updated_at": _epoch(row.vcreated)}


_VERSIONS_SQL = (
    "SELECT f.fid AS form_fid, f.form_id, f.title, f.created_at, f.updated_at, "
    "f.project_id, v.fid AS vid, v.version, v.md5, v.created_at AS vcreated, "
    "(SELECT count(*) FROM form_media m WHERE m.form_version_fid = v.fid) AS media "
    "FROM form f JOIN form_version v ON v.form_fid = f.fid "
)


def iaso_forms(ctx: Any, request: Request, app_id: str | None) -> list[dict[str, Any]]:
    """The project's active forms with their newest version, in Iaso's mobile shape.

    ``org_unit_type_ids`` / ``org_unit_types`` list **every** org-unit type of the registry
    (those ``/api/orgunittypes/`` serves).  In Iaso a form is assigned the unit types it is
    filled on, and the app opens a form from a chosen org unit; the app learns which forms
    go with a unit only from this list (the types it downloads do not name their forms),
    so the empty list served before left the form offered on no unit.  Georeg has no
    per-form type setting: the form is offered on every unit, and the org-unit question
    (``forms add --org-unit-field``) and the collector's area still decide what a
    submission may be tied to."""
    project = project_dict(ctx, app_id)
    where = "f.active AND v.fid = (SELECT max(fid) FROM form_version x WHERE x.form_fid = f.fid)"
    params: dict[str, Any] = {}
    if project is not None:
        where += " AND f.project_id = :p"
        params["p"] = project["id"]
    with registry(ctx).read() as conn:
        rows = conn.execute(text(_VERSIONS_SQL + f"WHERE {where} ORDER BY f.title"),
                            params).all()
        types = [{"id": int(t.fid), "name": t.name, "short_name": t.short_name or t.name,
                  "depth": t.depth, "created_at": None, "updated_at": None}
                 for t in conn.execute(text(
                     "SELECT fid, name, short_name, depth FROM org_unit_type "
                     "ORDER BY depth, name"))]
    out = []
    for r in rows:
        latest = _form_version_dict(ctx, r)
        out.append({
            "id": int(r.form_fid), "name": r.title, "form_id": r.form_id,
            "created_at": _epoch(r.created_at), "updated_at": _epoch(r.updated_at),
            "org_unit_type_ids": [t["id"] for t in types],
            "org_unit_types": [dict(t) for t in types], "period_type": None,
            "single_per_period": False, "periods_before_allowed": 0,
            "periods_after_allowed": 0, "device_field": "deviceid",
            "location_field": "", "label_keys": [], "derived": False,
            "projects": [project] if project else [],
            "latest_form_version": {k: latest[k] for k in (
                "id", "version_id", "file", "xls_file", "created_at", "updated_at",
                "start_period", "end_period", "mapped")},
            "reference_form_of_org_unit_types": [], "change_request_mode": "CR_MODE_NONE",
            "possible_fields": [], "predefined_filters": [],
            "has_attachments": bool(r.media),
        })
    return out


def iaso_form_versions(ctx: Any, request: Request, app_id: str | None,
                       form_id: str | None) -> list[dict[str, Any]]:
    params: dict[str, Any] = {}
    where = "f.active"
    if form_id:
        if not form_id.isdigit() or len(form_id) > 15:
            raise InvalidInput("Query parameter 'form_id' must be a form id (a number).",
                               parameter="form_id")
        where += " AND f.fid = :f"
        params["f"] = int(form_id)
    with registry(ctx).read() as conn:
        rows = conn.execute(text(_VERSIONS_SQL + f"WHERE {where} ORDER BY f.fid, v.fid"),
                            params).all()
    return [_form_version_dict(ctx, r) for r in rows]


def xform_bytes(ctx: Any, version_fid: int) -> bytes:
    with registry(ctx).read() as conn:
        row = conn.execute(text("SELECT xform FROM form_version WHERE fid = :v"),
                           {"v": version_fid}).first()
    if row is None:
        raise NotFound(f"No form version {version_fid}.")
    return bytes(row[0])


def list_submissions(ctx: Any, user: Any, *, form: str | None, since: str | None, page: int,
                     limit: int) -> dict[str, Any]:
    """The core's listing, each row with ``location`` ([lon, lat]) and its unit's name."""
    from local_server import submissions

    data = submissions.list_submissions(registry(ctx), form=form, since=since, page=page,
                                        limit=limit, user=user)
    uuids = sorted({r["org_unit_uuid"] for r in data["results"] if r.get("org_unit_uuid")})
    names: dict[str, str] = {}
    with registry(ctx).read() as conn:
        for uuid in uuids:
            name = conn.execute(text("SELECT name FROM org_unit WHERE uuid = :u ORDER BY "
                                     "version_id DESC LIMIT 1"), {"u": uuid}).scalar()
            if name is not None:
                names[uuid] = str(name)
        forms = [r[0] for r in conn.execute(text(
            "SELECT DISTINCT form_id FROM submission ORDER BY form_id"))]
    for r in data["results"]:
        lon, lat = r.get("longitude"), r.get("latitude")
        r["location"] = [lon, lat] if lon is not None and lat is not None else None
        r["org_unit_ref"] = r.get("org_unit_uuid")
        r["org_unit_name"] = names.get(r.get("org_unit_uuid") or "")
    return {"count": data["count"], "results": data["results"], "forms": forms}


def recent_submissions(ctx: Any, user: Any, limit: int = 10) -> list[dict[str, Any]]:
    return list(list_submissions(ctx, user, form=None, since=None, page=1,
                                 limit=limit)["results"])


def collect_qr(ctx: Any, request: Request, user: Any) -> dict[str, Any]:
    """ODK Collect's settings QR for this server and user (the core's payload)."""
    from local_server import collect_qr as qr

    base = ctx.base_url()
    payload = qr.collect_payload(base, user_name(user), "Georeg")
    return {"qr_svg": qr.qr_svg(payload), "urls": [base], "payload": payload}


# --- Iaso uploads: the core's submission storage + pairing ----------------------------


def _apply_metadata(conn: Connection, submission_id: int, meta: dict[str, Any]) -> None:
    """The phone's metadata onto the stored submission: org unit and GPS."""
    sets: dict[str, Any] = {}
    unit = meta.get("orgUnitId")
    if unit not in (None, ""):
        raw = str(unit).strip()
        uuid = raw
        if raw.isdigit() and len(raw) <= 15:
            row = conn.execute(text("SELECT uuid FROM org_unit WHERE unit_key = :k "
                                    "ORDER BY version_id DESC LIMIT 1"), {"k": int(raw)}).first()
            uuid = str(row[0]) if row is not None else raw
        sets["org_unit_uuid"] = uuid
    for key, column in (("longitude", "longitude"), ("latitude", "latitude"),
                        ("altitude", "altitude"), ("accuracy", "accuracy")):
        value = meta.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:
            sets[column] = float(value)
    if sets:
        assignments = ", ".join(f"{k} = :{k}" for k in sets)
        conn.execute(text(f"UPDATE submission SET {assignments} WHERE fid = :fid"),
                     sets | {"fid": submission_id})


def iaso_instance_metadata(ctx: Any, user: Any, app_id: str | None, item: dict[str, Any]
                           ) -> None:
    from local_server import iaso_uploads

    reg = registry(ctx)
    unit = item.get("orgUnitId")
    if unit not in (None, ""):
        raw = str(unit).strip()
        with reg.read() as conn:
            version = mobile_version(conn, ctx, app_id)
            if raw.isdigit() and len(raw) <= 15:
                uuid = conn.execute(text("SELECT uuid FROM org_unit WHERE version_id = :v AND "
                                         "unit_key = :k"), {"v": version.id, "k": int(raw)}
                                    ).scalar()
                if uuid is None:
                    raise InvalidInput(f"instance {item.get('id')}: no org unit with id {raw}.")
            else:  # a uuid, a source ref, or a unit made on the phone (its uuid)
                uuid = conn.execute(text(
                    "SELECT uuid FROM org_unit WHERE version_id = :v AND (uuid = :r OR "
                    "source_ref = :r) ORDER BY CASE WHEN uuid = :r THEN 0 ELSE 1 END LIMIT 1"),
                    {"v": version.id, "r": raw}).scalar() or raw
        check_in_area(reg, user, version, str(uuid), f"instance {item.get('id')}",
                      any_version=True)
        item = item | {"orgUnitId": str(uuid)}
    iaso_uploads.record_metadata(reg, user_name(user), app_id, item, _apply_metadata,
                                 admin=user_role(user) == "admin")


def iaso_store_xml(ctx: Any, user: Any, xml_name: str, xml: bytes,
                   files: dict[str, bytes]) -> None:
    import mimetypes

    from local_server import iaso_uploads, submissions

    reg = registry(ctx)
    attachments = {name: (content, mimetypes.guess_type(name)[0] or "application/octet-stream")
                   for name, content in files.items()}
    stored = submissions.store_submission(reg, xml, attachments, user=user,
                                          device_id=device(ctx), source="iaso")
    iaso_uploads.record_submission(reg, user_name(user), xml_name, stored.fid, _apply_metadata,
                                   admin=user_role(user) == "admin")


def iaso_form_upload(ctx: Any, user: Any, request: Request) -> None:
    """``POST /sync/form_upload/``: ``xml_submission_file`` and any other file parts."""
    xml_part = request.files.get("xml_submission_file")
    if xml_part is None:
        raise InvalidInput("The multipart part 'xml_submission_file' (the submission XML) is "
                           "missing.", field="xml_submission_file")
    xml = xml_part.read()
    files = {name: part.read() for name, part in request.files.items(multi=True)
             if name != "xml_submission_file"}
    iaso_store_xml(ctx, user, xml_part.filename or "submission.xml", xml, files)


auth.register_token_verifier(bearer_user)
