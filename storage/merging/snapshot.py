"""A version read into memory for merging, and the JSON form of field values.

A :class:`Snapshot` holds every unit of one version keyed by ``uuid``, with its
mergeable fields (:data:`FIELDS`) in comparable form: ``parent`` is the parent's
uuid, ``type`` the type id (types are registry-wide), ``groups`` a frozenset of
group keys, ``location``/``territory`` shapely geometries.  Values are compared
with :func:`storage.diff.values_equal`, the same comparison the diff uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, text

from storage import geometry
from storage.backends import Backend
from storage.bulk import VALIDATION_STATUSES, parse_date
from storage.diff import values_equal
from storage.errors import InvalidInput, NotFound
from storage.registry import json_value
from storage.versions import VersionRef

#: Every field a merge combines, in display order.
FIELDS: tuple[str, ...] = (
    "name",
    "code",
    "source_ref",
    "type",
    "parent",
    "validation_status",
    "opening_date",
    "closed_date",
    "aliases",
    "extra_fields",
    "location",
    "territory",
    "groups",
)
#: Fields written with one UPDATE of the org_unit row (column name per field).
COLUMNS: dict[str, str] = {
    "name": "name",
    "code": "code",
    "source_ref": "source_ref",
    "type": "type_id",
    "validation_status": "validation_status",
    "opening_date": "opening_date",
    "closed_date": "closed_date",
    "aliases": "aliases",
    "extra_fields": "extra_fields",
}


@dataclass
class UnitState:
    """One unit: identity and the value of every field of :data:`FIELDS`."""

    uuid: str
    key: int | None  # stable unit_key; None for a unit a merge is about to create
    values: dict[str, Any]

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def copy(self) -> UnitState:
        return UnitState(self.uuid, self.key, dict(self.values))


@dataclass
class GroupDef:
    key: int | None
    name: str
    source_ref: str | None = None
    short_name: str | None = None
    code: str | None = None


@dataclass
class Snapshot:
    version: VersionRef
    units: dict[str, UnitState]
    groups: dict[int, GroupDef]
    key_to_uuid: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key_to_uuid:
            self.key_to_uuid = {u.key: u.uuid for u in self.units.values() if u.key is not None}


def same(name: str, a: Any, b: Any) -> bool:
    """True when two values of field ``name`` are the same value."""
    if a is b or (name not in ("location", "territory") and type(a) is type(b) and a == b):
        return True  # the common case, without normalising
    if name in ("type", "parent"):
        return (a or None) == (b or None)
    return values_equal(name, a, b)


def is_empty(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, str | list | dict | tuple | frozenset | set):
        return len(value) == 0 if not isinstance(value, str) else not value.strip()
    if isinstance(value, BaseGeometry):
        return bool(value.is_empty)
    return False


def load_snapshot(conn: Connection, backend: Backend, version: VersionRef) -> Snapshot:
    """Read every unit, territory, group and membership of ``version`` (four queries)."""
    loc = geometry.select_sql(backend, "u.location")
    ter = geometry.select_sql(backend, "t.territory")
    rows = conn.execute(
        text(
            f"SELECT u.uuid, u.unit_key, u.source_ref, u.name, u.code, u.type_id, p.uuid, "
            f"u.validation_status, u.opening_date, u.closed_date, u.aliases, u.extra_fields, "
            f"{loc}, {ter} FROM org_unit u "
            "LEFT JOIN org_unit p ON p.version_id = u.version_id AND p.unit_key = u.parent_key "
            "LEFT JOIN org_unit_territory t ON t.unit_fid = u.fid "
            "WHERE u.version_id = :v"
        ),
        {"v": version.id},
    ).all()
    members: dict[int, set[int]] = {}
    for unit_key, group_key in conn.execute(
        text("SELECT unit_key, group_key FROM group_membership WHERE version_id = :v"),
        {"v": version.id},
    ):
        members.setdefault(int(unit_key), set()).add(int(group_key))
    units: dict[str, UnitState] = {}
    for r in rows:
        key = int(r[1])
        units[r[0]] = UnitState(
            r[0],
            key,
            {
                "source_ref": r[2],
                "name": r[3],
                "code": r[4],
                "type": r[5],
                "parent": r[6],
                "validation_status": r[7],
                "opening_date": _date(r[8]),
                "closed_date": _date(r[9]),
                "aliases": json_value(r[10]) or None,
                "extra_fields": json_value(r[11]) or None,
                "location": geometry.decode(backend, r[12]),
                "territory": geometry.decode(backend, r[13]),
                "groups": frozenset(members.get(key, ())),
            },
        )
    groups = {
        int(g[0]): GroupDef(int(g[0]), g[1], g[2], g[3], g[4])
        for g in conn.execute(
            text(
                "SELECT group_key, name, source_ref, short_name, code FROM org_unit_group "
                "WHERE version_id = :v"
            ),
            {"v": version.id},
        )
    }
    return Snapshot(version, units, groups)


def _date(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if hasattr(value, "isoformat") else str(value)[:10] or None


def depth_order(units: dict[str, UnitState]) -> list[str]:
    """Uuids ordered parents first (by depth in the tree the ``parent`` values make)."""
    depth: dict[str, int] = {}

    def of(uuid: str) -> int:
        chain: list[str] = []
        cur: str | None = uuid
        while cur is not None and cur not in depth and cur in units and cur not in chain:
            chain.append(cur)
            cur = units[cur].get("parent")
        base = depth.get(cur, 0) if cur is not None else 0
        for i, u in enumerate(reversed(chain)):
            depth[u] = base + i + 1
        return depth[uuid]

    for u in units:
        of(u)
    return sorted(units, key=lambda u: depth[u])


def find_cycle(units: dict[str, UnitState]) -> list[str] | None:
    """The uuids of one cycle of parent links, or None when the tree is acyclic."""
    state: dict[str, int] = {}  # 1 = on the current walk, 2 = known to reach a root
    for start in units:
        walk: list[str] = []
        cur: str | None = start
        while cur is not None and cur in units and state.get(cur) is None:
            state[cur] = 1
            walk.append(cur)
            cur = units[cur].get("parent")
        if cur is not None and state.get(cur) == 1:
            return walk[walk.index(cur):]
        for u in walk:
            state[u] = 2
    return None


# --- JSON form of values (conflict rows, reports, --value) ------------------------------


@dataclass
class Names:
    """Type and group names of a registry/version, to show and read values by name."""

    types: dict[int, str]
    groups: dict[int, str]

    @classmethod
    def load(cls, conn: Connection, version_id: int | None = None,
             extra_groups: dict[int, GroupDef] | None = None) -> Names:
        types = {int(r[0]): r[1] for r in conn.execute(text("SELECT fid, name FROM org_unit_type"))}
        groups = {k: g.name for k, g in (extra_groups or {}).items() if k is not None}
        if version_id is not None:
            for key, name in conn.execute(
                text("SELECT group_key, name FROM org_unit_group WHERE version_id = :v"),
                {"v": version_id},
            ):
                groups[int(key)] = name
        return cls(types, groups)


def to_json(name: str, value: Any, names: Names) -> Any:
    """A field value → JSON (types and groups by name, points as [lon, lat], areas as WKT)."""
    if value is None:
        return None
    if name == "type":
        return names.types.get(int(value), str(value))
    if name == "groups":
        return sorted(names.groups.get(int(k), str(k)) for k in value)
    if name == "location":
        return None if value.is_empty else [value.x, value.y]
    if name == "territory":
        return None if value.is_empty else shapely.to_wkt(value, rounding_precision=7)
    return value


def unit_to_json(unit: UnitState, names: Names) -> dict[str, Any]:
    return {"uuid": unit.uuid} | {f: to_json(f, unit.get(f), names) for f in FIELDS}


def from_json(name: str, value: Any, conn: Connection, version: VersionRef,
              where: str) -> Any:
    """JSON (or text typed by a user) → the field's value in ``version`` (for writing)."""
    if isinstance(value, str) and name in ("aliases", "extra_fields", "groups", "location"):
        stripped = value.strip()
        if stripped[:1] in ("[", "{"):
            try:
                value = json.loads(stripped)
            except ValueError as error:
                raise InvalidInput(f"{where}: field {name!r}: {value!r} is not valid JSON "
                                   f"({error}).") from None
    if value is None or (isinstance(value, str) and not value.strip()):
        return frozenset() if name == "groups" else None
    if name in ("name", "code", "source_ref"):
        return str(value).strip()
    if name == "validation_status":
        if value not in VALIDATION_STATUSES:
            raise InvalidInput(f"{where}: field 'validation_status' must be one of "
                               f"{', '.join(VALIDATION_STATUSES)} (got {value!r}).")
        return value
    if name in ("opening_date", "closed_date"):
        return parse_date(str(value), f"{where}: field {name!r}")
    if name == "type":
        row = conn.execute(text("SELECT fid FROM org_unit_type WHERE name = :n"),
                           {"n": str(value).strip()}).first()
        if row is None:
            raise InvalidInput(f"{where}: field 'type': no org-unit type named {value!r}.")
        return int(row[0])
    if name == "parent":
        row = conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v AND (uuid = :i OR "
                 "source_ref = :i) ORDER BY CASE WHEN uuid = :i THEN 0 ELSE 1 END LIMIT 1"),
            {"v": version.id, "i": str(value).strip()},
        ).first()
        if row is None:
            raise NotFound(f"{where}: field 'parent': no unit with uuid or ref {value!r} in "
                           f"{version.label}.")
        return row[0]
    if name == "aliases":
        items = value if isinstance(value, list) else str(value).split(",")
        return [str(a).strip() for a in items if str(a).strip()] or None
    if name == "extra_fields":
        if not isinstance(value, dict):
            raise InvalidInput(f"{where}: field 'extra_fields' must be a JSON object.")
        return value or None
    if name == "groups":
        items = value if isinstance(value, list) else str(value).split(",")
        keys = []
        for item in (str(i).strip() for i in items):
            if not item:
                continue
            row = conn.execute(
                text("SELECT group_key FROM org_unit_group WHERE version_id = :v AND "
                     "(name = :g OR source_ref = :g) ORDER BY CASE WHEN name = :g THEN 0 ELSE 1 "
                     "END LIMIT 1"),
                {"v": version.id, "g": item},
            ).first()
            if row is None:
                raise NotFound(f"{where}: field 'groups': no group {item!r} in {version.label}.")
            keys.append(int(row[0]))
        return frozenset(keys)
    if name == "location":
        return _point(value, where)
    if name == "territory":
        try:
            geom = (shapely.from_geojson(json.dumps(value)) if isinstance(value, dict)
                    else shapely.from_wkt(str(value)))
        except shapely.errors.GEOSException as error:
            raise InvalidInput(f"{where}: field 'territory': not WKT or GeoJSON ({error}).") from None
        return geometry.as_multipolygon(geom)
    raise InvalidInput(f"{where}: unknown field {name!r}; fields are {', '.join(FIELDS)}.")


def _point(value: Any, where: str) -> BaseGeometry:
    from shapely.geometry import Point

    try:
        if isinstance(value, list | tuple):
            x, y = float(value[0]), float(value[1])
        elif str(value).strip().upper().startswith("POINT"):
            geom = shapely.from_wkt(str(value))
            x, y = geom.x, geom.y
        else:
            x, y = (float(p) for p in str(value).split(","))
    except (ValueError, IndexError, TypeError, shapely.errors.GEOSException):
        raise InvalidInput(f"{where}: field 'location': {value!r} is not 'lon,lat', [lon, lat] "
                           "or POINT (lon lat).") from None
    if not (-180 <= x <= 180 and -90 <= y <= 90):
        raise InvalidInput(f"{where}: field 'location' ({x}, {y}) is not a longitude/latitude "
                           "in degrees.")
    return Point(x, y)
