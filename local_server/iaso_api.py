"""The subset of Iaso's mobile API the Iaso Android app needs, with Iaso's payloads.

Routes (every call carries ``?app_id=<project app id>``):

* ``POST /api/token/`` and ``/api/token/refresh/`` — JWT (HS256) as simplejwt answers;
* ``GET /api/mobile/orgunits/`` — the org units phones work with, ``orgUnits`` in path
  order, paged with ``page``/``limit`` (unpaged by default), ``shapes=true`` adds
  ``geo_json`` (pages capped at 1000 then), ``ids=`` picks units.  The body is
  **streamed** in batches: memory stays flat whatever the tree's size;
* ``GET /api/mobile/forms/``, ``GET /api/formversions/``, ``GET /api/orgunittypes/``,
  ``GET /api/mobile/groups/``;
* ``POST /api/instances/`` (metadata) + ``POST /sync/form_upload/`` (the XML and its
  files), in either order, paired by the XML's file name;
* ``POST /api/mobile/orgunits/`` — units made on the phone: creation requests;
* ``POST /api/orgunits/changes/`` and ``GET /api/mobile/orgunits/changes/``;
* ``POST /api/mobile/bulkupload/`` — the zip of all of the above, item by item: 204
  when all is stored, else the refused items listed (``partly_refused``) and the
  others stored.

Ids: a unit's Iaso ``id`` is its stable ``unit_key`` (the same in every version), a
type's is its row id, a group's its stable ``group_key``.  Phones see the default
version of the project's source (the first source when the project names none); units
``new`` and ``valid`` are served (Iaso serves only ``VALID``; here a creation approved
today reaches phones at the next sync), ``rejected`` ones are not.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import struct
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

import shapely
from sqlalchemy import Connection, text
from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local_server import auth
from local_server import server_glue as glue
from local_server.jwt import InvalidToken, decode, issue_pair
from local_server.rest_api import json_response, read_json
from storage import change_requests as cr
from storage import geometry
from storage.backends import Backend
from storage.errors import ConflictError, GeoregError, InvalidInput, NotFound
from storage.registry import Registry, json_value
from storage.versions import VersionRef

BATCH = 2000
SHAPES_MAX = 1000
_STATUS = {"new": "NEW", "valid": "VALID", "rejected": "REJECTED"}
_ENV = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}


# --- fast point decoding (no shapely object per row) ----------------------------------


def point_xyz(backend: Backend, value: Any) -> tuple[float, float, float] | None:
    """lon, lat, alt of a point column value (GeoPackage blob or WKB); None if empty."""
    if value is None:
        return None
    blob = bytes(value)
    offset = 0
    if backend is Backend.GEOPACKAGE:
        if len(blob) < 8 or blob[:2] != b"GP":
            return None
        flags = blob[3]
        if flags & 0b00010000:
            return None
        offset = 8 + _ENV.get((flags >> 1) & 0b111, 0)
    if len(blob) < offset + 21:
        return None
    endian = "<" if blob[offset] == 1 else ">"
    (wkb_type,) = struct.unpack_from(endian + "I", blob, offset + 1)
    x, y = struct.unpack_from(endian + "dd", blob, offset + 5)
    if x != x or y != y:  # NaN: empty point
        return None
    z = 0.0
    if (wkb_type in (1001, 3001) or wkb_type & 0x80000000) and len(blob) >= offset + 29:
        (z,) = struct.unpack_from(endian + "d", blob, offset + 21)
    return x, y, z


def _epoch(value: Any) -> float | None:
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --- org units ------------------------------------------------------------------------


def _org_unit_sql(reg: Registry, shapes: bool, where: str) -> str:
    ter = ""
    if shapes:
        ter = (f", (SELECT {geometry.select_sql(reg.backend, 'tt.territory')} FROM "
               "org_unit_territory tt WHERE tt.unit_fid = u.fid) AS territory")
    return (
        "SELECT u.unit_key, u.name, u.uuid, u.parent_key, u.type_id, t.name AS type_name, "
        "u.validation_status, u.aliases, u.opening_date, u.closed_date, u.path, "
        f"{geometry.select_sql(reg.backend, 'u.location')} AS location, "
        "p.validation_status AS parent_status, p.path AS parent_path"
        f"{ter} FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
        "LEFT JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
        f"WHERE {where} ORDER BY u.path"
    )


def _served(paths: list[str] | None, status: Any, path: Any) -> bool:
    if status is None or status == "rejected":
        return False
    if paths is None:
        return True
    return any(str(path).startswith(p) for p in paths)


def _items(reg: Registry, conn: Connection, version: VersionRef, rows: Sequence[Any],
           paths: list[str] | None, stamp: float | None, shapes: bool) -> list[dict[str, Any]]:
    groups: dict[int, list[int]] = {}
    if rows:
        # rows come in path order: one range read gets the batch's memberships
        for unit_key, group_key in conn.execute(
            text("SELECT m.unit_key, m.group_key FROM org_unit g JOIN group_membership m "
                 "ON m.version_id = g.version_id AND m.unit_key = g.unit_key "
                 "WHERE g.version_id = :v AND g.path >= :lo AND g.path <= :hi "
                 "ORDER BY m.group_key"),
            {"v": version.id, "lo": rows[0].path, "hi": rows[-1].path},
        ):
            groups.setdefault(int(unit_key), []).append(int(group_key))
    out = []
    for r in rows:
        xyz = point_xyz(reg.backend, r.location)
        item: dict[str, Any] = {
            "name": r.name,
            "id": int(r.unit_key),
            "parent_id": int(r.parent_key) if r.parent_key is not None
            and _served(paths, r.parent_status, r.parent_path) else None,
            "org_unit_type_id": r.type_id,
            "org_unit_type_name": r.type_name,
            "validation_status": _STATUS.get(r.validation_status, r.validation_status),
            "created_at": stamp,
            "updated_at": stamp,
            "latitude": xyz[1] if xyz else None,
            "longitude": xyz[0] if xyz else None,
            "altitude": xyz[2] if xyz else None,
            "uuid": r.uuid,
            "aliases": json_value(r.aliases) or [],
            "groups": groups.get(int(r.unit_key), []),
            "opening_date": _date(r.opening_date),
            "closed_date": _date(r.closed_date),
        }
        if shapes:
            geom = geometry.decode(reg.backend, r.territory)
            item["geo_json"] = json.loads(shapely.to_geojson(geom)) if geom is not None else None
        out.append(item)
    return out


def _date(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, dt.date) else str(value)[:10]


def stream_org_units(reg: Registry, version: VersionRef, *, paths: list[str] | None,
                     shapes: bool = False, page: int | None = None, limit: int | None = None,
                     roots: list[int] | None = None, ids: list[int] | None = None
                     ) -> Iterator[bytes]:
    """The body of ``GET /api/mobile/orgunits/``, produced batch by batch.

    One read transaction for the whole body (a consistent snapshot); only ``BATCH``
    rows and their JSON are in memory at a time.
    """
    params: dict[str, Any] = {"v": version.id}
    where = ["u.version_id = :v"]
    if ids is not None:
        binds = ", ".join(f":i{n}" for n in range(len(ids))) or "NULL"
        where.append(f"u.unit_key IN ({binds})")
        params |= {f"i{n}": i for n, i in enumerate(ids)}
    else:
        where.append("u.validation_status <> 'rejected'")
    if paths is not None:
        parts = []
        for n, path in enumerate(paths):
            params[f"lo{n}"], params[f"hi{n}"] = path, path[:-1] + "0"
            parts.append(f"(u.path >= :lo{n} AND u.path < :hi{n})")
        where.append("(" + (" OR ".join(parts) or "1 = 0") + ")")
    cond = " AND ".join(where)
    with reg.read() as conn:
        stamp_row = conn.execute(
            text("SELECT created_at, published_at FROM source_version WHERE fid = :v"),
            {"v": version.id}).one()
        stamp = _epoch(stamp_row[1] or stamp_row[0])
        head: dict[str, Any] = {}
        sql = _org_unit_sql(reg, shapes, cond)
        if limit is not None and ids is None:
            assert page is not None
            count = int(conn.execute(text(f"SELECT count(*) FROM org_unit u WHERE {cond}"),
                                     params).scalar_one())
            pages = max(1, -(-count // limit))
            head = {"count": count, "has_next": page < pages, "has_previous": page > 1,
                    "page": page, "pages": pages, "limit": limit}
            sql += " LIMIT :lim OFFSET :off"
            params |= {"lim": limit, "off": (page - 1) * limit}
        tail = dict(head)
        if roots is not None and (page in (None, 1)) and ids is None:
            tail["roots"] = roots
        yield b'{"orgUnits": ['
        result = conn.execution_options(stream_results=True, yield_per=BATCH).execute(
            text(sql), params)
        first = True
        while True:
            rows = result.fetchmany(BATCH)
            if not rows:
                break
            chunk = json.dumps(_items(reg, conn, version, rows, paths, stamp, shapes),
                               ensure_ascii=False)[1:-1]
            if chunk:
                yield (b"" if first else b", ") + chunk.encode("utf-8")
                first = False
        result.close()
        rest = json.dumps(tail, ensure_ascii=False)[1:-1]
        yield b"]" + ((b", " + rest.encode("utf-8")) if rest else b"") + b"}"


def _app_id(request: Request) -> str | None:
    return request.args.get("app_id") or None


def _int_list(raw: str, name: str) -> list[int]:
    try:
        ids = [int(p) for p in raw.split(",") if p.strip()]
    except ValueError:
        ids = [-1]
    if not ids or len(ids) > 10_000 or not all(0 <= i < 2**53 for i in ids):
        raise InvalidInput(f"Query parameter {name!r} must be comma-separated ids.",
                           parameter=name)
    return ids


def _positive(request: Request, name: str) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1 or value > 10**9:
        raise InvalidInput(f"Query parameter {name!r} must be a positive whole number.",
                           parameter=name)
    return value


def org_units_handler(request: Request, ctx: Any) -> Response:
    user = glue.mobile_user(request, ctx, _app_id(request))
    reg = glue.registry(ctx)
    shapes = request.args.get("shapes", "").lower() == "true"
    limit = _positive(request, "limit")
    page = _positive(request, "page") or 1
    if shapes and limit is not None:
        limit = min(limit, SHAPES_MAX)
    ids = _int_list(request.args["ids"], "ids") if request.args.get("ids") else None
    with reg.read() as conn:
        version = glue.mobile_version(conn, ctx, _app_id(request))
        paths = glue.user_paths(conn, user, version)
        roots = glue.user_root_keys(conn, user, version)
        if ids is not None:
            # a unit outside the user's area is "not found" like one that does not exist,
            # so the answer does not tell a collector which ids exist elsewhere
            params: dict[str, Any] = {"v": version.id}
            area = ""
            if paths is not None:
                area = " AND (" + (" OR ".join(
                    f"(path >= :lo{n} AND path < :hi{n})" for n in range(len(paths)))
                    or "1 = 0") + ")"
                for n, path in enumerate(paths):
                    params[f"lo{n}"], params[f"hi{n}"] = path, path[:-1] + "0"
            found = conn.execute(
                text("SELECT count(*) FROM org_unit WHERE version_id = :v AND unit_key IN ("
                     + (", ".join(str(i) for i in ids) or "NULL") + ")" + area),
                params).scalar_one()
            if found != len(set(ids)):
                raise NotFound("One or more IDs were not found.", parameter="ids")
    body = stream_org_units(reg, version, paths=paths, shapes=shapes,
                            page=page if limit else None, limit=limit, roots=roots, ids=ids)
    return Response(body, status=200, content_type="application/json", direct_passthrough=True)


def org_unit_types_handler(request: Request, ctx: Any) -> Response:
    glue.mobile_user(request, ctx, _app_id(request))
    reg = glue.registry(ctx)
    project = glue.project_dict(ctx, _app_id(request))
    with reg.read() as conn:
        rows = conn.execute(
            text("SELECT fid, name, short_name, depth FROM org_unit_type ORDER BY depth, name")
        ).all()
    short = [{"id": r.fid, "name": r.name, "short_name": r.short_name or r.name,
              "depth": r.depth, "created_at": None, "updated_at": None} for r in rows]
    types = []
    for r, s in zip(rows, short, strict=True):
        subs = [t for t, row in zip(short, rows, strict=True)
                if r.depth is not None and row.depth == r.depth + 1]
        types.append(s | {"projects": [project] if project else [], "sub_unit_types": subs})
    return json_response({"orgUnitTypes": types})


def groups_handler(request: Request, ctx: Any) -> Response:
    glue.mobile_user(request, ctx, _app_id(request))
    reg = glue.registry(ctx)
    with reg.read() as conn:
        version = glue.mobile_version(conn, ctx, _app_id(request))
        rows = conn.execute(
            text("SELECT group_key, name FROM org_unit_group WHERE version_id = :v "
                 "ORDER BY name"), {"v": version.id}).all()
    return json_response([{"id": int(r[0]), "name": r[1], "erased": False} for r in rows])


# --- authentication -------------------------------------------------------------------


def token_handler(request: Request, ctx: Any) -> Response:
    body = _body_object(request)
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not isinstance(password, str):
        return json_response({"username": ["This field is required."],
                              "password": ["This field is required."]}, 400)
    user = glue.check_password(ctx, username, password)
    if user is None:
        return json_response(
            {"detail": "No active account found with the given credentials"}, 401)
    return json_response(issue_pair(glue.user_name(user), glue.signing_key(ctx)))


def refresh_handler(request: Request, ctx: Any) -> Response:
    body = _body_object(request)
    try:
        claims = decode(str(body.get("refresh") or ""), glue.signing_key(ctx),
                        token_type="refresh")
    except InvalidToken:
        return json_response({"detail": "Token is invalid or expired",
                              "code": "token_not_valid"}, 401)
    if glue.find_user(ctx, str(claims.get("username"))) is None:
        return json_response({"detail": "User not found", "code": "user_not_found"}, 401)
    pair = issue_pair(str(claims["username"]), glue.signing_key(ctx))
    return json_response({"access": pair["access"]})


def _body_object(request: Request) -> dict[str, Any]:
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return dict(request.form.items())
    body = read_json(request, default={})
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    return body


def _body_list(request: Request) -> list[Any]:
    body = read_json(request, default=[])
    if isinstance(body, dict):
        body = [body]
    if not isinstance(body, list):
        raise InvalidInput("The body must be a JSON list.")
    return body


# --- units made on the phone, change requests ---------------------------------------


def _unit_uuid(conn: Connection, version: VersionRef, value: Any, what: str) -> str | None:
    """An Iaso id (our unit_key) or a uuid → the unit's uuid (pending new units included)."""
    if value in (None, ""):
        return None
    raw = str(value).strip()
    if raw.isdigit() and len(raw) <= 15:
        row = conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v AND unit_key = :k"),
            {"v": version.id, "k": int(raw)}).first()
        if row is None:
            raise InvalidInput(f"{what}: no org unit with id {raw} in {version.label}.")
        return str(row[0])
    row = conn.execute(
        text("SELECT uuid FROM org_unit WHERE version_id = :v AND (uuid = :r OR source_ref = :r) "
             "ORDER BY CASE WHEN uuid = :r THEN 0 ELSE 1 END LIMIT 1"),
        {"v": version.id, "r": raw}).first()
    return str(row[0]) if row is not None else raw  # else: a unit still waiting for review


def _location(item: dict[str, Any], what: str) -> list[float] | None:
    lat, lon = item.get("latitude"), item.get("longitude")
    if lat in (None, "") or lon in (None, ""):
        return None
    try:
        return [float(lon), float(lat)]
    except (TypeError, ValueError):
        raise InvalidInput(f"{what}: latitude/longitude must be numbers.") from None


def _type_ref(item: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if item.get(key) not in (None, ""):
            return item[key]
    return None


def create_phone_units(reg: Registry, ctx: Any, user: Any, app_id: str | None,
                       items: list[Any], first: int = 1) -> list[dict[str, Any]]:
    """``POST /api/mobile/orgunits/``: each new unit → a creation request (parents first);
    ``first`` numbers the items in messages (the bulk upload sends them one by one)."""
    def created(item: Any) -> float:
        try:
            return float(item.get("created_at") or 0)
        except (TypeError, ValueError, AttributeError):
            return 0.0

    out = []
    for n, item in enumerate(sorted(items, key=created)):
        what = f"org unit #{n + first}"
        if not isinstance(item, dict) or not item.get("id"):
            raise InvalidInput(f"{what}: each org unit needs its 'id' (the phone's uuid).")
        with reg.read() as conn:
            version = glue.mobile_version(conn, ctx, app_id)
            parent = _unit_uuid(conn, version, _type_ref(item, "parentId", "parent_id"), what)
            exists = conn.execute(
                text("SELECT unit_key, name FROM org_unit WHERE version_id = :v AND uuid = :u"),
                {"v": version.id, "u": str(item["id"])}).first()
        if exists is not None:  # Iaso: a known uuid is skipped
            continue
        glue.check_in_area(reg, user, version, parent, what)
        values: dict[str, Any] = {"name": item.get("name"), "parent": parent,
                                  "type": _type_ref(item, "orgUnitTypeId", "org_unit_type_id")}
        loc = _location(item, what)
        if loc is not None:
            values["location"] = loc
        request = cr.create_change_request(
            reg, version.source_id, number=version.number, new_unit_uuid=str(item["id"]),
            values=values, location_accuracy=_float(item.get("accuracy")),
            created_by=glue.user_name(user), device=glue.device(ctx),
        )
        out.append(_phone_unit(request, item))
    return out


def _float(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _phone_unit(request: dict[str, Any], item: dict[str, Any]) -> dict[str, Any]:
    """Iaso answers with ``OrgUnit.as_dict()``; ours is the pending unit's view."""
    loc = request["new"].get("location")
    return {
        "id": None, "uuid": request["unit_uuid"], "name": request["new"].get("name"),
        "short_name": request["new"].get("name"), "validation_status": "NEW",
        "parent_id": item.get("parentId") or item.get("parent_id"),
        "org_unit_type_id": request.get("new_type_id"),
        "latitude": loc[1] if loc else None, "longitude": loc[0] if loc else None,
        "altitude": _float(item.get("altitude")), "created_at": item.get("created_at"),
        "updated_at": item.get("updated_at"), "change_request_id": request["id"],
    }


def mobile_org_units_post(request: Request, ctx: Any) -> Response:
    user = glue.mobile_user(request, ctx, _app_id(request), write=True)
    items = _body_list(request)
    return json_response(create_phone_units(glue.registry(ctx), ctx, user, _app_id(request),
                                            items))


_CR_FIELDS = {
    "new_name": "name", "new_parent_id": "parent", "new_org_unit_type_id": "type",
    "new_code": "code", "new_opening_date": "opening_date", "new_closed_date": "closed_date",
    "new_location": "location", "new_groups": "groups",
}


def create_phone_change(reg: Registry, ctx: Any, user: Any, app_id: str | None,
                        body: dict[str, Any]) -> dict[str, Any]:
    """``POST /api/orgunits/changes/``: Iaso's write serializer → a change request."""
    what = "change request"
    uuid = body.get("uuid")
    if not body.get("org_unit_id"):
        raise InvalidInput(f"{what}: 'org_unit_id' is required.", field="org_unit_id")
    with reg.read() as conn:
        version = glue.mobile_version(conn, ctx, app_id)
        if uuid:
            done = conn.execute(text("SELECT fid, created_by FROM change_request "
                                     "WHERE uuid = :u"), {"u": str(uuid)}).first()
            if done is not None:
                # Iaso: the same uuid again is a no-op — but only for the user who sent
                # it: anyone else gets neither that request (another area's) nor a
                # success for a request of theirs that would not be stored
                if done[1] != glue.user_name(user):
                    raise ConflictError(
                        f"{what}: the uuid {uuid} is already used by another user's change "
                        "request; nothing was stored. Send the request with a new uuid.",
                        field="uuid")
                return cr.get_change_request(reg, int(done[0])) | {"created": False}
        unit = _unit_uuid(conn, version, body["org_unit_id"], what)
        values: dict[str, Any] = {}
        for key, field in _CR_FIELDS.items():
            if key not in body:
                continue
            value = body[key]
            if field == "parent":
                value = _unit_uuid(conn, version, value, what)
            elif field == "location" and value is not None:
                if not isinstance(value, dict):
                    raise InvalidInput(f"{what}: 'new_location' must be "
                                       "{latitude, longitude, altitude}.", field="new_location")
            elif field == "groups" and value is not None and not isinstance(value, list):
                raise InvalidInput(f"{what}: 'new_groups' must be a list of group ids.",
                                   field="new_groups")
            if value is None and field in ("name", "location", "groups"):
                continue
            values[field] = value
    glue.check_in_area(reg, user, version, unit, what)
    if "parent" in values:
        check_new_parent(reg, user, version, values["parent"], what)
    return cr.create_change_request(
        reg, version.source_id, number=version.number, unit=unit, values=values,
        uuid=str(uuid) if uuid else None,
        location_accuracy=_float(body.get("new_location_accuracy")),
        created_by=glue.user_name(user), device=glue.device(ctx))


def check_new_parent(reg: Registry, user: Any, version: VersionRef, parent: str | None,
                     what: str) -> None:
    """A move must stay inside the user's area: the proposed parent is checked like the
    unit, else a collector could send a unit of their area into another one (and a
    reviewer of their area approve it).  Moving to the top level leaves every area."""
    with reg.read() as conn:
        if glue.user_paths(conn, user, version) is None:
            return
        name = conn.execute(text("SELECT name FROM org_unit WHERE version_id = :v AND "
                                 "uuid = :u"), {"v": version.id, "u": parent}).scalar()
    if parent is None:
        raise auth.Forbidden(f"{what}: a unit cannot be moved to the top level, outside "
                             "your area; give a new parent inside your area.")
    try:
        glue.check_in_area(reg, user, version, parent, what)
    except auth.Forbidden:
        raise auth.Forbidden(
            f"{what}: the new parent {name or parent!r} is outside your area; you can only "
            "move a unit under a parent inside your area.", field="new_parent_id") from None


def changes_post(request: Request, ctx: Any) -> Response:
    user = glue.mobile_user(request, ctx, _app_id(request), write=True)
    body = _body_object(request)
    made = create_phone_change(glue.registry(ctx), ctx, user, _app_id(request), body)
    return json_response(mobile_change(glue.registry(ctx), made), 201 if made["created"] else 200)


def mobile_change(reg: Registry, d: dict[str, Any]) -> dict[str, Any]:
    """Iaso's ``MobileOrgUnitChangeRequestListSerializer`` shape."""
    with reg.read() as conn:
        def key(uuid: str | None) -> int | None:
            if not uuid:
                return None
            return conn.execute(
                text("SELECT unit_key FROM org_unit WHERE version_id = :v AND uuid = :u"),
                {"v": d["version_id"], "u": uuid}).scalar()

        loc = d["new"].get("location")
        return {
            "id": d["id"], "uuid": d["uuid"], "org_unit_id": key(d["unit_uuid"]),
            "org_unit_uuid": d["unit_uuid"], "status": d["status"],
            "approved_fields": ["new_" + f for f in d["approved_fields"]],
            "rejection_comment": d["rejection_comment"], "created_at": _epoch(d["created_at"]),
            "updated_at": _epoch(d["reviewed_at"] or d["created_at"]),
            "new_parent_id": key(d["new"].get("parent")),
            "new_name": d["new"].get("name"), "new_org_unit_type_id": d.get("new_type_id")
            if "type" in d["requested_fields"] else None,
            "new_groups": d["new_group_keys"] if "groups" in d["requested_fields"] else [],
            "new_location": {"latitude": loc[1], "longitude": loc[0], "altitude": 0}
            if loc else None,
            "new_accuracy": d["location_accuracy"], "new_reference_instances": [],
        }


def changes_get(request: Request, ctx: Any) -> Response:
    user = glue.mobile_user(request, ctx, _app_id(request))
    reg = glue.registry(ctx)
    since = request.args.get("last_sync")
    if since:
        try:
            parsed = dt.datetime.fromisoformat(since.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidInput("Query parameter 'last_sync' must be an ISO date-time.",
                               parameter="last_sync") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        since = parsed.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    data = cr.list_change_requests(reg, created_by=glue.user_name(user), since=since)
    return json_response([mobile_change(reg, d) for d in data["results"]])


# --- forms --------------------------------------------------------------------------------


def forms_handler(request: Request, ctx: Any) -> Response:
    glue.mobile_user(request, ctx, _app_id(request))
    forms = glue.iaso_forms(ctx, request, _app_id(request))
    return json_response({"forms": forms})


def xform_handler(request: Request, ctx: Any, version: int) -> Response:
    """The XForm of a form version (``latest_form_version.file`` points here)."""
    glue.require_user(request, ctx)
    return Response(glue.xform_bytes(ctx, version), content_type="text/xml; charset=utf-8")


def form_versions_handler(request: Request, ctx: Any) -> Response:
    glue.mobile_user(request, ctx, _app_id(request))
    form_id = request.args.get("form_id")
    versions = glue.iaso_form_versions(ctx, request, _app_id(request), form_id)
    return json_response({"form_versions": versions})


# --- submissions -----------------------------------------------------------------------------


def instances_post(request: Request, ctx: Any) -> Response:
    """Call (a): the metadata list. Paired with the XML by the file's base name."""
    user = glue.mobile_user(request, ctx, _app_id(request), write=True)
    items = _body_list(request)
    for n, item in enumerate(items):
        if not isinstance(item, dict) or not item.get("file"):
            raise InvalidInput(f"instance #{n + 1}: 'file' (the XML's path on the phone) "
                               "is required.")
    refused: list[dict[str, Any]] = []
    for n, item in enumerate(items):
        try:  # each item on its own, as in the bulk upload
            glue.iaso_instance_metadata(ctx, user, _app_id(request), item)
        except GeoregError as error:
            if len(items) == 1:
                raise  # one item: its own error and status
            refused.append(_refusal("instance", n + 1, item.get("id"), error))
    if refused:
        raise PartlyRefused(refused, {"instances": len(items) - len(refused)}, "the list")
    return json_response({"res": "ok"})


def _refusal(kind: str, n: int, ident: Any, error: GeoregError) -> dict[str, Any]:
    """One refused item of an upload, as listed in a ``partly_refused`` answer."""
    return {"kind": kind, "index": n, "id": None if ident in (None, "") else str(ident),
            "status": error.http_status, "error": error.code, "message": error.message}


def form_upload_post(request: Request, ctx: Any) -> Response:
    """Call (b): multipart with ``xml_submission_file`` and the attachments."""
    user = glue.mobile_user(request, ctx, _app_id(request), write=True)
    glue.iaso_form_upload(ctx, user, request)
    return json_response({"result": "success"}, 201)


# --- bulk upload ------------------------------------------------------------------------------

BULK_MAX_FILES = 10_000
_CHUNK = 1024 * 1024


class ZipTooLarge(InvalidInput):
    """A bulk zip that unpacks to more than the server accepts in one request."""

    code = "too_large"
    http_status = 413


def _corrupt() -> InvalidInput:
    return InvalidInput("zip_file: the zip file is corrupt (a file in it fails its "
                        "checksum or cannot be unpacked); nothing was stored. Send it again.",
                        field="zip_file")


def _check_zip(archive: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limit: int) -> None:
    """Refuse, before anything is stored, a zip that unpacks to more than ``limit`` bytes
    in all (so also per file) or that is damaged.  The sizes the zip declares are checked
    first (a zip bomb is refused without unpacking it); then every file is unpacked once,
    in chunks and without keeping it, counting the bytes really produced and checking
    each file's CRC — a corrupt file found halfway would otherwise leave the zip half
    stored."""
    def too_large(size: str) -> ZipTooLarge:
        return ZipTooLarge(
            f"zip_file unpacks to {size}, more than this server accepts in one request "
            f"({limit} bytes, serve --max-body-mb); nothing was stored. Send the "
            "submissions in smaller zips.", field="zip_file", limit=limit)

    if len(infos) > BULK_MAX_FILES:
        raise InvalidInput(f"zip_file holds {len(infos)} files; at most {BULK_MAX_FILES} "
                           "are accepted in one zip.", field="zip_file")
    declared = sum(i.file_size for i in infos)
    if declared > limit:
        raise too_large(f"{declared} bytes")
    total = 0
    for info in infos:
        try:
            with archive.open(info) as member:
                while chunk := member.read(_CHUNK):
                    total += len(chunk)
                    if total > limit:
                        raise too_large(f"more than {limit} bytes")
        except ZipTooLarge:
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError):
            raise _corrupt() from None
        except (NotImplementedError, RuntimeError):  # another compression, or encrypted
            raise InvalidInput(f"zip_file: {info.filename!r} is encrypted or compressed in "
                               "a way this server does not read (use plain deflate).",
                               field="zip_file") from None


def process_bulk_zip(ctx: Any, user: Any, app_id: str | None, data: bytes) -> dict[str, Any]:
    """The zip of ``orgUnits.json``, ``instances.json``, ``changeRequests.json`` and one
    folder per instance (``<uuid>/<file>.xml`` + attachments), in Iaso's order.

    The zip may unpack to at most the server's body limit (``--max-body-mb``): the same
    as the same submissions sent one by one may weigh, and what bounds the memory of a
    request.  A zip over it (413) or damaged (400) is refused before anything is stored;
    so is one whose JSON lists are not valid.  Past those checks each item is stored on
    its own; the refused ones are collected in ``summary["refused"]`` (kind, position,
    id, status, reason) — one unit outside the area used to abort the loop and leave every
    later instance and change request of the zip unstored, on every resend."""
    reg = glue.registry(ctx)
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise InvalidInput("zip_file is not a zip archive.", field="zip_file") from None
    infos = [i for i in archive.infolist() if not i.is_dir()]
    _check_zip(archive, infos, ctx.settings.max_body)
    names = {_clean(i.filename): i for i in infos}

    def load(name: str) -> list[Any]:
        info = names.get(name)
        if info is None:
            return []
        try:
            value = json.loads(archive.read(info))
        except (ValueError, UnicodeDecodeError):
            raise InvalidInput(f"{name} in the zip is not valid JSON.", field="zip_file") from None
        if not isinstance(value, list):
            raise InvalidInput(f"{name} in the zip must be a JSON list.", field="zip_file")
        return value

    org_units, instances = load("orgUnits.json"), load("instances.json")
    changes = load("changeRequests.json")
    for item in instances:
        if not isinstance(item, dict) or not item.get("id") or not item.get("file"):
            raise InvalidInput("instances.json: each instance needs 'id' and 'file'.",
                               field="zip_file")
    if not all(isinstance(body, dict) for body in changes):
        raise InvalidInput("changeRequests.json: each item must be an object.",
                           field="zip_file")
    summary: dict[str, Any] = {"org_units": 0, "instances": 0, "change_requests": 0,
                               "refused": []}
    refused: list[dict[str, Any]] = summary["refused"]

    def refuse(kind: str, n: int, ident: Any, error: GeoregError) -> None:
        refused.append(_refusal(kind, n, ident, error))

    def created(item: Any) -> float:
        try:
            return float(item.get("created_at") or 0)
        except (TypeError, ValueError, AttributeError):
            return 0.0

    # each item in its own transaction, as Iaso: one refused item (a unit outside the
    # area, a reused uuid …) is reported and the others are still stored
    for n, unit in enumerate(sorted(org_units, key=created)):
        try:
            summary["org_units"] += len(create_phone_units(reg, ctx, user, app_id, [unit],
                                                           first=n + 1))
        except GeoregError as error:
            refuse("org_unit", n + 1, unit.get("id") if isinstance(unit, dict) else None,
                   error)
    folders: dict[str, list[tuple[str, zipfile.ZipInfo]]] = {}
    for member, info in names.items():
        path = PurePosixPath(member)
        if len(path.parts) == 2:
            folders.setdefault(path.parent.name, []).append((path.name, info))
    for n, item in enumerate(instances):
        files = {name: archive.read(info) for name, info in folders.get(str(item["id"]), [])}
        xml_name = PurePosixPath(str(item["file"]).replace("\\", "/")).name
        xml = files.pop(xml_name, None)
        try:
            # the metadata first: a refused unit stores nothing of the instance (not an
            # XML without its unit, which its area's reviewers could not see)
            glue.iaso_instance_metadata(ctx, user, app_id, item)
            if xml is None:
                continue
            glue.iaso_store_xml(ctx, user, xml_name, xml, files)
        except GeoregError as error:
            refuse("instance", n + 1, item["id"], error)
            continue
        summary["instances"] += 1
    for n, body in enumerate(changes):
        try:
            create_phone_change(reg, ctx, user, app_id, body)
        except GeoregError as error:
            refuse("change_request", n + 1, body.get("uuid"), error)
            continue
        summary["change_requests"] += 1
    return summary


class PartlyRefused(GeoregError):
    """Some items of an upload (a bulk zip, a metadata list) were refused; every other
    item was stored.

    The answer is not a 2xx, so the app keeps the data (and its user sees the reasons)
    rather than marking refused items as sent; sending it again is harmless — what was
    stored is recognised and not stored twice."""

    code = "partly_refused"

    def __init__(self, refused: list[dict[str, Any]], stored: dict[str, int],
                 where: str) -> None:
        statuses = {r["status"] for r in refused}
        self.http_status = statuses.pop() if len(statuses) == 1 else 400
        first = refused[0]
        done = ", ".join(f"{count} {name.replace('_', ' ')}(s)" for name, count in stored.items())
        super().__init__(
            f"{len(refused)} item(s) of {where} were refused, the rest was stored ({done}). "
            f"First: {first['kind'].replace('_', ' ')} "
            f"{first['id'] or '#' + str(first['index'])}: {first['message']}",
            refused=refused, stored=stored)


def _clean(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts)


def bulk_upload_post(request: Request, ctx: Any) -> Response:
    user = glue.mobile_user(request, ctx, _app_id(request), write=True)
    upload = request.files.get("zip_file")
    if upload is None:
        raise InvalidInput("The multipart field 'zip_file' is missing.", field="zip_file")
    data = upload.read()  # the request body is already bounded by --max-body-mb
    summary = process_bulk_zip(ctx, user, _app_id(request), data)
    if summary["refused"]:
        raise PartlyRefused(summary["refused"], {k: summary[k] for k in (
            "org_units", "instances", "change_requests")}, "the zip")
    return Response(status=204)


def rules() -> list[Rule]:
    w = glue.wrap
    return [
        Rule("/api/token/", endpoint=w(token_handler), methods=["POST"]),
        Rule("/api/token/refresh/", endpoint=w(refresh_handler), methods=["POST"]),
        Rule("/api/mobile/orgunits/", endpoint=w(org_units_handler), methods=["GET"]),
        Rule("/api/mobile/orgunits/", endpoint=w(mobile_org_units_post), methods=["POST"]),
        Rule("/api/mobile/forms/", endpoint=w(forms_handler), methods=["GET"]),
        Rule("/api/formversions/", endpoint=w(form_versions_handler), methods=["GET"]),
        Rule("/api/formversions/<int(max=999999999999):version>/form.xml",
             endpoint=w(xform_handler), methods=["GET"]),
        Rule("/api/orgunittypes/", endpoint=w(org_unit_types_handler), methods=["GET"]),
        Rule("/api/mobile/groups/", endpoint=w(groups_handler), methods=["GET"]),
        Rule("/api/instances/", endpoint=w(instances_post), methods=["POST"]),
        Rule("/sync/form_upload/", endpoint=w(form_upload_post), methods=["POST"]),
        Rule("/api/orgunits/changes/", endpoint=w(changes_post), methods=["POST"]),
        Rule("/api/mobile/orgunits/changes/", endpoint=w(changes_get), methods=["GET"]),
        Rule("/api/mobile/bulkupload/", endpoint=w(bulk_upload_post), methods=["POST"]),
    ]

