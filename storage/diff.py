"""Diff of two versions: what is new, modified, moved, closed, deleted or unchanged.

Any two versions can be compared: two versions of one source, or versions of
two sources.  Units are paired by ``uuid`` (stable across the versions of a
source, and kept when a source is copied), then the units left over on both
sides by ``source_ref`` (the DHIS2 uid, Iaso ref … what two lists of the same
country usually share).  Unpaired units are ``new`` (only in the right-hand,
"after" version) or ``deleted`` (only in the left-hand, "before" version).

A paired unit is, in this order of precedence:

* ``closed``    — it had no closed date and now has one;
* ``moved``     — its parent is another unit (parents are compared through the
  pairing, so this works across sources too);
* ``modified``  — any other compared field differs;
* ``unchanged`` — nothing compared differs.

Every difference is listed per field with its before and after value
(:class:`FieldChange`), whatever the status.  Geometry changes carry metric
measures (:class:`UnitDiff`): the geodesic distance in metres between the old
and new point (WGS 84 ellipsoid, pyproj ``Geod.inv``); for territories the
geodesic areas before and after (``Geod.geometry_area_perimeter``), their
difference, and the Hausdorff distance in metres computed in the UTM zone of
the old territory's centroid (both shapes projected to that zone; error well
under 1 % within a zone's width).

Speed: the bulk comparison runs in the database first (:func:`_candidates`): one
join of the two versions by uuid keeps only the pairs whose stored values differ,
plus the unpaired units and the pairs whose territory or group memberships differ;
unchanged units never leave SQL and are counted per level with one GROUP BY.  The
rows that may differ are read once and compared precisely (normalisation, geometry
tolerance) with numpy, pandas and shapely 2 arrays; Python loops only over the
changed units, to build the result.  When most rows differ (two sources without
shared uuids) both versions are read whole and compared the same way.  Two
100k-unit versions with 2 % changes: ~0.3 s on a GeoPackage, 3-4x pygeodiff's
plain changeset of the same data (``benchmarks/bench_diff.py``).

The per-field comparison is public so other modules (merge) compare values the
same way: :data:`FIELDS`, :func:`normalise`, :func:`values_equal` and
:func:`compare_units`.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection

from storage import geometry
from storage.backends import Backend
from storage.errors import InvalidInput
from storage.jobs import Job
from storage.registry import Registry, json_value
from storage.versions import VersionRef, resolve_version

if TYPE_CHECKING:  # pandas and pyproj are imported when a diff runs (CLI start-up time)
    import pandas as pd
    from pyproj import Geod, Transformer

SCHEMA = "georeg.diff/v1"

#: Every field the diff compares, in display order.
FIELDS: tuple[str, ...] = (
    "name",
    "code",
    "source_ref",
    "type",
    "parent",
    "opening_date",
    "closed_date",
    "validation_status",
    "groups",
    "aliases",
    "extra_fields",
    "location",
    "territory",
)
#: Shorthands accepted by ``--fields``.
FIELD_ALIASES: dict[str, tuple[str, ...]] = {
    "dates": ("opening_date", "closed_date"),
    "geometry": ("location", "territory"),
    "status": ("validation_status",),
}
STATUSES: tuple[str, ...] = ("new", "modified", "moved", "closed", "deleted", "unchanged")

#: Two coordinates closer than this (degrees) are the same: Iaso rounds to 6 decimals.
GEOMETRY_TOLERANCE = 5e-7


@lru_cache(maxsize=1)
def _geod() -> Geod:
    from pyproj import Geod

    return Geod(ellps="WGS84")


# --- field comparison (public: the merge reuses it) -----------------------------------


def normalise(field_name: str, value: Any) -> Any:
    """A field's value in the form two versions are compared in.

    Empty text is no value; dates are ``YYYY-MM-DD`` text; aliases an ordered list
    (empty = none); extra fields a dict (empty = none); groups a sorted tuple;
    geometries stay shapely objects (compared with :data:`GEOMETRY_TOLERANCE`).
    """
    if value is None:
        return None
    if field_name in ("opening_date", "closed_date"):
        if isinstance(value, dt.datetime):
            return value.date().isoformat()
        if isinstance(value, dt.date):
            return value.isoformat()
        text = str(value).strip()[:10]
        return text or None
    if field_name == "aliases":
        parsed = json_value(value)
        return list(parsed) if parsed else None
    if field_name == "extra_fields":
        parsed = json_value(value)
        return dict(parsed) if parsed else None
    if field_name == "groups":
        return tuple(sorted(str(g) for g in value)) or None
    if field_name in ("location", "territory"):
        return None if value.is_empty else value
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def values_equal(field_name: str, before: Any, after: Any) -> bool:
    """True when ``before`` and ``after`` are the same value of ``field_name``."""
    a, b = normalise(field_name, before), normalise(field_name, after)
    if a is None or b is None:
        return a is None and b is None
    if field_name in ("location", "territory"):
        return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b),
                                         tolerance=GEOMETRY_TOLERANCE))
    if field_name == "extra_fields":
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                       default=str)
    return bool(a == b)


@dataclass
class FieldChange:
    """One field that differs: its value before (left version) and after (right)."""

    field: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {"field": self.field, "before": _jsonable(self.before),
                "after": _jsonable(self.after)}


def compare_units(before: dict[str, Any], after: dict[str, Any],
                  fields: tuple[str, ...] | list[str] = FIELDS) -> list[FieldChange]:
    """The fields that differ between two unit snapshots (dicts keyed by field name).

    Values are read with the field names of :data:`FIELDS` (``parent`` is compared as
    given: pass the parent's uuid, ref or anything that identifies it on both sides;
    ``location``/``territory`` as shapely geometries).  Missing keys count as no value.
    """
    return [FieldChange(f, before.get(f), after.get(f)) for f in fields
            if not values_equal(f, before.get(f), after.get(f))]


def comparable(snapshot: dict[str, Any], location: BaseGeometry | None = None,
               territory: BaseGeometry | None = None) -> dict[str, Any]:
    """A unit snapshot (``UnitDiff.before``/``after``, or ``storage.units`` dicts) as the
    field → value mapping :func:`compare_units` takes.

    ``parent`` is the parent's uuid (else its ref); ``groups`` the group refs (else
    names); geometries are taken from the arguments when given, else the snapshot's
    ``location`` ([lon, lat]) — territories have no geometry in a snapshot.
    """
    loc = location
    if loc is None and snapshot.get("location"):
        lon, lat = snapshot["location"]
        loc = shapely.Point(lon, lat)
    groups = snapshot.get("groups") or []
    return {
        "name": snapshot.get("name"), "code": snapshot.get("code"),
        "source_ref": snapshot.get("source_ref"), "type": snapshot.get("type"),
        "parent": snapshot.get("parent_uuid") or snapshot.get("parent_ref"),
        "opening_date": snapshot.get("opening_date"), "closed_date": snapshot.get("closed_date"),
        "validation_status": snapshot.get("validation_status"),
        "groups": [g.get("ref") or g.get("name") if isinstance(g, dict) else g for g in groups],
        "aliases": snapshot.get("aliases"), "extra_fields": snapshot.get("extra_fields"),
        "location": loc, "territory": territory,
    }


def expand_fields(names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """``--fields`` input (names or shorthands, comma lists allowed) → field tuple."""
    if not names:
        return FIELDS
    wanted: list[str] = []
    for item in names:
        for name in str(item).split(","):
            name = name.strip()
            if not name:
                continue
            expanded = FIELD_ALIASES.get(name, (name,))
            for f in expanded:
                if f not in FIELDS:
                    raise InvalidInput(
                        f"Unknown diff field {name!r}: choose among {', '.join(FIELDS)} "
                        f"(or {', '.join(FIELD_ALIASES)})."
                    )
                if f not in wanted:
                    wanted.append(f)
    return tuple(f for f in FIELDS if f in wanted)


# --- results --------------------------------------------------------------------------


@dataclass
class UnitDiff:
    """One unit's fate between the two versions.

    ``before``/``after`` are plain snapshots of the unit on each side (None when it
    is absent there); ``changes`` lists the fields that differ.  The geometry objects
    themselves are kept for the writers (GeoPackage) but left out of :meth:`to_dict`.
    """

    status: str
    uuid: str | None
    source_ref: str | None
    name: str
    type: str | None
    depth: int | None
    matched_by: str | None
    changes: list[FieldChange] = field(default_factory=list)
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    distance_m: float | None = None
    area_before_m2: float | None = None
    area_after_m2: float | None = None
    hausdorff_m: float | None = None
    location_before: BaseGeometry | None = None
    location_after: BaseGeometry | None = None
    territory_before: BaseGeometry | None = None
    territory_after: BaseGeometry | None = None

    @property
    def changed_fields(self) -> list[str]:
        return [c.field for c in self.changes]

    @property
    def area_change_m2(self) -> float | None:
        if self.area_before_m2 is None or self.area_after_m2 is None:
            return None
        return self.area_after_m2 - self.area_before_m2

    def change(self, field_name: str) -> FieldChange | None:
        return next((c for c in self.changes if c.field == field_name), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "uuid": self.uuid,
            "source_ref": self.source_ref,
            "name": self.name,
            "type": self.type,
            "depth": self.depth,
            "matched_by": self.matched_by,
            "changed_fields": self.changed_fields,
            "changes": [c.to_dict() for c in self.changes],
            "geometry": {
                "distance_m": _round(self.distance_m),
                "area_before_m2": _round(self.area_before_m2),
                "area_after_m2": _round(self.area_after_m2),
                "area_change_m2": _round(self.area_change_m2),
                "hausdorff_m": _round(self.hausdorff_m),
            },
            "before": self.before,
            "after": self.after,
        }


@dataclass
class VersionDiff:
    """The whole diff: both versions, the totals and the units that are listed."""

    left: VersionRef
    right: VersionRef
    fields: tuple[str, ...]
    units: list[UnitDiff]
    totals: dict[str, int]
    by_level: list[dict[str, Any]]
    counts: dict[str, int]
    include_unchanged: bool = False
    seconds: float = 0.0
    groups: dict[str, dict[str, Any]] = field(default_factory=dict)

    def by_status(self, status: str) -> list[UnitDiff]:
        return [u for u in self.units if u.status == status]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "left": self.left.to_dict(),
            "right": self.right.to_dict(),
            "fields": list(self.fields),
            "counts": self.counts,
            "totals": self.totals,
            "by_level": self.by_level,
            "field_totals": self.field_totals(),
            "include_unchanged": self.include_unchanged,
            "seconds": round(self.seconds, 3),
            "units": [u.to_dict() for u in self.units],
        }

    def field_totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for u in self.units:
            for c in u.changes:
                out[c.field] = out.get(c.field, 0) + 1
        return {f: out[f] for f in self.fields if f in out}


# --- version specs ----------------------------------------------------------------------


def parse_version_spec(spec: str) -> tuple[str, int | None]:
    """``"S:N"`` → (source, N); ``"S"`` → (source, None = default, else newest).

    S is a source name or id.  Only a final ``:<digits>`` is read as a version
    number, so names with colons still work.
    """
    text = (spec or "").strip()
    if not text:
        raise InvalidInput("Empty version: give SOURCE or SOURCE:NUMBER (e.g. 'SL:2').")
    head, sep, tail = text.rpartition(":")
    if sep and tail.strip().isdigit() and head.strip():
        return head.strip(), int(tail)
    if sep and not tail.strip() and head.strip():
        raise InvalidInput(f"{spec!r}: nothing after ':'; give SOURCE or SOURCE:NUMBER.")
    return text, None


def resolve_spec(conn: Connection, spec: str | VersionRef | tuple[str, int | None]) -> VersionRef:
    if isinstance(spec, VersionRef):
        return spec
    source, number = parse_version_spec(spec) if isinstance(spec, str) else spec
    return resolve_version(conn, source, number)


# --- the engine ----------------------------------------------------------------------------

_COLUMNS = ("fid", "key", "uuid", "ref", "name", "code", "type_id", "type_name", "parent_key",
            "depth", "vstatus", "opening", "closed", "aliases", "extra", "loc", "ter", "path",
            "puuid", "pref", "pname")
CHUNK = 5000


def _chunks(ids: np.ndarray | None) -> list[str]:
    """SQL conditions selecting ``ids`` (ints) in chunks; [""] = no restriction."""
    if ids is None:
        return [""]
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    return [" AND {col} IN (" + ", ".join(str(int(i)) for i in ids[k:k + CHUNK]) + ")"
            for k in range(0, len(ids), CHUNK)]


def _load_units(conn: Connection, backend: Backend, version_id: int,
                fids: np.ndarray | None = None) -> pd.DataFrame:
    """A version's units (all, or the rows ``fids``) with type, territory and parent."""
    loc = geometry.select_sql(backend, "u.location")
    ter = geometry.select_sql(backend, "r.territory")
    rows: list[tuple[Any, ...]] = []
    for cond in _chunks(fids):
        rows += _fetch(conn, (
            "SELECT u.fid, u.unit_key, u.uuid, u.source_ref, u.name, u.code, u.type_id, t.name, "
            "u.parent_key, u.depth, u.validation_status, u.opening_date, u.closed_date, "
            f"u.aliases, u.extra_fields, {loc}, {ter}, u.path, p.uuid, p.source_ref, p.name "
            "FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
            "LEFT JOIN org_unit_territory r ON r.unit_fid = u.fid "
            "LEFT JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            f"WHERE u.version_id = {int(version_id)}" + cond.format(col="u.fid")))
    frame = _frame(rows, _COLUMNS)
    for col in ("key", "parent_key", "type_id", "depth"):
        frame[col] = np.fromiter((-1 if v is None else int(v) for v in frame[col]),
                                 dtype=np.int64, count=len(frame))
    for col in ("ref", "name", "code", "pref"):
        frame[col] = _blank_to_none(frame[col])
    for col in ("opening", "closed"):
        if backend is Backend.POSTGIS and len(frame):
            frame[col] = _apply(frame[col], lambda v: None if v is None else v.isoformat())
        else:
            frame[col] = _blank_to_none(frame[col])
    for col in ("loc", "ter"):
        if backend is not Backend.GEOPACKAGE and len(frame):
            frame[col] = _apply(frame[col], lambda v: None if v is None else bytes(v))
    return frame


def _load_groups(conn: Connection, version_id: int, keys: np.ndarray | None = None
                 ) -> pd.DataFrame:
    rows: list[tuple[Any, ...]] = []
    for cond in _chunks(keys):
        rows += _fetch(conn, (
            "SELECT m.unit_key, g.fid, g.group_key, g.source_ref, g.name FROM group_membership m "
            "JOIN org_unit_group g ON g.version_id = m.version_id AND g.group_key = m.group_key "
            f"WHERE m.version_id = {int(version_id)}" + cond.format(col="m.unit_key")))
    return _frame(rows, ("key", "gfid", "gkey", "gref", "gname"))


def _names_by_key(conn: Connection, version_id: int, keys: set[int]) -> dict[int, str]:
    out: dict[int, str] = {}
    for cond in _chunks(np.array(sorted(keys), dtype=np.int64) if keys else None):
        if not keys:
            break
        out.update(_fetch(conn, f"SELECT unit_key, name FROM org_unit WHERE version_id = "
                                f"{int(version_id)}" + cond.format(col="unit_key")))
    return out


def _groups_in_use(conn: Connection, va: int, vb: int) -> dict[str, dict[str, Any]]:
    """Groups with at least one member in either version, by ref (else ``name:<name>``)."""
    rows = _fetch(conn, (
        "SELECT g.version_id, g.source_ref, g.name FROM org_unit_group g WHERE g.version_id IN "
        f"({int(va)}, {int(vb)}) AND EXISTS (SELECT 1 FROM group_membership m WHERE "
        "m.version_id = g.version_id AND m.group_key = g.group_key) ORDER BY g.version_id, g.fid"))
    out: dict[str, dict[str, Any]] = {}
    for _vid, ref, name in sorted(rows, key=lambda r: 0 if r[0] == va else 1):
        out.setdefault(ref if ref else f"name:{name}", {"ref": ref or None, "name": name})
    return out


def _level_counts(conn: Connection, version_id: int) -> dict[tuple[int, str], int]:
    """Units per (depth, type name) of a version: one GROUP BY in the database."""
    rows = _fetch(conn, (
        "SELECT u.depth, t.name, count(*) FROM org_unit u LEFT JOIN org_unit_type t "
        f"ON t.fid = u.type_id WHERE u.version_id = {int(version_id)} GROUP BY u.depth, t.name"))
    return {(-1 if d is None else int(d), t or ""): int(n) for d, t, n in rows}


def _candidates(conn: Connection, backend: Backend, va: int, vb: int,
                fields: tuple[str, ...], same_source: bool) -> tuple[np.ndarray, np.ndarray]:
    """Rows of each version that may differ: the bulk comparison, in SQL.

    Pairs by uuid whose compared columns are not identical, units with no uuid partner
    on the other side, pairs whose territory or group memberships differ.  Unchanged
    units never leave the database; the rows returned are compared precisely (with
    normalisation and geometry tolerance) by the vectorised engine.
    """
    pg = backend is Backend.POSTGIS
    neq = "IS DISTINCT FROM" if pg else "IS NOT"
    cols = {"name": "name", "code": "code", "source_ref": "source_ref", "type": "type_id",
            "opening_date": "opening_date", "closed_date": "closed_date",
            "validation_status": "validation_status", "aliases": "aliases",
            "extra_fields": "extra_fields"}
    tests = [f"a.{c} {neq} b.{c}" for f, c in cols.items() if f in fields]
    if "location" in fields:
        tests.append("ST_AsBinary(a.location) IS DISTINCT FROM ST_AsBinary(b.location)" if pg
                     else "a.location IS NOT b.location")
    if "parent" in fields:
        if same_source:
            tests.append(f"a.parent_key {neq} b.parent_key")
        else:
            tests.append(
                f"(SELECT p.uuid FROM org_unit p WHERE p.version_id = a.version_id AND "
                f"p.unit_key = a.parent_key) {neq} (SELECT p.uuid FROM org_unit p WHERE "
                "p.version_id = b.version_id AND p.unit_key = b.parent_key)")
    differs = " OR ".join(["b.fid IS NULL", *tests])
    pairs = _fetch(conn, (
        "SELECT a.fid, b.fid FROM org_unit a LEFT JOIN org_unit b ON b.version_id = "
        f"{vb} AND b.uuid = a.uuid WHERE a.version_id = {va} AND ({differs})"))
    new = _fetch(conn, (
        f"SELECT b.fid, NULL FROM org_unit b WHERE b.version_id = {vb} AND NOT EXISTS "
        f"(SELECT 1 FROM org_unit a WHERE a.version_id = {va} AND a.uuid = b.uuid)"))
    extra: list[tuple[Any, ...]] = []
    if "territory" in fields:
        ter = ("ST_AsBinary({x}.territory) IS DISTINCT FROM ST_AsBinary({y}.territory)" if pg
               else "{x}.territory IS NOT {y}.territory")
        for x, y, vx, vy in (("ta", "tb", va, vb), ("tb", "ta", vb, va)):
            ux, uy = ("ua", "ub") if x == "ta" else ("ub", "ua")
            extra += _fetch(conn, (
                f"SELECT ua.fid, ub.fid FROM org_unit_territory {x} "
                f"JOIN org_unit {ux} ON {ux}.fid = {x}.unit_fid "
                f"JOIN org_unit {uy} ON {uy}.version_id = {vy} AND {uy}.uuid = {ux}.uuid "
                f"LEFT JOIN org_unit_territory {y} ON {y}.unit_fid = {uy}.fid "
                f"WHERE {x}.version_id = {vx} AND " + ter.format(x=x, y=y)))
    if "groups" in fields:
        if same_source:
            member = "SELECT unit_key AS k, group_key AS g FROM group_membership WHERE version_id = {v}"
            key = "unit_key"
        else:
            member = ("SELECT u.uuid AS k, COALESCE(NULLIF(g.source_ref, ''), 'name:' || g.name) "
                      "AS g FROM group_membership m JOIN org_unit u ON u.version_id = "
                      "m.version_id AND u.unit_key = m.unit_key JOIN org_unit_group g ON "
                      "g.version_id = m.version_id AND g.group_key = m.group_key "
                      "WHERE m.version_id = {v}")
            key = "uuid"
        sym = (f"SELECT k FROM ({member.format(v=va)} EXCEPT {member.format(v=vb)}) d1 UNION "
               f"SELECT k FROM ({member.format(v=vb)} EXCEPT {member.format(v=va)}) d2")
        extra += _fetch(conn, (
            f"SELECT a.fid, b.fid FROM org_unit a JOIN org_unit b ON b.version_id = {vb} AND "
            f"b.uuid = a.uuid WHERE a.version_id = {va} AND a.{key} IN ({sym})"))
    fa = [r[0] for r in pairs + extra if r[0] is not None]
    fb = [r[1] for r in pairs + extra if r[1] is not None] + [r[0] for r in new]
    return np.unique(np.array(fa, dtype=np.int64)), np.unique(np.array(fb, dtype=np.int64))


def _frame(rows: list[tuple[Any, ...]], columns: tuple[str, ...]) -> pd.DataFrame:
    """Rows → a frame of object columns (None stays None: no NaN, no type guessing)."""
    import pandas as pd

    n = len(rows)
    data = {}
    for i, name in enumerate(columns):
        data[name] = pd.Series(np.fromiter((r[i] for r in rows), dtype=object, count=n),
                               dtype=object)
    return pd.DataFrame(data)


def _fetch(conn: Connection, sql: str) -> list[tuple[Any, ...]]:
    """Plain tuples straight from the driver (inside the caller's transaction)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(sql)
        return list(cursor.fetchall())
    finally:
        cursor.close()


def _apply(series: pd.Series, fn: Any) -> pd.Series:
    """``fn`` over an object column, keeping None as None (pandas' map makes it NaN)."""
    import pandas as pd

    return pd.Series(np.fromiter((fn(v) for v in series), dtype=object, count=len(series)),
                     index=series.index, dtype=object)


def _blank_to_none(series: pd.Series) -> pd.Series:
    import pandas as pd

    values = series.to_numpy(dtype=object).copy()
    values[np.asarray(values == "", dtype=bool)] = None
    return pd.Series(values, index=series.index, dtype=object)


def _decode_many(backend: Backend, blobs: np.ndarray) -> np.ndarray:
    out = np.full(len(blobs), None, dtype=object)
    present = np.array([b is not None for b in blobs], dtype=bool)
    if not present.any():
        return out
    raw = blobs[present]
    if backend is Backend.GEOPACKAGE:
        raw = np.array([geometry.gpkg_wkb(bytes(b)) for b in raw], dtype=object)
    out[present] = shapely.from_wkb(raw)
    return out


def _neq(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise ``a != b`` for object arrays (None equals None)."""
    if len(a) == 0:
        return np.zeros(0, dtype=bool)
    return ~np.asarray(a == b, dtype=bool)


@lru_cache(maxsize=128)
def _utm(lon_zone: int, north: bool) -> Transformer:
    from pyproj import Transformer

    epsg = (32600 if north else 32700) + lon_zone
    return Transformer.from_crs(4326, epsg, always_xy=True)


def _to_utm(geom: BaseGeometry, ref: BaseGeometry) -> BaseGeometry:
    c = ref.centroid
    zone = min(60, max(1, int((c.x + 180) // 6) + 1))
    tr = _utm(zone, c.y >= 0)
    return shapely.transform(geom, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def geodesic_distance_m(before: BaseGeometry, after: BaseGeometry) -> float:
    """Distance between two lon/lat points on the WGS 84 ellipsoid, in metres."""
    return float(_geod().inv(before.x, before.y, after.x, after.y)[2])


def geodesic_area_m2(geom: BaseGeometry | None) -> float | None:
    """Area of a lon/lat polygon on the WGS 84 ellipsoid, in square metres."""
    if geom is None or geom.is_empty:
        return None
    return abs(_geod().geometry_area_perimeter(geom)[0])


def hausdorff_m(before: BaseGeometry, after: BaseGeometry) -> float:
    """Hausdorff distance in metres, both shapes in the UTM zone of ``before``."""
    return float(shapely.hausdorff_distance(_to_utm(before, before), _to_utm(after, before)))


class DiffJob(Job[VersionDiff]):
    """Diff two versions as a job (progress per stage; cancel between stages)."""

    title = "Comparing versions"

    def __init__(self, reg: Registry, left: str | VersionRef | tuple[str, int | None],
                 right: str | VersionRef | tuple[str, int | None], *,
                 fields: list[str] | tuple[str, ...] | None = None,
                 include_unchanged: bool = False) -> None:
        super().__init__()
        self.reg = reg
        self.left_spec = left
        self.right_spec = right
        self.fields = expand_fields(fields)
        self.include_unchanged = include_unchanged

    def execute(self) -> VersionDiff:
        start = time.perf_counter()
        backend = self.reg.backend
        with self.reg.read() as conn:
            left = resolve_spec(conn, self.left_spec)
            right = resolve_spec(conn, self.right_spec)
            same_source = left.source_id == right.source_id
            self.report(0, 6, f"Finding differences between {left.label} and {right.label}")
            levels_a = _level_counts(conn, left.id)
            levels_b = _level_counts(conn, right.id)
            fa: np.ndarray | None = None
            fb: np.ndarray | None = None
            if not self.include_unchanged:
                fa, fb = _candidates(conn, backend, left.id, right.id, self.fields, same_source)
                # most rows differ (e.g. two sources with no shared uuid): read them all —
                # both sides, or units paired with unread rows would look deleted or new
                if len(fa) > sum(levels_a.values()) // 2 or len(fb) > sum(levels_b.values()) // 2:
                    fa = fb = None
            self.report(1, 6, "Reading the units that differ")
            a = _load_units(conn, backend, left.id, fa)
            b = _load_units(conn, backend, right.id, fb)
            ga = _load_groups(conn, left.id, None if fa is None else a["key"].to_numpy())
            gb = _load_groups(conn, right.id, None if fb is None else b["key"].to_numpy())
            self.report(2, 6, "Pairing units")
            engine = _Engine(backend, a, b, ga, gb, self.fields, same_source=same_source)
            engine.version_ids = {"a": left.id, "b": right.id}
            engine.pair()
            self.report(3, 6, "Comparing fields")
            engine.compare()
            self.report(4, 6, "Measuring geometry changes")
            engine.measure()
            self.report(5, 6, "Building the report")
            result = engine.build(conn, left, right, self.include_unchanged, levels_a, levels_b)
        result.seconds = time.perf_counter() - start
        self.report(6, 6, "Done")
        return result


def diff_versions(reg: Registry, left: str | VersionRef | tuple[str, int | None],
                  right: str | VersionRef | tuple[str, int | None], *,
                  fields: list[str] | tuple[str, ...] | None = None,
                  include_unchanged: bool = False) -> VersionDiff:
    """Compare ``left`` (before) with ``right`` (after); see the module docstring.

    ``left``/``right`` are ``"SOURCE[:NUMBER]"`` specs, (source, number) tuples or
    resolved :class:`VersionRef`\\ s.  Unchanged units are counted but only listed
    with ``include_unchanged``.
    """
    return DiffJob(reg, left, right, fields=fields, include_unchanged=include_unchanged).run()


class _Engine:
    """The vectorised comparison of two loaded versions (internal)."""

    def __init__(self, backend: Backend, a: pd.DataFrame, b: pd.DataFrame, ga: pd.DataFrame,
                 gb: pd.DataFrame, fields: tuple[str, ...], same_source: bool) -> None:
        self.backend = backend
        self.a, self.b, self.ga, self.gb = a, b, ga, gb
        self.fields = fields
        self.same_source = same_source
        self.version_ids: dict[str, int] = {}
        self.changed: dict[str, np.ndarray] = {}
        self.geo_a: dict[str, np.ndarray] = {}
        self.geo_b: dict[str, np.ndarray] = {}
        self.distance = np.zeros(0)
        self.area_a = np.zeros(0)
        self.area_b = np.zeros(0)
        self.hausdorff = np.zeros(0)

    # pairing: ia[i] / ib[i] are the rows of pair i on each side (-1 = absent)
    def pair(self) -> None:
        import pandas as pd

        a, b = self.a, self.b
        left = pd.DataFrame({"uuid": a["uuid"], "ia": np.arange(len(a))})
        right = pd.DataFrame({"uuid": b["uuid"], "ib": np.arange(len(b))})
        by_uuid = left.dropna(subset=["uuid"]).merge(right.dropna(subset=["uuid"]), on="uuid")
        ia1, ib1 = by_uuid["ia"].to_numpy(), by_uuid["ib"].to_numpy()
        rest_a = np.setdiff1d(np.arange(len(a)), ia1)
        rest_b = np.setdiff1d(np.arange(len(b)), ib1)
        la = pd.DataFrame({"ref": a["ref"].to_numpy()[rest_a], "ia": rest_a}).dropna(subset=["ref"])
        rb = pd.DataFrame({"ref": b["ref"].to_numpy()[rest_b], "ib": rest_b}).dropna(subset=["ref"])
        by_ref = la.merge(rb, on="ref")
        ia2, ib2 = by_ref["ia"].to_numpy(), by_ref["ib"].to_numpy()
        self.ia_m = np.concatenate([ia1, ia2]).astype(np.int64)
        self.ib_m = np.concatenate([ib1, ib2]).astype(np.int64)
        self.matched_by = np.array(["uuid"] * len(ia1) + ["source_ref"] * len(ia2), dtype=object)
        self.a_only = np.setdiff1d(rest_a, ia2)
        self.b_only = np.setdiff1d(rest_b, ib2)
        n, na, nb = len(self.ia_m), len(self.a_only), len(self.b_only)
        self.pair_a = np.full(len(a), -1, dtype=np.int64)
        self.pair_a[self.ia_m] = np.arange(n)
        self.pair_a[self.a_only] = n + np.arange(na)
        self.pair_b = np.full(len(b), -1, dtype=np.int64)
        self.pair_b[self.ib_m] = np.arange(n)
        self.pair_b[self.b_only] = n + na + np.arange(nb)
        self.row_of_key_a = pd.Index(a["key"].to_numpy())
        self.row_of_key_b = pd.Index(b["key"].to_numpy())

    def _col(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.a[name].to_numpy(dtype=object)[self.ia_m],
                self.b[name].to_numpy(dtype=object)[self.ib_m])

    def compare(self) -> None:
        simple = {"name": "name", "code": "code", "source_ref": "ref", "type": "type_id",
                  "opening_date": "opening", "closed_date": "closed",
                  "validation_status": "vstatus"}
        for f, col in simple.items():
            if f in self.fields:
                va, vb = self._col(col)
                self.changed[f] = _neq(va, vb)
        if "parent" in self.fields:
            # the parent is the same unit when it has the same uuid (same source: the
            # same stable key), else the same source ref (how two sources are paired)
            if self.same_source:
                ka, kb = self._col("parent_key")
                self.changed["parent"] = _neq(ka, kb)
            else:
                ua, ub = self._col("puuid")
                ra, rb = self._col("pref")
                same_uuid = np.asarray(ua == ub, dtype=bool) & np.array(
                    [x is not None for x in ua], dtype=bool)
                same_ref = np.asarray(ra == rb, dtype=bool) & np.array(
                    [x is not None for x in ra], dtype=bool)
                no_parent = np.array([x is None and y is None for x, y in zip(ua, ub,
                                                                              strict=True)],
                                     dtype=bool)
                self.changed["parent"] = ~(same_uuid | same_ref | no_parent)
        for f, col in (("aliases", "aliases"), ("extra_fields", "extra")):
            if f in self.fields:
                va, vb = self._col(col)
                cand = np.flatnonzero(_neq(va, vb))
                out = np.zeros(len(va), dtype=bool)
                for i in cand:
                    out[i] = not values_equal(f, va[i], vb[i])
                self.changed[f] = out
        if "groups" in self.fields:
            self.changed["groups"] = self._groups_changed()
        for f, col in (("location", "loc"), ("territory", "ter")):
            if f in self.fields:
                va, vb = self._col(col)
                cand = np.flatnonzero(_neq(va, vb))
                out = np.zeros(len(va), dtype=bool)
                ga = _decode_many(self.backend, va[cand])
                gb = _decode_many(self.backend, vb[cand])
                both = np.array([x is not None and y is not None for x, y in zip(ga, gb,
                                                                                strict=True)],
                                dtype=bool)
                out[cand] = True
                if both.any():
                    same = shapely.equals_exact(shapely.normalize(ga[both].astype(object)),
                                                shapely.normalize(gb[both].astype(object)),
                                                tolerance=GEOMETRY_TOLERANCE)
                    out[cand[both]] = ~same
                self.changed[f] = out
                self.geo_a[f] = np.full(len(va), None, dtype=object)
                self.geo_b[f] = np.full(len(va), None, dtype=object)
                self.geo_a[f][cand] = ga
                self.geo_b[f][cand] = gb

    def _group_identity(self, frame: pd.DataFrame) -> pd.Series:
        if self.same_source:
            return frame["gkey"].astype(str)
        ref = frame["gref"].astype(object)
        return ref.where(ref.notna() & (ref != ""), "name:" + frame["gname"].astype(str))

    def _groups_changed(self) -> np.ndarray:
        import pandas as pd

        n = len(self.ia_m)
        out = np.zeros(n, dtype=bool)
        ga, gb = self.ga, self.gb
        if not len(ga) and not len(gb):
            return out
        ida, idb = self._group_identity(ga), self._group_identity(gb)
        codes, _ = pd.factorize(pd.concat([ida, idb], ignore_index=True))
        ca, cb = codes[: len(ga)], codes[len(ga):]
        ra = self.row_of_key_a.get_indexer(ga["key"].to_numpy())
        rb = self.row_of_key_b.get_indexer(gb["key"].to_numpy())
        pa = np.where(ra >= 0, self.pair_a[np.maximum(ra, 0)], -1)
        pb = np.where(rb >= 0, self.pair_b[np.maximum(rb, 0)], -1)
        width = int(max(codes.max(initial=0), 0)) + 1
        ea = pa[(pa >= 0) & (pa < n)] * width + ca[(pa >= 0) & (pa < n)]
        eb = pb[(pb >= 0) & (pb < n)] * width + cb[(pb >= 0) & (pb < n)]
        diff = np.setxor1d(ea, eb)
        out[np.unique(diff // width)] = True
        return out

    def measure(self) -> None:
        n = len(self.ia_m)
        self.distance = np.full(n, np.nan)
        self.area_a = np.full(n, np.nan)
        self.area_b = np.full(n, np.nan)
        self.hausdorff = np.full(n, np.nan)
        loc_changed = self.changed.get("location")
        if loc_changed is not None and loc_changed.any():
            idx = np.flatnonzero(loc_changed)
            ga, gb = self.geo_a["location"][idx], self.geo_b["location"][idx]
            ok = np.array([x is not None and y is not None for x, y in zip(ga, gb, strict=True)],
                          dtype=bool)
            if ok.any():
                xa, ya = shapely.get_x(ga[ok].astype(object)), shapely.get_y(ga[ok].astype(object))
                xb, yb = shapely.get_x(gb[ok].astype(object)), shapely.get_y(gb[ok].astype(object))
                _az1, _az2, dist = _geod().inv(xa, ya, xb, yb)
                self.distance[idx[ok]] = dist
        ter_changed = self.changed.get("territory")
        if ter_changed is not None and ter_changed.any():
            for i in np.flatnonzero(ter_changed):
                before, after = self.geo_a["territory"][i], self.geo_b["territory"][i]
                self.area_a[i] = geodesic_area_m2(before) or np.nan
                self.area_b[i] = geodesic_area_m2(after) or np.nan
                if before is not None and after is not None:
                    self.hausdorff[i] = hausdorff_m(before, after)

    # --- the result ---------------------------------------------------------------------

    def statuses(self) -> np.ndarray:
        n = len(self.ia_m)
        status = np.full(n, "unchanged", dtype=object)
        fields = [f for f in self.fields if f in self.changed]
        any_change = np.zeros(n, dtype=bool)
        for f in fields:
            any_change |= self.changed[f]
        status[any_change] = "modified"
        if "parent" in self.changed:
            status[self.changed["parent"]] = "moved"
        if "closed_date" in self.changed:
            ca, cb = self._col("closed")
            newly = self.changed["closed_date"] & np.array([x is None for x in ca], dtype=bool) & \
                np.array([y is not None for y in cb], dtype=bool)
            status[newly] = "closed"
        return status

    def build(self, conn: Connection, left: VersionRef, right: VersionRef,
              include_unchanged: bool, levels_a: dict[tuple[int, str], int],
              levels_b: dict[tuple[int, str], int]) -> VersionDiff:
        a, b = self.a, self.b
        status_m = self.statuses()
        n, na, nb = len(self.ia_m), len(self.a_only), len(self.b_only)
        all_status = np.concatenate([status_m, np.full(na, "deleted", dtype=object),
                                     np.full(nb, "new", dtype=object)])
        # level and type of each pair: the "after" side when present
        depth = np.concatenate([b["depth"].to_numpy()[self.ib_m], a["depth"].to_numpy()[self.a_only],
                                b["depth"].to_numpy()[self.b_only]])
        types = np.concatenate([b["type_name"].to_numpy(dtype=object)[self.ib_m],
                                a["type_name"].to_numpy(dtype=object)[self.a_only],
                                b["type_name"].to_numpy(dtype=object)[self.b_only]])
        level_rows: dict[tuple[int, str], dict[str, int]] = {}
        seen_b: dict[tuple[int, str], int] = {}
        for p, (d, t, st) in enumerate(zip(depth, types, all_status, strict=True)):
            level = (int(d), t or "")
            counts = level_rows.setdefault(level, {s: 0 for s in STATUSES})
            counts[str(st)] += 1
            if p < n or p >= n + na:  # the pair has a row in the right-hand version
                seen_b[level] = seen_b.get(level, 0) + 1
        # rows of the right-hand version that never left the database are unchanged pairs
        hidden = 0
        for level, count in levels_b.items():
            rest = count - seen_b.get(level, 0)
            if rest > 0:
                level_rows.setdefault(level, {s: 0 for s in STATUSES})["unchanged"] += rest
                hidden += rest
        totals = {s: int((all_status == s).sum()) for s in STATUSES}
        totals["unchanged"] += hidden
        by_level: list[dict[str, Any]] = []
        for (d, t), counts in sorted(level_rows.items()):
            by_level.append({"depth": None if d < 0 else d, "type": t or None, **counts,
                             "total": sum(counts.values())})
        listed = np.flatnonzero(all_status != "unchanged") if not include_unchanged else \
            np.arange(len(all_status))
        self._member_lists()
        self._ancestor_names(conn, listed)
        units = [self._unit(int(p), str(all_status[p])) for p in listed]
        order = {s: i for i, s in enumerate(STATUSES)}
        units.sort(key=lambda u: (order[u.status], u.depth if u.depth is not None else 99,
                                  u.name or ""))
        counts = {"left_units": sum(levels_a.values()), "right_units": sum(levels_b.values()),
                  "paired": n + hidden,
                  "paired_by_uuid": int((self.matched_by == "uuid").sum()) + hidden,
                  "paired_by_source_ref": int((self.matched_by == "source_ref").sum())}
        groups = _groups_in_use(conn, self.version_ids["a"], self.version_ids["b"])
        return VersionDiff(left, right, self.fields, units, totals, by_level, counts,
                           include_unchanged, groups=groups)

    def _member_lists(self) -> None:
        """unit row → its groups ({ref, name, id}), per side, for the snapshots."""
        def lists(g: pd.DataFrame, row_of_key: pd.Index) -> dict[int, list[dict[str, Any]]]:
            out: dict[int, list[dict[str, Any]]] = {}
            rows = row_of_key.get_indexer(g["key"].to_numpy())
            for r, fid, ref, name in zip(rows, g["gfid"], g["gref"], g["gname"], strict=True):
                out.setdefault(int(r), []).append({"ref": ref, "name": name, "id": int(fid)})
            for members in out.values():
                members.sort(key=lambda m: (m["ref"] or "", m["name"]))
            return out

        self.members_a = lists(self.ga, self.row_of_key_a)
        self.members_b = lists(self.gb, self.row_of_key_b)

    def _arrays(self, side: str) -> dict[str, np.ndarray]:
        cache = self.__dict__.setdefault("_array_cache", {})
        if side not in cache:
            frame = self.a if side == "a" else self.b
            cache[side] = {c: frame[c].to_numpy(dtype=object) for c in frame.columns}
        return cache[side]  # type: ignore[no-any-return]

    def _ancestor_names(self, conn: Connection, listed: np.ndarray) -> None:
        """Names of the ancestors of the listed units, per side (one query each)."""
        n, na = len(self.ia_m), len(self.a_only)
        rows_a = [int(self.ia_m[p]) if p < n else int(self.a_only[p - n])
                  for p in listed if p < n + na]
        rows_b = [int(self.ib_m[p]) if p < n else int(self.b_only[p - n - na])
                  for p in listed if p < n or p >= n + na]
        self.names: dict[str, dict[int, str]] = {}
        for side, rows, frame in (("a", rows_a, self.a), ("b", rows_b, self.b)):
            paths = frame["path"].to_numpy(dtype=object)
            keys = {int(k) for r in rows for k in _path_keys(paths[r])}
            vid = self.version_ids[side]
            self.names[side] = _names_by_key(conn, vid, keys) if keys else {}

    def _snapshot(self, side: str, row: int) -> dict[str, Any]:
        cols = self._arrays(side)
        members = self.members_a if side == "a" else self.members_b
        r = {c: v[row] for c, v in cols.items()}
        names = self.names.get(side, {})
        ancestors = [names.get(k, "") for k in reversed(_path_keys(r["path"])[:-1])]
        loc = self._geom(side, row, "loc")
        ter = self._geom(side, row, "ter")
        return {
            "uuid": r["uuid"],
            "source_ref": r["ref"],
            "name": r["name"],
            "code": r["code"],
            "type": r["type_name"],
            "depth": None if int(r["depth"]) < 0 else int(r["depth"]),
            "parent_uuid": r["puuid"],
            "parent_ref": r["pref"],
            "parent_name": r["pname"],
            "ancestors": ancestors,
            "opening_date": r["opening"],
            "closed_date": r["closed"],
            "validation_status": r["vstatus"],
            "aliases": normalise("aliases", r["aliases"]) or [],
            "extra_fields": normalise("extra_fields", r["extra"]) or {},
            "groups": members.get(row, []),
            "location": [loc.x, loc.y] if loc is not None and not loc.is_empty else None,
            "territory": _territory_summary(ter),
            "_location": loc,
            "_territory": ter,
        }

    def _geom(self, side: str, row: int, col: str) -> BaseGeometry | None:
        blob = self._arrays(side)[col][row]
        if blob is None:
            return None
        return geometry.decode(self.backend, blob)

    def _unit(self, p: int, status: str) -> UnitDiff:
        n, na = len(self.ia_m), len(self.a_only)
        if p < n:
            ra, rb = int(self.ia_m[p]), int(self.ib_m[p])
        elif p < n + na:
            ra, rb = int(self.a_only[p - n]), -1
        else:
            ra, rb = -1, int(self.b_only[p - n - na])
        before = self._snapshot("a", ra) if ra >= 0 else None
        after = self._snapshot("b", rb) if rb >= 0 else None
        main = after or before
        assert main is not None
        changes: list[FieldChange] = []
        if before is not None and after is not None:
            for f in self.fields:
                flags = self.changed.get(f)
                if flags is not None and flags[p]:
                    changes.append(FieldChange(f, _display(f, before), _display(f, after)))
        unit = UnitDiff(
            status=status, uuid=main["uuid"], source_ref=main["source_ref"], name=main["name"],
            type=main["type"], depth=main["depth"],
            matched_by=str(self.matched_by[p]) if p < n else None, changes=changes,
            location_before=before.pop("_location") if before else None,
            location_after=after.pop("_location") if after else None,
            territory_before=before.pop("_territory") if before else None,
            territory_after=after.pop("_territory") if after else None,
            before=before, after=after,
        )
        if p < n:
            unit.distance_m = _num(self.distance[p])
            unit.area_before_m2 = _num(self.area_a[p])
            unit.area_after_m2 = _num(self.area_b[p])
            unit.hausdorff_m = _num(self.hausdorff[p])
        return unit


def _path_keys(path: str | None) -> list[int]:
    """``/k1/k2/k3/`` → [k1, k2, k3] (root first, the unit itself last)."""
    return [int(k) for k in (path or "").strip("/").split("/") if k]


def _display(field_name: str, snap: dict[str, Any]) -> Any:
    """A field's value in a snapshot, as shown in a change."""
    if field_name == "parent":
        return {"uuid": snap["parent_uuid"], "ref": snap["parent_ref"], "name": snap["parent_name"]}
    if field_name == "groups":
        return [g["name"] for g in snap["groups"]]
    if field_name == "opening_date" or field_name == "closed_date":
        return snap[field_name]
    return snap.get(field_name)


def parent_labels(before: dict[str, Any] | None, after: dict[str, Any] | None
                  ) -> tuple[str | None, str | None]:
    """How to name a unit's parent before and after a move: by name, and — when both
    sides have the same name but are different units (two "Karene"s, a district and its
    chiefdom) — with each one's ref, else the start of its uuid, so "Karene → Karene"
    never hides a move.  ``before``/``after`` are ``{"name", "ref", "uuid"}`` (a parent
    change's values) or None (no parent: a root)."""
    b, a = before or {}, after or {}
    nb, na = b.get("name"), a.get("name")
    if nb is not None and nb == na:
        nb, na = f"{nb} ({_which(b)})", f"{na} ({_which(a)})"
    return nb, na


def _which(parent: dict[str, Any]) -> str:
    if parent.get("ref"):
        return f"ref {parent['ref']}"
    return f"uuid {str(parent.get('uuid') or '?')[:8]}…"


def _territory_summary(ter: BaseGeometry | None) -> dict[str, Any] | None:
    if ter is None or ter.is_empty:
        return None
    return {"area_m2": _round(geodesic_area_m2(ter)),
            "vertices": int(shapely.get_num_coordinates(ter)),
            "bounds": [round(v, 6) for v in ter.bounds]}


def _num(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)


def _jsonable(value: Any) -> Any:
    if isinstance(value, BaseGeometry):
        return value.wkt
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, tuple):
        return list(value)
    return value
