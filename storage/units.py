"""Edit organisation units one at a time: add, edit, rename, move, close, delete,
geometry and group membership.

Each function is one transaction; the database triggers write the change log
(with the origin and author given here), keep subtree paths right on a move and
refuse edits of published versions.  Units are addressed by uuid or source_ref.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity
from sqlalchemy import Connection, text

from storage import geometry
from storage.bulk import VALIDATION_STATUSES, parse_date
from storage.errors import ConflictError, CycleError, InvalidInput, NotFound
from storage.ids import uuid7
from storage.registry import Registry, json_value
from storage.versions import VersionRef, require_draft, resolve_version

EDITABLE_FIELDS = (
    "name",
    "code",
    "source_ref",
    "type",
    "validation_status",
    "opening_date",
    "closed_date",
    "aliases",
    "extra_fields",
)


@dataclass(frozen=True)
class UnitHandle:
    """A unit found in one version."""

    fid: int
    unit_key: int
    uuid: str
    name: str
    path: str
    depth: int
    parent_key: int | None


def unit_columns(backend: Any, alias: str = "u") -> str:
    loc = geometry.select_sql(backend, f"{alias}.location")
    return (
        f"{alias}.fid, {alias}.uuid, {alias}.unit_key, {alias}.source_ref, {alias}.name, "
        f"{alias}.code, {alias}.parent_key, {alias}.path, {alias}.depth, "
        f"{alias}.validation_status, {alias}.opening_date, {alias}.closed_date, "
        f"{alias}.aliases, {alias}.extra_fields, {loc} AS location, t.name AS type_name, "
        f"p.uuid AS parent_uuid, p.name AS parent_name, p.source_ref AS parent_ref"
    )


def unit_joins(alias: str = "u") -> str:
    return (
        f"LEFT JOIN org_unit_type t ON t.fid = {alias}.type_id "
        f"LEFT JOIN org_unit p ON p.version_id = {alias}.version_id "
        f"AND p.unit_key = {alias}.parent_key"
    )


def row_to_dict(backend: Any, row: Any, *, with_geometry: bool = True) -> dict[str, Any]:
    """A unit row → the plain dict every front end renders."""
    loc = geometry.decode(backend, row.location) if with_geometry else None
    opening = row.opening_date
    closed = row.closed_date
    return {
        "uuid": row.uuid,
        "source_ref": row.source_ref,
        "name": row.name,
        "code": row.code,
        "type": row.type_name,
        "depth": row.depth,
        "path": row.path,
        "parent_uuid": row.parent_uuid,
        "parent_ref": row.parent_ref,
        "parent_name": row.parent_name,
        "validation_status": row.validation_status,
        "opening_date": opening.isoformat() if isinstance(opening, dt.date) else opening,
        "closed_date": closed.isoformat() if isinstance(closed, dt.date) else closed,
        "aliases": json_value(row.aliases) or [],
        "extra_fields": json_value(row.extra_fields) or {},
        "location": [loc.x, loc.y] if loc is not None and not loc.is_empty else None,
    }


def find_unit(conn: Connection, version: VersionRef, ident: str) -> UnitHandle:
    """By uuid first, then by source_ref; the error names the version searched."""
    ident = (ident or "").strip()
    row = conn.execute(
        text(
            "SELECT fid, unit_key, uuid, name, path, depth, parent_key FROM org_unit "
            "WHERE version_id = :v AND (uuid = :i OR source_ref = :i) "
            "ORDER BY CASE WHEN uuid = :i THEN 0 ELSE 1 END LIMIT 1"
        ),
        {"v": version.id, "i": ident},
    ).first()
    if row is None:
        raise NotFound(f"No unit with uuid or ref {ident!r} in {version.label}.")
    return UnitHandle(*row)


def get_unit(reg: Registry, source: str, ident: str, number: int | None = None) -> dict[str, Any]:
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        handle = find_unit(conn, version, ident)
        return _unit_dict(reg, conn, handle.fid)


def unit_territory(reg: Registry, conn: Connection, fid: int) -> BaseGeometry | None:
    """The territory of the unit row ``fid`` (None when it has none)."""
    ter = conn.execute(
        text(f"SELECT {geometry.select_sql(reg.backend, 'territory')} FROM org_unit_territory "
             "WHERE unit_fid = :f"),
        {"f": fid},
    ).scalar()
    return geometry.decode(reg.backend, ter)


def unit_group_names(conn: Connection, fid: int) -> list[str]:
    """Names of the groups the unit row ``fid`` belongs to, sorted."""
    return [r[0] for r in conn.execute(
        text("SELECT g.name FROM group_membership m JOIN org_unit_group g ON "
             "g.version_id = m.version_id AND g.group_key = m.group_key "
             "JOIN org_unit u ON u.version_id = m.version_id AND u.unit_key = m.unit_key "
             "WHERE u.fid = :f ORDER BY g.name"),
        {"f": fid},
    )]


def _unit_dict(reg: Registry, conn: Connection, fid: int) -> dict[str, Any]:
    row = conn.execute(
        text(f"SELECT {unit_columns(reg.backend)} FROM org_unit u {unit_joins()} WHERE u.fid = :f"),
        {"f": fid},
    ).one()
    data = row_to_dict(reg.backend, row)
    territory = unit_territory(reg, conn, fid)
    data["has_territory"] = territory is not None
    data["territory_area_deg2"] = territory.area if territory is not None else None
    data["groups"] = unit_group_names(conn, fid)
    return data


def folded(name: str) -> str:
    """A type's or group's name as compared for uniqueness ("case aside"): Unicode
    case folding in Python, the same on every backend — SQL ``lower()`` folds ASCII only
    on SQLite (and depends on the locale on PostgreSQL), so "école" passed next to
    "École".  NFC first: an "é" typed as e + accent is the same name as the one-letter "é"."""
    return unicodedata.normalize("NFC", name.strip()).casefold()


def same_name(name: str, names: Iterable[str | None]) -> str | None:
    """The first of ``names`` that is ``name`` case aside (see :func:`folded`), if any."""
    key = folded(name)
    return next((n for n in names if n is not None and folded(n) == key), None)


def _type_id(conn: Connection, type_name: str | None, where: str) -> int | None:
    if type_name is None or type_name == "":
        return None
    row = conn.execute(
        text("SELECT fid FROM org_unit_type WHERE name = :n"), {"n": type_name.strip()}
    ).first()
    if row is None:
        names = [r[0] for r in conn.execute(text(
            "SELECT name FROM org_unit_type ORDER BY CASE WHEN depth IS NULL THEN 1 ELSE 0 END, "
            "depth, name"))]
        near = same_name(type_name, names)
        if near is not None:  # "type add" would refuse it: name the one that exists
            raise InvalidInput(f"{where}: field 'type': no org-unit type named {type_name!r} "
                               f"— did you mean {near!r}? (Type names match exactly.)")
        raise InvalidInput(
            f"{where}: field 'type': no org-unit type named {type_name!r}"
            + (f" (types: {', '.join(names)})." if names else ".")
            + f" Add it with: georeg type add REG \"{type_name.strip()}\""
        )
    return int(row[0])


#: C0 control characters but tab, line feed and carriage return (U+0000-U+0008,
#: U+000B, U+000C, U+000E-U+001F): refused by imports in names, refs, codes, type
#: names and aliases (:func:`check_no_nul` with ``controls``).  NUL cannot be stored
#: by PostgreSQL; the others (escape, bell, backspace …) come from pasted or badly
#: exported text and garble every listing and terminal that shows the name.  Tabs
#: and line breaks are kept: spreadsheet cells carry them (Iaso's own schools file
#: has names on two lines) and they round-trip through every format.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f]")

_CONTROL_NAMES = {0x07: "bell", 0x08: "backspace", 0x0B: "vertical tab", 0x0C: "form feed",
                  0x1B: "escape"}


def check_no_nul(value: Any, where: str, field: str, inside: str = "", *,
                 controls: bool = False) -> None:
    """Refuse a NUL character (U+0000) anywhere in a text value, or inside a JSON value
    (strings and keys, at any depth).  SQLite stores it, but PostgreSQL text and jsonb
    cannot: a NUL kept here would make every later push to the central PostGIS fail
    with a message naming no unit.  Such characters come from pasted or badly exported
    text, so the message says exactly where it is (``inside``: the key or item path).
    ``controls``: refuse any :data:`CONTROL_CHARACTERS` too (imports, where a file's
    stray escape or bell is a mistake to show, not a value to keep)."""
    if isinstance(value, str):
        found = CONTROL_CHARACTERS.search(value) if controls else None
        if "\x00" in value or found:
            place = f"field {field!r}" + (f" ({inside})" if inside else "")
            if "\x00" in value:
                raise InvalidInput(
                    f"{where}: {place} contains a NUL character (\\x00, often left by pasted "
                    "or exported text), which PostgreSQL cannot store; remove it."
                )
            assert found is not None
            code = ord(found.group())
            named = f" ({_CONTROL_NAMES[code]})" if code in _CONTROL_NAMES else ""
            raise InvalidInput(
                f"{where}: {place} contains the control character U+{code:04X}{named} at "
                f"position {found.start() + 1} (often left by pasted or exported text; tabs "
                "and line breaks are allowed); remove it."
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            here = f"{inside}, " if inside else ""
            check_no_nul(key, where, field, f"{here}the key {key!r}", controls=controls)
            check_no_nul(item, where, field, f"{here}key {key!r}", controls=controls)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_no_nul(item, where, field, f"{inside}, item {i + 1}" if inside
                         else f"item {i + 1}", controls=controls)


def _check_values(values: dict[str, Any], where: str) -> None:
    unknown = set(values) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput(
            f"{where}: unknown field(s) {', '.join(sorted(unknown))}; "
            f"editable fields are {', '.join(EDITABLE_FIELDS)}."
        )
    for key, value in values.items():
        check_no_nul(value, where, key)
    if "name" in values and not (values["name"] or "").strip():
        raise InvalidInput(f"{where}: field 'name' cannot be empty.")
    if "validation_status" in values and values["validation_status"] not in VALIDATION_STATUSES:
        raise InvalidInput(
            f"{where}: field 'validation_status' must be one of {', '.join(VALIDATION_STATUSES)}."
        )


def _db_values(conn: Connection, values: dict[str, Any], where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key == "type":
            out["type_id"] = _type_id(conn, value, where)
        elif key in ("opening_date", "closed_date"):
            out[key] = parse_date(value, f"{where}: field '{key}'")
        elif key == "aliases":
            out[key] = json.dumps(list(value), ensure_ascii=False) if value else None
        elif key == "extra_fields":
            out[key] = json.dumps(dict(value), ensure_ascii=False) if value else None
        elif key == "name":
            out[key] = value.strip()
        else:
            out[key] = value if value != "" else None
    return out


@contextmanager
def _draft(reg: Registry, source: str, number: int | None, origin: str, author: str | None
           ) -> Iterator[tuple[Connection, VersionRef]]:
    """A write transaction on a draft version (a published one is refused up front)."""
    with reg.write(origin=origin, author=author) as conn:
        version = resolve_version(conn, source, number)
        require_draft(version, conn)
        yield conn, version


def _check_point(location: BaseGeometry | None, where: str) -> BaseGeometry | None:
    """The location to store: a lon/lat point, made 2D (a GPS altitude is dropped
    quietly: the registry and the central PostGIS hold 2D points)."""
    if location is None:
        return None
    if location.geom_type != "Point" or location.is_empty:
        raise InvalidInput(f"{where}: field 'location' must be a point with coordinates.")
    if not (-180 <= location.x <= 180 and -90 <= location.y <= 90):
        raise InvalidInput(
            f"{where}: field 'location' ({location.x}, {location.y}) is not a longitude/latitude "
            "in degrees (EPSG:4326)."
        )
    return geometry.flat(location)


#: what a coordinate range error suggests for a territory given to an edit
PROJECTED_HINT = ("is the polygon in a projected CRS such as UTM? Reproject it to "
                  "longitude/latitude (EPSG:4326) first, e.g. ogr2ogr -t_srs EPSG:4326")


def check_territory(territory: BaseGeometry | None, where: str, *, fix: bool = False
                    ) -> BaseGeometry | None:
    """The territory to store, checked as ``georeg import`` checks one: a non-empty
    (multi)polygon in degrees (a projected polygon — UTM metres — read as degrees lands
    nowhere on Earth, and ``check`` would not notice), and valid (a self-intersecting
    "bow-tie" breaks areas and point-in-polygon tests).  ``fix`` repairs an invalid
    polygon (``make_valid``) instead of refusing it, as ``import --fix-geometry`` does.
    Made 2D and a MultiPolygon, as stored."""
    if territory is None:
        return None
    if territory.geom_type not in ("Polygon", "MultiPolygon"):
        raise InvalidInput(f"{where}: field 'territory' must be a polygon or multipolygon "
                           f"(got a {territory.geom_type}).")
    if territory.is_empty:
        raise InvalidInput(f"{where}: field 'territory' is an empty polygon.")
    geom = geometry.as_multipolygon(geometry.flat(territory))
    assert geom is not None
    minx, miny, maxx, maxy = shapely.bounds(geom).tolist()
    if not all(math.isfinite(v) for v in (minx, miny, maxx, maxy)):
        raise InvalidInput(f"{where}: field 'territory' has coordinates that are not numbers.")
    check_degrees((minx, miny, maxx, maxy), where)
    if geom.is_valid:
        return geom
    if not fix:
        raise InvalidInput(
            f"{where}: field 'territory' is not a valid polygon ({explain_validity(geom)}); "
            "fix it, or give --fix-geometry to repair it."
        )
    return repaired(geom, where)


def check_degrees(bounds: tuple[float, float, float, float], where: str,
                  hint: str = PROJECTED_HINT) -> None:
    """A territory's bounds must be degrees, as a point's are: a projected polygon (UTM
    metres …) read as degrees lands nowhere on Earth.  (Edits and imports alike; an
    import's ``hint`` speaks of the file's CRS.)"""
    minx, miny, maxx, maxy = bounds
    if not -180 <= minx <= maxx <= 180:
        raise InvalidInput(f"{where}: field 'territory' has longitudes {minx:g}..{maxx:g}; a "
                           f"longitude must be within -180..180 degrees ({hint}).")
    if not -90 <= miny <= maxy <= 90:
        raise InvalidInput(f"{where}: field 'territory' has latitudes {miny:g}..{maxy:g}; a "
                           f"latitude must be within -90..90 degrees ({hint}).")


def repaired(geom: BaseGeometry, where: str) -> BaseGeometry:
    """An invalid territory made valid (GEOS ``make_valid``), as a multipolygon."""
    fixed = geometry.as_multipolygon(shapely.make_valid(geom))
    if fixed is None or fixed.is_empty:
        raise InvalidInput(f"{where}: field 'territory' could not be repaired.")
    return fixed


def _check_dates(conn: Connection, fid: int, where: str) -> None:
    row = conn.execute(
        text("SELECT opening_date, closed_date FROM org_unit WHERE fid = :f"), {"f": fid}
    ).one()
    if row[0] and row[1] and str(row[1]) < str(row[0]):
        raise InvalidInput(
            f"{where}: closed_date {row[1]} is before opening_date {row[0]}."
        )


def add_unit(
    reg: Registry,
    source: str,
    *,
    name: str,
    number: int | None = None,
    parent: str | None = None,
    location: BaseGeometry | None = None,
    territory: BaseGeometry | None = None,
    fix_geometry: bool = False,
    origin: str = "api",
    author: str | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Add one unit under ``parent`` (uuid or ref; none makes a root).  ``territory``
    is checked as an import checks it (``check_territory``; ``fix_geometry`` repairs an
    invalid one)."""
    where = f"New unit {name!r}"
    _check_values({"name": name, **values}, where)
    territory = check_territory(territory, where, fix=fix_geometry)
    with _draft(reg, source, number, origin, author) as (conn, version):
        parent_handle = find_unit(conn, version, parent) if parent else None
        cols = _db_values(conn, {"name": name, **values}, where)
        if cols.get("source_ref"):
            clash = conn.execute(
                text("SELECT name FROM org_unit WHERE version_id = :v AND source_ref = :r"),
                {"v": version.id, "r": cols["source_ref"]},
            ).first()
            if clash:
                raise ConflictError(
                    f"{where}: field 'source_ref': {cols['source_ref']!r} is already used by "
                    f"{clash[0]!r} in {version.label}."
                )
        location = _check_point(location, where)
        cols.update(
            version_id=version.id,
            uuid=uuid7(),
            parent_key=parent_handle.unit_key if parent_handle else None,
            location=geometry.encode(reg.backend, location),
        )
        names = ", ".join(cols)
        binds = ", ".join(
            geometry.bind_sql(reg.backend, k) if k == "location" else f":{k}" for k in cols
        )
        fid = conn.execute(
            text(f"INSERT INTO org_unit ({names}) VALUES ({binds}) RETURNING fid"), cols
        ).scalar_one()
        _check_dates(conn, fid, where)
        if territory is not None:
            set_territory(reg, conn, fid, territory)
        return _unit_dict(reg, conn, fid)


def edit_unit(
    reg: Registry,
    source: str,
    ident: str,
    *,
    number: int | None = None,
    origin: str = "api",
    author: str | None = None,
    **values: Any,
) -> dict[str, Any]:
    """Change attributes of one unit (name, code, type, dates, status, aliases …)."""
    where = f"Unit {ident!r}"
    _check_values(values, where)
    if not values:
        raise InvalidInput(f"{where}: nothing to change (give at least one field).")
    with _draft(reg, source, number, origin, author) as (conn, version):
        handle = find_unit(conn, version, ident)
        cols = _db_values(conn, values, where)
        sets = ", ".join(f"{k} = :{k}" for k in cols)
        conn.execute(text(f"UPDATE org_unit SET {sets} WHERE fid = :fid"), cols | {"fid": handle.fid})
        _check_dates(conn, handle.fid, where)
        return _unit_dict(reg, conn, handle.fid)


def rename_unit(reg: Registry, source: str, ident: str, new_name: str, **kw: Any) -> dict[str, Any]:
    return edit_unit(reg, source, ident, name=new_name, **kw)


def close_unit(
    reg: Registry, source: str, ident: str, closed_date: str | dt.date | None = None, **kw: Any
) -> dict[str, Any]:
    """Close a unit (keeps it, with a closed date: what DHIS2 and Iaso expect)."""
    return edit_unit(
        reg, source, ident, closed_date=closed_date or dt.date.today().isoformat(), **kw
    )


def move_unit(
    reg: Registry,
    source: str,
    ident: str,
    new_parent: str | None,
    *,
    number: int | None = None,
    origin: str = "api",
    author: str | None = None,
) -> dict[str, Any]:
    """Move a unit (and its whole subtree) under another parent; None makes it a root."""
    with _draft(reg, source, number, origin, author) as (conn, version):
        handle = find_unit(conn, version, ident)
        target = find_unit(conn, version, new_parent) if new_parent else None
        if target is not None and (
            target.unit_key == handle.unit_key or target.path.startswith(handle.path)
        ):
            raise CycleError(
                f"Cannot move {handle.name!r} under {target.name!r}: "
                f"{target.name!r} is {'the unit itself' if target.fid == handle.fid else 'inside its subtree'}."
            )
        conn.execute(
            text("UPDATE org_unit SET parent_key = :p WHERE fid = :f"),
            {"p": target.unit_key if target else None, "f": handle.fid},
        )
        return _unit_dict(reg, conn, handle.fid)


def delete_unit(
    reg: Registry,
    source: str,
    ident: str,
    *,
    number: int | None = None,
    recursive: bool = False,
    origin: str = "api",
    author: str | None = None,
) -> dict[str, Any]:
    """Delete a unit; with children, only when ``recursive`` (the whole subtree goes)."""
    with _draft(reg, source, number, origin, author) as (conn, version):
        handle = find_unit(conn, version, ident)
        upper = handle.path[:-1] + "0"
        params = {"v": version.id, "lo": handle.path, "hi": upper}
        count = conn.execute(
            text("SELECT count(*) FROM org_unit WHERE version_id = :v AND path >= :lo AND path < :hi"),
            params,
        ).scalar_one()
        if count > 1 and not recursive:
            raise ConflictError(
                f"{handle.name!r} has {count - 1} units below it. Move them first, close the unit "
                "instead, or delete the whole subtree with --recursive."
            )
        warnings = _what_points_at(conn, params, count)
        conn.execute(
            text("DELETE FROM org_unit WHERE version_id = :v AND path >= :lo AND path < :hi"),
            params,
        )
        return {"deleted": count, "uuid": handle.uuid, "name": handle.name,
                "warnings": warnings}


def _what_points_at(conn: Connection, params: dict[str, Any], count: int) -> list[str]:
    """What the field sent about the units a delete removes, said before they go: change
    requests still waiting for review (approving one now fails: its unit, or the parent a
    new unit goes under, is gone from the draft) and submissions made there (they keep
    pointing at the unit in the versions that still have it)."""
    inside = ("SELECT uuid FROM org_unit WHERE version_id = :v AND path >= :lo "
              "AND path < :hi")
    waiting = conn.execute(text(
        f"SELECT count(*) FROM change_request WHERE status = 'new' AND (unit_uuid IN ({inside})"
        f" OR new_parent_uuid IN ({inside}))"), params).scalar_one()
    sent = conn.execute(text(
        f"SELECT count(*) FROM submission WHERE status <> 'deleted' AND org_unit_uuid IN "
        f"({inside})"), params).scalar_one()
    these = "this unit" if count == 1 else f"these {count} units"
    warnings = []
    if waiting:
        warnings.append(
            f"{waiting} change request(s) waiting for review are about {these}: they can only "
            "be rejected now ('georeg changes list' shows them).")
    if sent:
        warnings.append(
            f"{sent} submission(s) were made at {these}; they stay, pointing at the unit in "
            "the versions that still have it.")
    return warnings


def set_territory(reg: Registry, conn: Connection, fid: int, territory: BaseGeometry | None) -> None:
    """Set (insert or replace) or clear a unit's territory inside an open write; a
    territory with Z/M is stored 2D (see ``geometry.flat``)."""
    if territory is None:
        conn.execute(text("DELETE FROM org_unit_territory WHERE unit_fid = :f"), {"f": fid})
        return
    blob = geometry.encode(reg.backend, geometry.as_multipolygon(geometry.flat(territory)))
    bind = geometry.bind_sql(reg.backend, "g")
    updated = conn.execute(
        text(f"UPDATE org_unit_territory SET territory = {bind} WHERE unit_fid = :f"),
        {"g": blob, "f": fid},
    ).rowcount
    if not updated:
        conn.execute(
            text(f"INSERT INTO org_unit_territory (territory, unit_fid) VALUES ({bind}, :f)"),
            {"g": blob, "f": fid},
        )


_UNSET: Any = object()


def set_geometry(
    reg: Registry,
    source: str,
    ident: str,
    *,
    number: int | None = None,
    location: BaseGeometry | None = _UNSET,
    territory: BaseGeometry | None = _UNSET,
    fix_geometry: bool = False,
    origin: str = "api",
    author: str | None = None,
) -> dict[str, Any]:
    """Set or clear (pass None) a unit's point location and/or territory.

    A territory is checked as ``georeg import`` checks one (degrees, not a projected
    CRS; a valid polygon, or repaired with ``fix_geometry``): an edit must not store
    what an import refuses."""
    if territory is not _UNSET:
        territory = check_territory(territory, f"Unit {ident!r}", fix=fix_geometry)
    with _draft(reg, source, number, origin, author) as (conn, version):
        handle = find_unit(conn, version, ident)
        if location is not _UNSET:
            location = _check_point(location, f"Unit {ident!r}")
            conn.execute(
                text(
                    f"UPDATE org_unit SET location = {geometry.bind_sql(reg.backend, 'g')} "
                    "WHERE fid = :f"
                ),
                {"g": geometry.encode(reg.backend, location), "f": handle.fid},
            )
        if territory is not _UNSET:
            set_territory(reg, conn, handle.fid, territory)
        return _unit_dict(reg, conn, handle.fid)


def group_row(conn: Connection, version: VersionRef, group: str) -> Any:
    """A group of ``version`` by ref (first: refs are unique), else by name.  A name two
    groups share (a DHIS2 pull may bring a group named like one made here) is refused
    with their refs rather than picking one — an edit would land in the wrong group."""
    group = (group or "").strip()
    rows = conn.execute(
        text(
            "SELECT group_key, source_ref, name, short_name, code FROM org_unit_group "
            "WHERE version_id = :v AND (source_ref = :g OR name = :g) "
            "ORDER BY CASE WHEN source_ref = :g THEN 0 ELSE 1 END, group_key"
        ),
        {"v": version.id, "g": group},
    ).all()
    if not rows:
        raise no_group(group, version, conn)
    if rows[0].source_ref != group and len(rows) > 1:
        refs = ", ".join(repr(r.source_ref) if r.source_ref else "(no ref)" for r in rows)
        raise ConflictError(
            f"{len(rows)} groups of {version.label} are named {group!r} (refs: {refs}): "
            "give the ref, or rename one: georeg group rename REG REF NEW_NAME "
            f"-s \"{version.source}\" -v {version.number}")
    return rows[0]


def _group_key(conn: Connection, version: VersionRef, group: str) -> int:
    return int(group_row(conn, version, group).group_key)


def no_group(group: str, version: VersionRef, conn: Connection | None = None) -> NotFound:
    """The error for a group a version does not have, with the commands that list and
    add groups (until they existed, the user could only read what was missing) — or,
    when a group's name or ref is ``group`` case aside, that one (``group add`` would
    refuse the name: advising it would send the user round in a loop)."""
    if conn is not None:
        near = same_name(group, [n for r in conn.execute(text(
            "SELECT name, source_ref FROM org_unit_group WHERE version_id = :v ORDER BY name"),
            {"v": version.id}) for n in r])
        if near is not None:
            return NotFound(f"No group {group!r} (by ref or name) in {version.label} — did "
                            f"you mean {near!r}? (Group names and refs match exactly.)")
    return NotFound(
        f"No group {group!r} (by ref or name) in {version.label}. List them with "
        f"'georeg group list REG -s \"{version.source}\" -v {version.number}'; add one with "
        f"'georeg group add REG \"{group}\" -s \"{version.source}\" -v {version.number}'.")


def add_group(
    reg: Registry, source: str, name: str, *, number: int | None = None,
    source_ref: str | None = None, origin: str = "api",
) -> dict[str, Any]:
    if not (name or "").strip():
        raise InvalidInput("A group needs a name (field 'name' is empty).")
    check_no_nul(name, f"New group {name!r}", "name")
    check_no_nul(source_ref, f"New group {name!r}", "source_ref")
    with _draft(reg, source, number, origin, None) as (conn, version):
        fid = conn.execute(
            text(
                "INSERT INTO org_unit_group (version_id, source_ref, name) VALUES (:v, :r, :n) "
                "RETURNING fid"
            ),
            {"v": version.id, "r": source_ref, "n": name.strip()},
        ).scalar_one()
        return {"id": fid, "name": name.strip(), "source_ref": source_ref}


def set_group_membership(
    reg: Registry,
    source: str,
    ident: str,
    group: str,
    member: bool,
    *,
    number: int | None = None,
    origin: str = "api",
    author: str | None = None,
) -> dict[str, Any]:
    """Add a unit to a group (member=True) or take it out (member=False)."""
    with _draft(reg, source, number, origin, author) as (conn, version):
        handle = find_unit(conn, version, ident)
        key = _group_key(conn, version, group)
        params = {"v": version.id, "g": key, "u": handle.unit_key}
        exists = conn.execute(
            text(
                "SELECT 1 FROM group_membership WHERE version_id = :v AND group_key = :g "
                "AND unit_key = :u"
            ),
            params,
        ).first()
        if member and not exists:
            conn.execute(
                text(
                    "INSERT INTO group_membership (version_id, group_key, unit_key) "
                    "VALUES (:v, :g, :u)"
                ),
                params,
            )
        elif not member and exists:
            conn.execute(
                text(
                    "DELETE FROM group_membership WHERE version_id = :v AND group_key = :g "
                    "AND unit_key = :u"
                ),
                params,
            )
        return _unit_dict(reg, conn, handle.fid)
