"""Change requests from the field: proposed creations and corrections of units, reviewed
field by field (Iaso's OrgUnitChangeRequest).

A request names a version (the one the phone saw), a unit (by its stable uuid) and the
fields it wants changed, with the proposed ``new`` values and a snapshot of the ``old``
ones taken when it arrived.  A reviewer approves some or all of the requested fields or
rejects the request with a comment.  Approval applies the approved fields to a **draft**
version (the request's own version when it is a draft, else the source's newest draft),
in one write transaction with origin ``field`` and the reviewer as author, so the change
log says who accepted what.

A unit created on a phone is not written into the registry when it arrives: it becomes a
``creation`` request holding the proposed unit (with the phone's uuid, so submissions
already tied to it find it later).  Approving it creates the unit with validation status
``new``.  Requests are idempotent by uuid: the same uuid posted twice is one request.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid as uuidlib
from collections.abc import Iterable
from typing import Any

import shapely
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, bindparam, text

from storage import geometry
from storage.bulk import parse_date
from storage.errors import ConflictError, CycleError, InvalidInput, NotFound, PublishedVersionError
from storage.registry import Registry, json_value
from storage.units import (
    _check_dates,
    _check_point,
    check_territory,
    find_unit,
    set_territory,
    unit_group_names,
    unit_territory,
)
from storage.versions import VersionRef, resolve_version, version_by_id

#: Fields a request may change, in display order.
FIELDS = (
    "name",
    "parent",
    "type",
    "code",
    "opening_date",
    "closed_date",
    "location",
    "territory",
    "groups",
)
STATUSES = ("new", "approved", "rejected")
KINDS = ("creation", "change")
ORIGIN = "field"
_NAMESPACE = uuidlib.UUID("6f1c0b7e-3d7a-4c53-9a0e-1f0d5b2a9c41")

_COLUMNS = (
    "fid, uuid, version_id, unit_uuid, kind, status, requested_fields, approved_fields, "
    "new_parent_uuid, new_name, new_type_id, new_code, new_opening_date, new_closed_date, "
    "new_groups, new_location_wkb, new_location_accuracy, new_territory_wkb, old_values, "
    "device, created_by, created_at, reviewed_by, reviewed_at, rejection_comment"
)


def now_text() -> str:
    """The registry's timestamp format: ISO-8601 UTC with milliseconds and ``Z``."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def creation_request_uuid(unit_uuid: str) -> str:
    """The uuid of the creation request of a phone-made unit: stable, so re-posts are no-ops."""
    return str(uuidlib.uuid5(_NAMESPACE, f"creation:{unit_uuid}"))


def normalise_fields(fields: Iterable[str] | None, where: str) -> list[str] | None:
    """``name,new_location`` → ``["name", "location"]`` (Iaso's ``new_`` prefix accepted)."""
    if fields is None:
        return None
    out: list[str] = []
    for raw in fields:
        name = str(raw).strip()
        if not name:
            continue
        if name.startswith("new_"):
            name = name[4:]
        if name in ("org_unit_type", "org_unit_type_id", "type_id"):
            name = "type"
        if name in ("parent_id", "parent_uuid"):
            name = "parent"
        if name in ("geom", "geometry"):
            name = "territory"
        if name not in FIELDS:
            raise InvalidInput(
                f"{where}: unknown field {raw!r}; fields are {', '.join(FIELDS)}."
            )
        if name not in out:
            out.append(name)
    return out


# --- reading ---------------------------------------------------------------------------


def _date_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)[:10]


def _point_value(geom: BaseGeometry | None) -> list[float] | None:
    if geom is None or geom.is_empty:
        return None
    return [geom.x, geom.y]


def _group_names(conn: Connection, version_id: int, keys: list[int]) -> list[str]:
    if not keys:
        return []
    binds = ", ".join(f":k{i}" for i in range(len(keys)))
    rows = conn.execute(
        text(
            f"SELECT group_key, name FROM org_unit_group WHERE version_id = :v "
            f"AND group_key IN ({binds})"
        ),
        {"v": version_id} | {f"k{i}": k for i, k in enumerate(keys)},
    ).all()
    names = {int(r[0]): r[1] for r in rows}
    return [names.get(int(k), f"group {k}") for k in keys]


def _unit_name(conn: Connection, version_id: int, unit_uuid: str | None) -> str | None:
    if not unit_uuid:
        return None
    return conn.execute(
        text("SELECT name FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": version_id, "u": unit_uuid},
    ).scalar()


def _deleted_version_label(conn: Connection, version_id: int) -> tuple[str, str | None]:
    """(label, source) of a version deleted since the request arrived, e.g. ``("SL v2
    (deleted)", "SL")``: from the change log's ``delete`` entry (which names the source
    since requests could outlive their version), else ``("(deleted version)", None)``."""
    after = conn.execute(
        text("SELECT after FROM change_log WHERE version_id = :v AND entity = 'version' "
             "AND op = 'delete' ORDER BY fid DESC LIMIT 1"),
        {"v": version_id},
    ).scalar()
    info = json_value(after) if after is not None else None
    if isinstance(info, dict) and info.get("source") and info.get("number") is not None:
        return f"{info['source']} v{info['number']} (deleted)", str(info["source"])
    return "(deleted version)", None


def _request_version(conn: Connection, row: Any) -> VersionRef | None:
    """The request's version, or None when it was deleted after the request arrived
    (a request must stay listable and rejectable then: see ``delete_version``)."""
    try:
        return version_by_id(conn, row.version_id)
    except NotFound:
        return None


def _request_dict(conn: Connection, row: Any) -> dict[str, Any]:
    version = _request_version(conn, row)
    source: str | None
    if version is not None:
        label, source = version.label, version.source
    else:
        label, source = _deleted_version_label(conn, int(row.version_id))
    type_name = None
    if row.new_type_id is not None:
        type_name = conn.execute(
            text("SELECT name FROM org_unit_type WHERE fid = :t"), {"t": row.new_type_id}
        ).scalar()
    new_groups = [int(k) for k in (json_value(row.new_groups) or [])]
    location = geometry.from_wkb(row.new_location_wkb) if row.new_location_wkb else None
    territory = geometry.from_wkb(row.new_territory_wkb) if row.new_territory_wkb else None
    requested = list(json_value(row.requested_fields) or [])
    new_all: dict[str, Any] = {
        "name": row.new_name,
        "parent": row.new_parent_uuid,
        "type": type_name,
        "code": row.new_code,
        "opening_date": _date_text(row.new_opening_date),
        "closed_date": _date_text(row.new_closed_date),
        "location": _point_value(location),
        "territory": territory.wkt if territory is not None else None,
        "groups": _group_names(conn, row.version_id, new_groups),
    }
    name = row.new_name if row.kind == "creation" else _unit_name(conn, row.version_id, row.unit_uuid)
    return {
        "id": int(row.fid),
        "uuid": row.uuid,
        "kind": row.kind,
        "status": row.status,
        "version": label,
        "version_id": int(row.version_id),
        "version_deleted": version is None,
        "source": source,
        "unit_uuid": row.unit_uuid,
        "unit_name": name,
        "requested_fields": requested,
        "approved_fields": list(json_value(row.approved_fields) or []),
        "new": {f: new_all[f] for f in requested},
        "old": json_value(row.old_values) or {},
        "new_parent_name": _unit_name(conn, row.version_id, row.new_parent_uuid),
        "new_type_id": row.new_type_id,
        "new_group_keys": new_groups,
        "location_accuracy": row.new_location_accuracy,
        "device": row.device,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "reviewed_by": row.reviewed_by,
        "reviewed_at": row.reviewed_at,
        "rejection_comment": row.rejection_comment,
    }


def _row(conn: Connection, ident: int | str) -> Any:
    ident_text = str(ident).strip()
    if _small_int(ident_text):
        row = conn.execute(
            text(f"SELECT {_COLUMNS} FROM change_request WHERE fid = :f"), {"f": int(ident_text)}
        ).first()
    else:
        row = conn.execute(
            text(f"SELECT {_COLUMNS} FROM change_request WHERE uuid = :u"), {"u": ident_text}
        ).first()
    if row is None:
        raise NotFound(
            f"No change request {ident_text!r}. List them with 'georeg changes REG --status new'."
        )
    return row


def get_change_request(reg: Registry, ident: int | str) -> dict[str, Any]:
    """One request (by number or uuid) with its new and old values, and the current ones."""
    with reg.read() as conn:
        row = _row(conn, ident)
        data = _request_dict(conn, row)
        data["current"] = _current_in_target(reg, conn, row)
        return data


def _current_in_target(reg: Registry, conn: Connection, row: Any) -> dict[str, Any] | None:
    """The unit's present values in the draft an approval would change (None if absent)."""
    version = _request_version(conn, row)
    if version is None:
        return None
    try:
        target = target_draft(conn, version)
    except PublishedVersionError:
        return None
    if not row.unit_uuid:
        return None
    unit = conn.execute(
        text("SELECT fid FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": target.id, "u": row.unit_uuid},
    ).first()
    if unit is None:
        return None
    values = unit_values(reg, conn, int(unit[0]))
    return {"version": target.label} | values


def list_change_requests(
    reg: Registry,
    *,
    status: str | None = None,
    kind: str | None = None,
    source: str | None = None,
    created_by: str | None = None,
    since: str | None = None,
    within_paths: list[tuple[int, str]] | None = None,
    visible_within: list[tuple[int, str]] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> dict[str, Any]:
    """Requests, newest first, filtered; ``{"count": total, "results": [...]}``.

    ``within_paths`` limits to requests whose unit (or, for a creation, whose proposed
    parent) lies under one of the given ``(version_id, path)`` subtrees.
    ``visible_within`` (a restricted user's subtrees) keeps exactly the requests such a
    user may open (:func:`_visible_fids`: also no move out of the area, checked in
    the draft too), so a listing's count and pages agree with what opening each answers.
    """
    where = ["1 = 1"]
    params: dict[str, Any] = {}
    if status is not None:
        if status not in STATUSES:
            raise InvalidInput(f"status must be one of {', '.join(STATUSES)} (got {status!r}).")
        where.append("c.status = :status")
        params["status"] = status
    if kind is not None:
        if kind not in KINDS:
            raise InvalidInput(f"kind must be one of {', '.join(KINDS)} (got {kind!r}).")
        where.append("c.kind = :kind")
        params["kind"] = kind
    if created_by is not None:
        where.append("c.created_by = :by")
        params["by"] = created_by
    if since is not None:
        where.append("(c.created_at > :since OR c.reviewed_at > :since)")
        params["since"] = since
    with reg.read() as conn:
        if source is not None:
            version = resolve_version(conn, source)
            where.append("c.version_id IN (SELECT fid FROM source_version WHERE source_id = :src)")
            params["src"] = version.source_id
        if within_paths is not None:
            clauses = []
            for i, (vid, path) in enumerate(within_paths):
                clauses.append(
                    f"(a.version_id = :wv{i} AND a.path >= :wlo{i} AND a.path < :whi{i})"
                )
                params |= {f"wv{i}": vid, f"wlo{i}": path, f"whi{i}": path[:-1] + "0"}
            where.append(
                "EXISTS (SELECT 1 FROM org_unit a WHERE a.version_id = c.version_id AND "
                "a.uuid = CASE WHEN c.kind = 'creation' THEN c.new_parent_uuid "
                "ELSE c.unit_uuid END AND (" + (" OR ".join(clauses) or "1 = 0") + "))"
            )
        cond = " AND ".join(where)
        cols = ", ".join(f"c.{c.strip()}" for c in _COLUMNS.split(","))
        if visible_within is not None:  # the area rule, then the page of what remains
            fids = _visible_fids(conn, cond, params, visible_within)
            shown = fids[offset:None if limit is None else offset + int(limit)]
            rows = conn.execute(
                text(f"SELECT {cols} FROM change_request c WHERE c.fid IN :f "
                     "ORDER BY c.fid DESC").bindparams(bindparam("f", expanding=True)),
                {"f": shown}).all() if shown else []
            return {"count": len(fids), "results": [_request_dict(conn, r) for r in rows]}
        total = conn.execute(
            text(f"SELECT count(*) FROM change_request c WHERE {cond}"), params
        ).scalar_one()
        page = ""
        if limit is not None:
            page = " LIMIT :limit OFFSET :offset"
            params |= {"limit": int(limit), "offset": int(offset)}
        rows = conn.execute(
            text(f"SELECT {cols} FROM change_request c WHERE {cond} ORDER BY c.fid DESC{page}"),
            params,
        ).all()
        return {"count": int(total), "results": [_request_dict(conn, r) for r in rows]}


#: How far up a chain of units made on phones (each waiting for review) an area check
#: follows proposed parents (the bound of the server's check of one request).
PENDING_CHAIN_MAX = 100
_LOOKUP_CHUNK = 500


def _visible_fids(conn: Connection, cond: str, params: dict[str, Any],
                  within: list[tuple[int, str]]) -> list[int]:
    """The ids (newest first) of the requests matching ``cond`` that a user restricted
    to the ``(version_id, path)`` subtrees ``within`` may open.  This is the rule the
    server applies to one request (``local_server.rest_api._visible_change``), for a
    whole listing at once; tests check the two agree request by request:

    * the *anchor* — the unit, or for a creation its proposed parent — is inside the
      area in the request's version;
    * a change that moves the unit (requests ``parent``) moves it under a parent inside
      the area (the top level is outside);
    * while the request is ``new``, the same two hold in the draft an approval writes to
      when that is another version (none: nothing to check), except that a unit absent
      from that draft is no objection.

    Why not one SQL condition: the rule follows chains of units made on phones (see
    :func:`_area_verdicts`), which PostgreSQL could only evaluate as a scan of the
    pending requests per request (6–18 s for 10k requests; SQLite managed 0.1–0.2 s).
    Here it costs one query for the requests' few columns, one for the pending
    creations and one indexed lookup per 500 units per version and chain step — 0.1–0.3
    s for 10k requests on either backend, whatever the page — and the count and the
    pages come from the same list.
    """
    rows = conn.execute(text(
        "SELECT c.fid, c.kind, c.status, c.version_id, c.unit_uuid, c.new_parent_uuid, "
        "CASE WHEN CAST(c.requested_fields AS TEXT) LIKE :parent_field THEN 1 ELSE 0 END "
        f"FROM change_request c WHERE {cond} ORDER BY c.fid DESC"),
        params | {"parent_field": '%"parent"%'}).all()
    versions = conn.execute(text("SELECT fid, source_id, status, number FROM source_version")
                            ).all()
    newest: dict[int, tuple[int, int]] = {}  # source -> (number, fid) of its newest draft
    for fid, source_id, status, number in versions:
        if status == "draft":
            newest[source_id] = max(newest.get(source_id, (-1, 0)), (int(number), int(fid)))
    # where an approval writes (as :func:`target_draft`); None: the source has no draft
    target = {int(fid): int(fid) if status == "draft" else
              (newest[source_id][1] if source_id in newest else None)
              for fid, source_id, status, _ in versions}
    checks: list[tuple[int, list[tuple[int, str | None]], list[tuple[int, str | None]]]] = []
    wanted: set[tuple[int, str | None]] = set()
    for fid, kind, status, version_id, unit_uuid, parent, asks_parent in rows:
        creation, moves = kind == "creation", bool(asks_parent) and kind != "creation"
        anchor = (parent if asks_parent else None) if creation else unit_uuid
        must = [(version_id, anchor)] + ([(version_id, parent)] if moves else [])
        may: list[tuple[int, str | None]] = []
        if status == "new":
            if version_id not in target:
                continue  # its version is gone: opening it answers 404
            draft = target[version_id]
            if draft is not None and draft != version_id:
                may = [(draft, anchor)] + ([(draft, parent)] if moves else [])
        checks.append((fid, must, may))
        wanted.update(must + may)
    verdicts = _area_verdicts(conn, within, wanted)
    return [fid for fid, must, may in checks
            if all(verdicts[pair] for pair in must)
            and all(verdicts[pair] is not False for pair in may)]


def _area_verdicts(conn: Connection, within: list[tuple[int, str]],
                   pairs: set[tuple[int, str | None]]) -> dict[tuple[int, str | None], bool | None]:
    """Is each ``(version_id, uuid)`` unit inside the area?  None: the version has no such
    unit.  A unit made on a phone and still waiting for review lies where its creation
    request puts it (its proposed parent, followed up a chain of such units, at most
    :data:`PENDING_CHAIN_MAX` steps): the server's ``local_server.users.in_area`` for
    many units at once, looked up step by step in batches."""
    prefixes: dict[int, list[str]] = {}
    for vid, path in within:
        prefixes.setdefault(vid, []).append(path)
    pending: dict[str, str | None] = {}
    if pairs:
        for unit_uuid, parent in conn.execute(text(
                "SELECT unit_uuid, new_parent_uuid FROM change_request WHERE kind = 'creation' "
                "AND status = 'new' AND unit_uuid IS NOT NULL ORDER BY fid")):
            pending.setdefault(str(unit_uuid), parent)
    out: dict[tuple[int, str | None], bool | None] = {}
    todo: dict[tuple[int, str | None], str | None] = {pair: pair[1] for pair in pairs}
    for _ in range(PENDING_CHAIN_MAX):
        if not todo:
            break
        paths = _unit_paths(conn, {(v, u) for (v, _), u in todo.items() if u is not None})
        later: dict[tuple[int, str | None], str | None] = {}
        for pair, current in todo.items():
            if current is None:
                out[pair] = False
            elif (pair[0], current) in paths:
                path = paths[(pair[0], current)]
                out[pair] = any(path.startswith(p) for p in prefixes.get(pair[0], ()))
            elif current in pending:
                later[pair] = pending[current]
            else:
                out[pair] = None
        todo = later
    out.update(dict.fromkeys(todo, False))  # a chain longer than the bound (a loop)
    return out


def _unit_paths(conn: Connection, units: set[tuple[int, str]]) -> dict[tuple[int, str], str]:
    """The paths of these ``(version_id, uuid)`` units that exist."""
    by_version: dict[int, list[str]] = {}
    for vid, unit_uuid in units:
        by_version.setdefault(vid, []).append(unit_uuid)
    query = text("SELECT uuid, path FROM org_unit WHERE version_id = :v AND uuid IN :u"
                 ).bindparams(bindparam("u", expanding=True))
    out: dict[tuple[int, str], str] = {}
    for vid, uuids in by_version.items():
        for i in range(0, len(uuids), _LOOKUP_CHUNK):
            for unit_uuid, path in conn.execute(
                    query, {"v": vid, "u": uuids[i:i + _LOOKUP_CHUNK]}):
                out[(vid, str(unit_uuid))] = str(path)
    return out


def unit_values(reg: Registry, conn: Connection, fid: int) -> dict[str, Any]:
    """A unit's values in the change-request vocabulary (the ``old`` snapshot)."""
    row = conn.execute(
        text(
            "SELECT u.version_id, u.name, u.code, u.opening_date, u.closed_date, "
            f"{geometry.select_sql(reg.backend, 'u.location')} AS location, "
            "p.uuid AS parent_uuid, t.name AS type_name FROM org_unit u "
            "LEFT JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            "LEFT JOIN org_unit_type t ON t.fid = u.type_id WHERE u.fid = :f"
        ),
        {"f": fid},
    ).one()
    territory = unit_territory(reg, conn, fid)
    groups = unit_group_names(conn, fid)
    return {
        "name": row.name,
        "parent": row.parent_uuid,
        "type": row.type_name,
        "code": row.code,
        "opening_date": _date_text(row.opening_date),
        "closed_date": _date_text(row.closed_date),
        "location": _point_value(geometry.decode(reg.backend, row.location)),
        "territory": territory.wkt if territory is not None else None,
        "groups": groups,
    }


# --- creating --------------------------------------------------------------------------


def _small_int(value: Any) -> bool:
    """An id the database can hold (a longer string of digits is a name or a ref)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**53
    return isinstance(value, str) and value.strip().isdigit() and len(value.strip()) <= 15


def _resolve_type(conn: Connection, value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    if _small_int(value):
        row = conn.execute(
            text("SELECT fid FROM org_unit_type WHERE fid = :t"), {"t": int(value)}
        ).first()
    else:
        row = conn.execute(
            text("SELECT fid FROM org_unit_type WHERE name = :t"), {"t": str(value).strip()}
        ).first()
    if row is None:
        raise InvalidInput(f"{where}: field 'type': no org-unit type {value!r}.")
    return int(row[0])


def _resolve_groups(conn: Connection, version: VersionRef, values: Any, where: str) -> list[int]:
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        raise InvalidInput(f"{where}: field 'groups' must be a list of group ids, refs or names.")
    keys: list[int] = []
    for value in values:
        row = None
        if _small_int(value):
            row = conn.execute(
                text("SELECT group_key FROM org_unit_group WHERE version_id = :v AND group_key = :k"),
                {"v": version.id, "k": int(value)},
            ).first()
        if row is None:
            row = conn.execute(
                text(
                    "SELECT group_key FROM org_unit_group WHERE version_id = :v AND "
                    "(source_ref = :g OR name = :g)"
                ),
                {"v": version.id, "g": str(value)},
            ).first()
        if row is None:
            raise InvalidInput(f"{where}: field 'groups': no group {value!r} in {version.label}.")
        if int(row[0]) not in keys:
            keys.append(int(row[0]))
    return keys


def _pending_creation(conn: Connection, version_id: int, unit_uuid: str) -> Any:
    return conn.execute(
        text(
            "SELECT fid, status FROM change_request WHERE version_id = :v AND unit_uuid = :u "
            "AND kind = 'creation' AND status <> 'rejected'"
        ),
        {"v": version_id, "u": unit_uuid},
    ).first()


def _as_point(value: Any, where: str) -> BaseGeometry | None:
    if value is None:
        return None
    if isinstance(value, BaseGeometry):
        point = value
    elif isinstance(value, dict):
        try:
            point = Point(float(value["longitude"]), float(value["latitude"]))
        except (KeyError, TypeError, ValueError):
            raise InvalidInput(
                f"{where}: field 'location' needs numeric 'latitude' and 'longitude'."
            ) from None
    elif isinstance(value, (list, tuple)) and len(value) >= 2:
        try:
            point = Point(float(value[0]), float(value[1]))
        except (TypeError, ValueError):
            raise InvalidInput(f"{where}: field 'location' must be [longitude, latitude].") from None
    else:
        raise InvalidInput(f"{where}: field 'location' must be [longitude, latitude].")
    if point.has_z:
        point = Point(point.x, point.y)
    _check_point(point, where)
    return point


def _as_territory(value: Any, where: str) -> BaseGeometry | None:
    if value is None:
        return None
    geom: BaseGeometry | None
    if isinstance(value, BaseGeometry):
        geom = value
    elif isinstance(value, dict):
        try:
            geom = geometry.from_geojson(value)
        except Exception as error:  # noqa: BLE001 - any parse failure is bad input
            raise InvalidInput(f"{where}: field 'territory' is not GeoJSON ({error}).") from None
    elif isinstance(value, str):
        try:
            geom = shapely.from_wkt(value)
        except Exception:  # noqa: BLE001
            raise InvalidInput(f"{where}: field 'territory' is not WKT.") from None
    else:
        raise InvalidInput(f"{where}: field 'territory' must be GeoJSON or WKT.")
    if geom is None or geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty:
        raise InvalidInput(f"{where}: field 'territory' must be a polygon or multipolygon.")
    # checked as an import or an edit checks one (degrees); a self-intersecting polygon
    # drawn on a phone is repaired rather than refused: the phone cannot redraw it, and a
    # refused request would be sent again at every sync
    return check_territory(geom, where, fix=True)


def create_change_request(
    reg: Registry,
    source: str | int,
    *,
    unit: str | None = None,
    new_unit_uuid: str | None = None,
    values: dict[str, Any],
    uuid: str | None = None,
    number: int | None = None,
    location_accuracy: float | None = None,
    created_by: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Record a proposed change of ``unit`` (uuid or ref), or a proposed new unit.

    ``values`` maps fields of :data:`FIELDS` to proposed values: ``parent`` a uuid or
    ref, ``type`` a name or id, ``location`` ``[lon, lat]`` / ``{latitude, longitude}`` /
    a point, ``territory`` GeoJSON / WKT, ``groups`` ids, refs or names.  A change
    requests only the fields whose value differs from the unit's; a creation (no
    ``unit``) needs ``name``.  The same ``uuid`` twice returns the first request.
    Returns the request with ``"created": True`` when it is new.
    """
    unknown = set(values) - set(FIELDS)
    kind = "change" if unit else "creation"
    where = f"Change request for {unit!r}" if unit else f"New unit {values.get('name')!r}"
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; fields are "
            f"{', '.join(FIELDS)}."
        )
    if kind == "creation":
        if not str(values.get("name") or "").strip():
            raise InvalidInput(f"{where}: a new unit needs a name (field 'name' is empty).")
        new_unit_uuid = str(new_unit_uuid or uuidlib.uuid4())
        uuid = uuid or creation_request_uuid(new_unit_uuid)
    uuid = str(uuid or uuidlib.uuid4())
    with reg.write(origin=ORIGIN, author=created_by) as conn:
        existing = conn.execute(
            text("SELECT fid FROM change_request WHERE uuid = :u"), {"u": uuid}
        ).first()
        if existing is not None:
            return _request_dict(conn, _row(conn, int(existing[0]))) | {"created": False}
        version = resolve_version(conn, source, number)
        old: dict[str, Any] = {}
        unit_uuid: str
        if kind == "change":
            assert unit is not None
            try:
                handle = find_unit(conn, version, unit)
                unit_uuid = handle.uuid
                old = unit_values(reg, conn, handle.fid)
            except NotFound:
                # a unit made on a phone and still waiting for review
                if _pending_creation(conn, version.id, unit) is None:
                    raise
                unit_uuid = unit
        else:
            assert new_unit_uuid is not None
            unit_uuid = new_unit_uuid
            clash = conn.execute(
                text("SELECT name FROM org_unit WHERE version_id = :v AND uuid = :u"),
                {"v": version.id, "u": unit_uuid},
            ).first()
            if clash is not None:
                raise ConflictError(
                    f"{where}: a unit with uuid {unit_uuid} already exists ({clash[0]!r})."
                )
        cols: dict[str, Any] = {}
        new: dict[str, Any] = {}
        for field in FIELDS:
            if field not in values or (values[field] is None and kind == "creation"):
                continue
            value = values[field]
            if field == "name":
                value = str(value or "").strip()
                if not value:
                    raise InvalidInput(f"{where}: field 'name' cannot be empty.")
                cols["new_name"], new[field] = value, value
            elif field == "parent":
                parent_uuid = None
                if value:
                    try:
                        parent_uuid = find_unit(conn, version, str(value)).uuid
                    except NotFound:
                        if _pending_creation(conn, version.id, str(value)) is None:
                            raise InvalidInput(
                                f"{where}: field 'parent': no unit {value!r} in {version.label}."
                            ) from None
                        parent_uuid = str(value)
                if parent_uuid is not None and parent_uuid == unit_uuid:
                    raise CycleError(f"{where}: a unit cannot be its own parent.")
                cols["new_parent_uuid"], new[field] = parent_uuid, parent_uuid
            elif field == "type":
                type_id = _resolve_type(conn, value, where)
                cols["new_type_id"] = type_id
                new[field] = conn.execute(
                    text("SELECT name FROM org_unit_type WHERE fid = :t"), {"t": type_id}
                ).scalar() if type_id is not None else None
            elif field == "code":
                code = str(value).strip() if value not in (None, "") else None
                cols["new_code"], new[field] = code, code
            elif field in ("opening_date", "closed_date"):
                date = parse_date(value, f"{where}: field '{field}'")
                cols[f"new_{field}"], new[field] = date, date
            elif field == "location":
                point = _as_point(value, where)
                cols["new_location_wkb"] = (
                    shapely.to_wkb(point, byte_order=1, flavor="iso") if point is not None else None
                )
                new[field] = _point_value(point)
            elif field == "territory":
                ter = _as_territory(value, where)
                cols["new_territory_wkb"] = (
                    shapely.to_wkb(ter, byte_order=1, flavor="iso") if ter is not None else None
                )
                new[field] = ter.wkt if ter is not None else None
            elif field == "groups":
                keys = _resolve_groups(conn, version, value, where)
                cols["new_groups"] = json.dumps(keys)
                new[field] = _group_names(conn, version.id, keys)
        if kind == "change" and old:
            requested = [f for f in FIELDS if f in new and not _same(f, new[f], old.get(f))]
        else:
            requested = [f for f in FIELDS if f in new]
        if not requested:
            raise InvalidInput(
                f"{where}: nothing to change (every proposed value equals the current one)."
            )
        cols |= {
            "uuid": uuid,
            "version_id": version.id,
            "unit_uuid": unit_uuid,
            "kind": kind,
            "status": "new",
            "requested_fields": json.dumps(requested),
            "approved_fields": json.dumps([]),
            "new_location_accuracy": location_accuracy,
            "old_values": json.dumps({f: old.get(f) for f in requested} if old else {}),
            "device": device,
            "created_by": created_by,
            "created_at": now_text(),
        }
        names = ", ".join(cols)
        binds = ", ".join(f":{k}" for k in cols)
        if reg.backend.value == "postgis":
            binds = ", ".join(
                f"CAST(:{k} AS jsonb)" if k in ("requested_fields", "approved_fields",
                                                "old_values", "new_groups") else f":{k}"
                for k in cols
            )
        fid = conn.execute(
            text(f"INSERT INTO change_request ({names}) VALUES ({binds}) RETURNING fid"), cols
        ).scalar_one()
        return _request_dict(conn, _row(conn, int(fid))) | {"created": True}


def _same(field: str, new: Any, old: Any) -> bool:
    if field == "location" and new is not None and old is not None:
        return bool(abs(new[0] - old[0]) < 1e-9 and abs(new[1] - old[1]) < 1e-9)
    if field == "groups":
        return sorted(new or []) == sorted(old or [])
    if field == "territory" and new is not None and old is not None:
        return bool(shapely.from_wkt(new).equals(shapely.from_wkt(old)))
    return bool(new == old)


# --- reviewing ---------------------------------------------------------------------------


def target_draft(conn: Connection, version: VersionRef) -> VersionRef:
    """Where an approval lands: the request's version if a draft, else the newest draft."""
    if version.status == "draft":
        return version
    row = conn.execute(
        text(
            "SELECT fid FROM source_version WHERE source_id = :s AND status = 'draft' "
            "ORDER BY number DESC LIMIT 1"
        ),
        {"s": version.source_id},
    ).first()
    if row is None:
        raise PublishedVersionError(
            f"{version.label} is published and {version.source!r} has no draft to apply the "
            f"change to. Make one first: georeg version new REG --source \"{version.source}\" "
            f"--from {version.number}"
        )
    return version_by_id(conn, int(row[0]))


def _require_new(row: Any) -> None:
    if row.status != "new":
        raise ConflictError(
            f"Change request {row.fid} was already {row.status}"
            + (f" by {row.reviewed_by}" if row.reviewed_by else "")
            + "; only new requests can be reviewed."
        )


def approve_change_request(
    reg: Registry,
    ident: int | str,
    *,
    reviewer: str,
    fields: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Apply the approved ``fields`` (default: all requested) to the draft, with audit."""
    if not (reviewer or "").strip():
        raise InvalidInput("A review needs the reviewer's name.")
    with reg.write(origin=ORIGIN, author=reviewer) as conn:
        row = _row(conn, ident)
        where = f"Change request {row.fid}"
        _require_new(row)
        requested = list(json_value(row.requested_fields) or [])
        chosen = normalise_fields(fields, where)
        if chosen is None:
            chosen = requested
        not_requested = [f for f in chosen if f not in requested]
        if not_requested:
            raise InvalidInput(
                f"{where}: field(s) {', '.join(not_requested)} were not requested; "
                f"requested: {', '.join(requested)}."
            )
        if not chosen:
            raise InvalidInput(
                f"{where}: approve at least one field ({', '.join(requested)}), or reject it."
            )
        approved = [f for f in FIELDS if f in chosen]
        version = _request_version(conn, row)
        if version is None:
            label, _ = _deleted_version_label(conn, int(row.version_id))
            gone = (f"{label.removesuffix(' (deleted)')}, a version deleted since"
                    if label.endswith(" (deleted)") else "a version deleted since")
            raise ConflictError(
                f"{where} was made on {gone}: there is no "
                "version to apply it to. Reject it (georeg changes reject REG "
                f"{row.fid} --comment WHY), and send it again on the current version if "
                "it still applies."
            )
        target = target_draft(conn, version)
        if row.kind == "creation":
            fid = _create_unit(reg, conn, row, target, approved, where)
        else:
            fid = _change_unit(reg, conn, row, target, approved, where)
        _check_dates(conn, fid, where)
        conn.execute(
            text(
                "UPDATE change_request SET status = 'approved', approved_fields = "
                + (":a" if reg.backend.value != "postgis" else "CAST(:a AS jsonb)")
                + ", reviewed_by = :r, reviewed_at = :t WHERE fid = :f"
            ),
            {"a": json.dumps(approved), "r": reviewer, "t": now_text(), "f": row.fid},
        )
        result = _request_dict(conn, _row(conn, int(row.fid)))
        result["applied_to"] = target.label
        return result


def reject_change_request(
    reg: Registry, ident: int | str, *, reviewer: str, comment: str
) -> dict[str, Any]:
    """Refuse the whole request, saying why (the phone shows the comment)."""
    if not (reviewer or "").strip():
        raise InvalidInput("A review needs the reviewer's name.")
    if not (comment or "").strip():
        raise InvalidInput("Say why the request is rejected (the comment is empty).")
    with reg.write(origin=ORIGIN, author=reviewer) as conn:
        row = _row(conn, ident)
        _require_new(row)
        conn.execute(
            text(
                "UPDATE change_request SET status = 'rejected', rejection_comment = :c, "
                "reviewed_by = :r, reviewed_at = :t WHERE fid = :f"
            ),
            {"c": comment.strip(), "r": reviewer, "t": now_text(), "f": row.fid},
        )
        return _request_dict(conn, _row(conn, int(row.fid)))


def _parent_key(conn: Connection, target: VersionRef, parent_uuid: str | None, where: str
                ) -> tuple[int | None, str | None]:
    if parent_uuid is None:
        return None, None
    parent = conn.execute(
        text("SELECT unit_key, path FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": target.id, "u": parent_uuid},
    ).first()
    if parent is None:
        pending = _pending_creation(conn, target.id, parent_uuid)
        pending = pending or conn.execute(
            text(
                "SELECT fid, status FROM change_request WHERE unit_uuid = :u AND kind = 'creation' "
                "AND status = 'new'"
            ),
            {"u": parent_uuid},
        ).first()
        if pending is not None:
            raise ConflictError(
                f"{where}: the proposed parent is itself a new unit waiting for review "
                f"(change request {pending[0]}). Approve that one first."
            )
        raise ConflictError(
            f"{where}: the proposed parent ({parent_uuid}) is not in {target.label}."
        )
    return int(parent[0]), str(parent[1])


def _create_unit(reg: Registry, conn: Connection, row: Any, target: VersionRef,
                 approved: list[str], where: str) -> int:
    if "name" not in approved:
        raise InvalidInput(
            f"{where}: a new unit needs its name; approve 'name' (with any other fields) "
            "or reject the request."
        )
    requested = list(json_value(row.requested_fields) or [])
    if "parent" in requested and "parent" not in approved:
        raise InvalidInput(
            f"{where}: approve 'parent' too, or the new unit would become a root."
        )
    exists = conn.execute(
        text("SELECT 1 FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": target.id, "u": row.unit_uuid},
    ).first()
    if exists:
        raise ConflictError(f"{where}: unit {row.unit_uuid} already exists in {target.label}.")
    parent_key = None
    if "parent" in approved:
        parent_key, _ = _parent_key(conn, target, row.new_parent_uuid, where)
    cols: dict[str, Any] = {
        "version_id": target.id,
        "uuid": row.unit_uuid,
        "name": row.new_name,
        "parent_key": parent_key,
        "validation_status": "new",
    }
    if "type" in approved:
        cols["type_id"] = row.new_type_id
    if "code" in approved:
        cols["code"] = row.new_code
    if "opening_date" in approved:
        cols["opening_date"] = _date_text(row.new_opening_date)
    if "closed_date" in approved:
        cols["closed_date"] = _date_text(row.new_closed_date)
    location = None
    if "location" in approved and row.new_location_wkb:
        location = geometry.from_wkb(row.new_location_wkb)
    cols["location"] = geometry.encode(reg.backend, location)
    names = ", ".join(cols)
    binds = ", ".join(
        geometry.bind_sql(reg.backend, k) if k == "location" else f":{k}" for k in cols
    )
    fid = int(
        conn.execute(
            text(f"INSERT INTO org_unit ({names}) VALUES ({binds}) RETURNING fid"), cols
        ).scalar_one()
    )
    if "territory" in approved and row.new_territory_wkb:
        set_territory(reg, conn, fid, geometry.from_wkb(row.new_territory_wkb))
    if "groups" in approved:
        _set_groups(conn, target, fid, [int(k) for k in json_value(row.new_groups) or []], where)
    return fid


def _change_unit(reg: Registry, conn: Connection, row: Any, target: VersionRef,
                 approved: list[str], where: str) -> int:
    unit = conn.execute(
        text("SELECT fid, unit_key, path FROM org_unit WHERE version_id = :v AND uuid = :u"),
        {"v": target.id, "u": row.unit_uuid},
    ).first()
    if unit is None:
        pending = _pending_creation(conn, row.version_id, row.unit_uuid)
        if pending is not None and pending[1] == "new":
            raise ConflictError(
                f"{where}: the unit is a new one waiting for review (change request "
                f"{pending[0]}). Approve that one first."
            )
        raise NotFound(f"{where}: unit {row.unit_uuid} is not in {target.label} (deleted?).")
    fid, unit_key, path = int(unit[0]), int(unit[1]), str(unit[2])
    sets: dict[str, Any] = {}
    if "name" in approved:
        sets["name"] = row.new_name
    if "type" in approved:
        sets["type_id"] = row.new_type_id
    if "code" in approved:
        sets["code"] = row.new_code
    if "opening_date" in approved:
        sets["opening_date"] = _date_text(row.new_opening_date)
    if "closed_date" in approved:
        sets["closed_date"] = _date_text(row.new_closed_date)
    if "parent" in approved:
        parent_key, parent_path = _parent_key(conn, target, row.new_parent_uuid, where)
        if parent_path is not None and parent_path.startswith(path):
            raise CycleError(f"{where}: the proposed parent is inside the unit's own subtree.")
        sets["parent_key"] = parent_key
    if sets:
        assignments = ", ".join(f"{k} = :{k}" for k in sets)
        conn.execute(text(f"UPDATE org_unit SET {assignments} WHERE fid = :fid"),
                     sets | {"fid": fid})
    if "location" in approved:
        location = geometry.from_wkb(row.new_location_wkb) if row.new_location_wkb else None
        conn.execute(
            text(f"UPDATE org_unit SET location = {geometry.bind_sql(reg.backend, 'g')} "
                 "WHERE fid = :f"),
            {"g": geometry.encode(reg.backend, location), "f": fid},
        )
    if "territory" in approved:
        territory = geometry.from_wkb(row.new_territory_wkb) if row.new_territory_wkb else None
        set_territory(reg, conn, fid, territory)
    if "groups" in approved:
        _set_groups(conn, target, fid, [int(k) for k in json_value(row.new_groups) or []], where)
    del unit_key
    return fid


def _set_groups(conn: Connection, target: VersionRef, fid: int, keys: list[int], where: str
                ) -> None:
    unit_key = conn.execute(text("SELECT unit_key FROM org_unit WHERE fid = :f"), {"f": fid}
                            ).scalar_one()
    current = {
        int(r[0])
        for r in conn.execute(
            text("SELECT group_key FROM group_membership WHERE version_id = :v AND unit_key = :u"),
            {"v": target.id, "u": unit_key},
        )
    }
    for key in keys:
        exists = conn.execute(
            text("SELECT 1 FROM org_unit_group WHERE version_id = :v AND group_key = :g"),
            {"v": target.id, "g": key},
        ).first()
        if exists is None:
            raise ConflictError(f"{where}: group {key} is not in {target.label}.")
    for key in current - set(keys):
        conn.execute(
            text("DELETE FROM group_membership WHERE version_id = :v AND group_key = :g "
                 "AND unit_key = :u"),
            {"v": target.id, "g": key, "u": unit_key},
        )
    for key in [k for k in keys if k not in current]:
        conn.execute(
            text("INSERT INTO group_membership (version_id, group_key, unit_key) "
                 "VALUES (:v, :g, :u)"),
            {"v": target.id, "g": key, "u": unit_key},
        )
