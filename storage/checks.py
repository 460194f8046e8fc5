"""Quality checks of one version's tree and geometry, as plain JSON-ready findings.

``run_checks(reg, "SL")`` reads the version once and reports what a GIS officer
should look at: broken hierarchy (cycles, orphans, stale paths, several roots),
levels that do not fit the unit's type, duplicate sibling names, impossible dates
and geometry problems (invalid or empty shapes, points at 0°, 0°, points outside
the territory of the parent).  Set work is done in SQL; geometry work in Python
with shapely's vectorised functions, each ancestor territory prepared once.

The checks only read: they never change the registry.
"""

from __future__ import annotations

import datetime as dt
import math
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from shapely.errors import GEOSException
from shapely.validation import explain_validity
from sqlalchemy import Connection, text

from storage import geometry
from storage.backends import Backend
from storage.errors import InvalidInput
from storage.registry import Registry
from storage.versions import VersionRef, resolve_version

ERROR = "error"
WARNING = "warning"

#: every check, in report order, with its severity
CHECKS: dict[str, str] = {
    "cycle": ERROR,
    "orphan": ERROR,
    "stale_path": ERROR,
    "level_type_mismatch": WARNING,
    "duplicate_name": WARNING,
    "point_outside_parent": WARNING,
    "opening_after_closing": ERROR,
    "invalid_geometry": ERROR,
    "empty_geometry": WARNING,
    "null_island": WARNING,
    "several_roots": WARNING,
}

#: a point this close (degrees) to a territory still counts as inside it
TOLERANCE_DEG = 1e-9
#: a point this close (degrees) to 0°, 0° is on "null island"
NULL_ISLAND_DEG = 1e-6
METRES_PER_DEGREE = 111_320.0

_GEOMETRY_CHECKS = {"point_outside_parent", "invalid_geometry", "empty_geometry", "null_island"}


@dataclass
class _Unit:
    fid: int
    key: int
    uuid: str
    source_ref: str | None
    name: str
    parent_key: int | None
    path: str | None
    depth: int | None
    type_name: str | None

    @property
    def label(self) -> str:
        """How a message names the unit: "Facility 'Kakua CHP'"."""
        return f"{self.type_name} {self.name!r}" if self.type_name else repr(self.name)

    def ref(self) -> dict[str, Any]:
        return {"uuid": self.uuid, "source_ref": self.source_ref, "name": self.name}


class _Report:
    def __init__(self, selected: list[str]) -> None:
        self.selected = selected
        self.findings: list[dict[str, Any]] = []

    def add(self, check: str, unit: _Unit, message: str, **details: Any) -> None:
        self.findings.append(
            {
                "check": check,
                "severity": CHECKS[check],
                "unit_uuid": unit.uuid,
                "source_ref": unit.source_ref,
                "name": unit.name,
                "message": message,
                "details": details,
            }
        )


def normalize_name(name: str) -> str:
    """Names compared for duplicates: no case, no accents, single spaces."""
    decomposed = unicodedata.normalize("NFKD", name)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())


def _selected(checks: Iterable[str] | str | None) -> list[str]:
    if checks is None:
        return list(CHECKS)
    wanted = [checks] if isinstance(checks, str) else list(checks)
    unknown = [c for c in wanted if c not in CHECKS]
    if unknown:
        raise InvalidInput(
            f"Unknown check(s) {', '.join(repr(c) for c in unknown)}; "
            f"the checks are {', '.join(CHECKS)}."
        )
    return [c for c in CHECKS if c in wanted]


def run_checks(
    reg: Registry,
    source: str,
    number: int | None = None,
    *,
    checks: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """Run the quality checks (all, or those named in ``checks``) on one version.

    Returns ``{"version", "ok", "summary", "counts", "findings"}``: ``ok`` is true when
    no finding is an error (warnings are allowed); ``summary`` counts findings per
    check run (0 when clean); findings come errors first, then by check and name.
    """
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        return check_version(reg, conn, version, checks=checks)


def check_version(
    reg: Registry,
    conn: Connection,
    version: VersionRef,
    *,
    checks: Iterable[str] | str | None = None,
) -> dict[str, Any]:
    """:func:`run_checks` on an open connection (e.g. inside the write transaction of a
    merge, so the findings describe the draft before it is committed)."""
    selected = _selected(checks)
    report = _Report(selected)
    units = _load_units(conn, version)
    by_key = {u.key: u for u in units.values() if u.key is not None}
    if "orphan" in selected or "cycle" in selected:
        orphans = _check_orphans(conn, version, units, report, "orphan" in selected)
        if "cycle" in selected:
            _check_cycles(conn, version, units, by_key, set(orphans), report)
    if "stale_path" in selected:
        _check_stale_paths(conn, version, units, by_key, report)
    if "level_type_mismatch" in selected:
        _check_type_levels(conn, version, units, by_key, report)
    if "opening_after_closing" in selected:
        _check_dates(conn, version, units, report)
    if "several_roots" in selected:
        _check_roots(conn, version, units, report)
    if "duplicate_name" in selected:
        _check_duplicate_names(units, by_key, report)
    if _GEOMETRY_CHECKS & set(selected):
        _check_geometry(reg.backend, conn, version, units, by_key, report)
    order = {c: i for i, c in enumerate(CHECKS)}
    report.findings.sort(
        key=lambda f: (
            f["severity"] != ERROR,
            order[f["check"]],
            f["name"].casefold(),
            f["unit_uuid"] or "",
        )
    )
    summary = {c: 0 for c in selected}
    for f in report.findings:
        summary[f["check"]] += 1
    errors = sum(1 for f in report.findings if f["severity"] == ERROR)
    return {
        "version": version.to_dict(),
        "ok": errors == 0,
        "summary": summary,
        "counts": {"error": errors, "warning": len(report.findings) - errors},
        "findings": report.findings,
    }


# --- reading ---------------------------------------------------------------------


def _load_units(conn: Connection, version: VersionRef) -> dict[int, _Unit]:
    rows = conn.execute(
        text(
            "SELECT u.fid, u.unit_key, u.uuid, u.source_ref, u.name, u.parent_key, u.path, "
            "u.depth, t.name FROM org_unit u LEFT JOIN org_unit_type t ON t.fid = u.type_id "
            "WHERE u.version_id = :v"
        ),
        {"v": version.id},
    ).all()
    return {r[0]: _Unit(*r) for r in rows}


def _decode_many(backend: Backend, values: list[Any]) -> np.ndarray:
    """Blobs as read with ``geometry.select_sql`` → array of shapely geometries (one pass)."""
    if not values:
        return np.empty(0, dtype=object)
    if backend is Backend.GEOPACKAGE:
        wkbs = [geometry.gpkg_wkb(bytes(v)) for v in values]
    else:
        wkbs = [bytes(v) for v in values]
    return shapely.from_wkb(np.asarray(wkbs, dtype=object))


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, dt.date) else value


# --- hierarchy -------------------------------------------------------------------


def _check_orphans(
    conn: Connection, version: VersionRef, units: dict[int, _Unit], report: _Report, emit: bool
) -> list[int]:
    fids = [
        r[0]
        for r in conn.execute(
            text(
                "SELECT u.fid FROM org_unit u WHERE u.version_id = :v AND u.parent_key IS NOT NULL "
                "AND NOT EXISTS (SELECT 1 FROM org_unit p WHERE p.version_id = u.version_id "
                "AND p.unit_key = u.parent_key)"
            ),
            {"v": version.id},
        )
    ]
    if emit:
        for fid in fids:
            u = units[fid]
            report.add(
                "orphan",
                u,
                f"{u.label} names a parent (unit key {u.parent_key}) that does not exist in "
                f"{version.label}, so it hangs outside the tree. Give it an existing parent.",
                parent_key=u.parent_key,
            )
    return fids


def _check_cycles(
    conn: Connection,
    version: VersionRef,
    units: dict[int, _Unit],
    by_key: dict[int, _Unit],
    orphans: set[int],
    report: _Report,
) -> None:
    # Everything reachable from a root (or from an orphan, reported on its own) by
    # following children; what is left loops back on itself or hangs below such a loop.
    reached = {
        r[0]
        for r in conn.execute(
            text(
                "WITH RECURSIVE reach(fid, unit_key) AS ("
                " SELECT u.fid, u.unit_key FROM org_unit u WHERE u.version_id = :v AND"
                " (u.parent_key IS NULL OR NOT EXISTS (SELECT 1 FROM org_unit p"
                "  WHERE p.version_id = u.version_id AND p.unit_key = u.parent_key))"
                " UNION"
                " SELECT c.fid, c.unit_key FROM org_unit c JOIN reach r"
                "  ON c.version_id = :v AND c.parent_key = r.unit_key"
                ") SELECT fid FROM reach"
            ),
            {"v": version.id},
        )
    }
    stuck = [u for fid, u in units.items() if fid not in reached and fid not in orphans]
    for u in stuck:
        chain: list[_Unit] = []
        seen: dict[int, int] = {}
        cur: _Unit | None = u
        while cur is not None and cur.key not in seen:
            seen[cur.key] = len(chain)
            chain.append(cur)
            cur = by_key.get(cur.parent_key) if cur.parent_key is not None else None
        if cur is None:  # cannot happen for an unreached unit, but stay safe
            continue
        loop = chain[seen[cur.key] :]
        names = " → ".join(x.name for x in loop + [loop[0]])
        in_cycle = seen[cur.key] == 0
        if in_cycle:
            message = (
                f"{u.label} is its own ancestor: its parents go round in a circle "
                f"({names}), so it is not under any root. Give one of them a real parent."
            )
        else:
            message = (
                f"{u.label} hangs below a circle of parents ({names}), so it is not under "
                "any root. Give one unit of the circle a real parent."
            )
        report.add(
            "cycle",
            u,
            message,
            in_cycle=in_cycle,
            cycle=[x.ref() for x in loop],
            parent_key=u.parent_key,
        )


def _check_stale_paths(
    conn: Connection,
    version: VersionRef,
    units: dict[int, _Unit],
    by_key: dict[int, _Unit],
    report: _Report,
) -> None:
    key = "CAST(u.unit_key AS TEXT)"
    rows = conn.execute(
        text(
            "SELECT u.fid, p.fid AS parent_fid, "
            f"COALESCE(p.path, '/') || {key} || '/' AS expected_path, "
            "COALESCE(p.depth, 0) + 1 AS expected_depth "
            "FROM org_unit u LEFT JOIN org_unit p ON p.version_id = u.version_id "
            "AND p.unit_key = u.parent_key WHERE u.version_id = :v "
            "AND (u.parent_key IS NULL OR p.fid IS NOT NULL) "
            f"AND (u.path IS NULL OR u.depth IS NULL "
            f"OR u.path <> COALESCE(p.path, '/') || {key} || '/' "
            "OR u.depth <> COALESCE(p.depth, 0) + 1)"
        ),
        {"v": version.id},
    ).all()
    for fid, parent_fid, expected_path, expected_depth in rows:
        u = units[fid]
        parent = units.get(parent_fid) if parent_fid is not None else None
        where = f"under {parent.label}" if parent else "as a root"
        report.add(
            "stale_path",
            u,
            f"{u.label} has a stored path {u.path!r} and level {u.depth} that do not match "
            f"its place {where} (expected {expected_path!r}, level {expected_depth}). The table "
            "was changed without Georeg's triggers; subtree queries will be wrong for it.",
            path=u.path,
            depth=u.depth,
            expected_path=expected_path,
            expected_depth=expected_depth,
            parent_uuid=parent.uuid if parent else None,
        )


def _check_type_levels(
    conn: Connection,
    version: VersionRef,
    units: dict[int, _Unit],
    by_key: dict[int, _Unit],
    report: _Report,
) -> None:
    rows = conn.execute(
        text(
            "SELECT u.fid, t.depth FROM org_unit u JOIN org_unit_type t ON t.fid = u.type_id "
            "WHERE u.version_id = :v AND t.depth IS NOT NULL AND u.depth IS NOT NULL "
            "AND u.depth <> t.depth"
        ),
        {"v": version.id},
    ).all()
    for fid, type_depth in rows:
        u = units[fid]
        parent = by_key.get(u.parent_key) if u.parent_key is not None else None
        where = f"under {parent.label}" if parent else "as a root"
        report.add(
            "level_type_mismatch",
            u,
            f"{u.label} sits at level {u.depth} of the tree ({where}), but the type "
            f"{u.type_name!r} belongs at level {type_depth}. Check its type or its parent.",
            type=u.type_name,
            type_depth=type_depth,
            depth=u.depth,
            parent_uuid=parent.uuid if parent else None,
        )


def _check_dates(
    conn: Connection, version: VersionRef, units: dict[int, _Unit], report: _Report
) -> None:
    rows = conn.execute(
        text(
            "SELECT fid, opening_date, closed_date FROM org_unit WHERE version_id = :v "
            "AND opening_date IS NOT NULL AND closed_date IS NOT NULL "
            "AND closed_date < opening_date"
        ),
        {"v": version.id},
    ).all()
    for fid, opening, closed in rows:
        u = units[fid]
        report.add(
            "opening_after_closing",
            u,
            f"{u.label} closed on {_iso(closed)}, before it opened on {_iso(opening)}. "
            "One of the two dates is wrong.",
            opening_date=_iso(opening),
            closed_date=_iso(closed),
        )


def _check_roots(
    conn: Connection, version: VersionRef, units: dict[int, _Unit], report: _Report
) -> None:
    fids = [
        r[0]
        for r in conn.execute(
            text("SELECT fid FROM org_unit WHERE version_id = :v AND parent_key IS NULL"),
            {"v": version.id},
        )
    ]
    if len(fids) < 2:
        return
    roots = [units[f] for f in fids]
    for u in roots:
        others = [x for x in roots if x is not u]
        shown = ", ".join(x.label for x in others[:5]) + (" …" if len(others) > 5 else "")
        report.add(
            "several_roots",
            u,
            f"{u.label} is one of {len(roots)} top-level units of {version.label} (with "
            f"{shown}); a tree normally has a single root, the country. Move it under its "
            "parent if it has one.",
            roots=len(roots),
            others=[x.ref() for x in others],
        )


def _check_duplicate_names(
    units: dict[int, _Unit], by_key: dict[int, _Unit], report: _Report
) -> None:
    groups: dict[tuple[int | None, str], list[_Unit]] = {}
    for u in units.values():
        groups.setdefault((u.parent_key, normalize_name(u.name)), []).append(u)
    for (parent_key, norm), same in groups.items():
        if len(same) < 2:
            continue
        parent = by_key.get(parent_key) if parent_key is not None else None
        where = f"under {parent.label}" if parent else "among the top-level units"
        for u in same:
            others = [x for x in same if x is not u]
            names = ", ".join(
                f"{x.name!r}" + (f" (ref {x.source_ref})" if x.source_ref else "") for x in others
            )
            report.add(
                "duplicate_name",
                u,
                f"{u.label} has the same name as {names} {where} (ignoring case, accents and "
                "spaces). Are they the same place entered twice?",
                normalized=norm,
                parent_uuid=parent.uuid if parent else None,
                parent_name=parent.name if parent else None,
                others=[x.ref() for x in others],
            )


# --- geometry --------------------------------------------------------------------


def _check_geometry(
    backend: Backend,
    conn: Connection,
    version: VersionRef,
    units: dict[int, _Unit],
    by_key: dict[int, _Unit],
    report: _Report,
) -> None:
    selected = set(report.selected)
    loc_rows = conn.execute(
        text(
            f"SELECT fid, {geometry.select_sql(backend, 'location')} FROM org_unit "
            "WHERE version_id = :v AND location IS NOT NULL"
        ),
        {"v": version.id},
    ).all()
    ter_rows = conn.execute(
        text(
            f"SELECT t.unit_fid, {geometry.select_sql(backend, 't.territory')} "
            "FROM org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid "
            "WHERE u.version_id = :v"
        ),
        {"v": version.id},
    ).all()
    # a territory row without a shape is an empty territory too
    null_territories = [r[0] for r in ter_rows if r[1] is None]
    loc_rows = [r for r in loc_rows if r[1] is not None]
    ter_rows = [r for r in ter_rows if r[1] is not None]
    loc_fids = [r[0] for r in loc_rows]
    ter_fids = [r[0] for r in ter_rows]
    points = _decode_many(backend, [r[1] for r in loc_rows])
    territories = _decode_many(backend, [r[1] for r in ter_rows])

    point_empty = shapely.is_empty(points)
    ter_empty = shapely.is_empty(territories)
    point_valid = shapely.is_valid(points) & ~point_empty
    if len(points):
        xy = shapely.get_coordinates(points[~point_empty])
        in_range = np.zeros(len(points), dtype=bool)
        in_range[~point_empty] = (np.abs(xy[:, 0]) <= 180) & (np.abs(xy[:, 1]) <= 90)
        point_valid &= in_range
    ter_valid = shapely.is_valid(territories) & ~ter_empty

    if "empty_geometry" in selected:
        for what, fids, empty in (
            ("location", loc_fids, point_empty),
            ("territory", ter_fids, ter_empty),
        ):
            for i in np.flatnonzero(empty):
                u = units[fids[i]]
                report.add(
                    "empty_geometry",
                    u,
                    f"{u.label} has an empty {what} stored (a geometry with no coordinates). "
                    f"Set a real {what} or clear it.",
                    geometry=what,
                )
        for fid in null_territories:
            u = units[fid]
            report.add(
                "empty_geometry",
                u,
                f"{u.label} has a territory record with no shape in it. Set a real territory "
                "or clear it.",
                geometry="territory",
            )

    if "invalid_geometry" in selected:
        for i in np.flatnonzero(~point_empty & ~point_valid):
            u = units[loc_fids[i]]
            p = points[i]
            reason = (
                "coordinates are not numbers or outside longitude ±180° / latitude ±90°"
                if shapely.is_valid(p)
                else explain_validity(p)
            )
            report.add(
                "invalid_geometry",
                u,
                f"The point of {u.label} is not valid: {reason}.",
                geometry="location",
                reason=reason,
                location=_xy(p),
            )
        for i in np.flatnonzero(~ter_empty & ~ter_valid):
            u = units[ter_fids[i]]
            reason = explain_validity(territories[i])
            report.add(
                "invalid_geometry",
                u,
                f"The territory of {u.label} is not a valid polygon: {reason}. Fix it in a "
                "GIS (e.g. QGIS 'Fix geometries') and load it again.",
                geometry="territory",
                reason=reason,
            )

    if "null_island" in selected and len(points):
        usable = np.flatnonzero(~point_empty)
        xy = shapely.get_coordinates(points[usable])
        near = (np.abs(xy[:, 0]) < NULL_ISLAND_DEG) & (np.abs(xy[:, 1]) < NULL_ISLAND_DEG)
        for i in usable[near]:
            u = units[loc_fids[i]]
            report.add(
                "null_island",
                u,
                f'{u.label} has its point at 0°, 0° ("null island", in the sea off West '
                "Africa): almost surely a missing coordinate saved as zero.",
                location=_xy(points[i]),
            )

    if "point_outside_parent" in selected and len(points):
        territory_of = {
            fid: (territories[i] if ter_valid[i] else _repaired(territories[i]))
            for i, fid in enumerate(ter_fids)
            if not ter_empty[i]
        }
        _check_points_in_parent(units, by_key, loc_fids, points, point_valid, territory_of, report)


def _repaired(geom: Any) -> Any:
    try:
        return shapely.make_valid(geom)
    except GEOSException:
        return None


def _xy(point: Any) -> list[float] | None:
    if point is None or point.is_empty:
        return None
    return [point.x, point.y]


def _check_points_in_parent(
    units: dict[int, _Unit],
    by_key: dict[int, _Unit],
    loc_fids: list[int],
    points: np.ndarray,
    point_valid: np.ndarray,
    territory_of: dict[int, Any],
    report: _Report,
) -> None:
    # Nearest ancestor with a territory, by walking parent keys (memoised, loop-safe):
    # ``nearest[fid]`` is the first unit with a territory among fid and its ancestors.
    nearest: dict[int, int | None] = {}

    def territorial_ancestor(u: _Unit) -> int | None:
        trail: list[int] = []
        cur = by_key.get(u.parent_key) if u.parent_key is not None else None
        found: int | None = None
        while cur is not None and cur.fid not in trail:
            if cur.fid in nearest:
                found = nearest[cur.fid]
                break
            trail.append(cur.fid)
            if territory_of.get(cur.fid) is not None:
                found = cur.fid
                break
            cur = by_key.get(cur.parent_key) if cur.parent_key is not None else None
        for fid in trail:
            nearest[fid] = found
        return found

    groups: dict[int, list[int]] = {}
    for i, fid in enumerate(loc_fids):
        if not point_valid[i]:
            continue
        ancestor_fid = territorial_ancestor(units[fid])
        if ancestor_fid is not None:
            groups.setdefault(ancestor_fid, []).append(i)

    for anc_fid, idx in groups.items():
        territory = territory_of[anc_fid]
        pts = points[idx]
        shapely.prepare(territory)
        try:
            inside = shapely.covers(territory, pts)
            outside = np.flatnonzero(~inside)
            if len(outside) == 0:
                continue
            out_pts = pts[outside]
            dist_deg = shapely.distance(territory, out_pts)
            far = dist_deg > TOLERANCE_DEG
            outside, out_pts = outside[far], out_pts[far]
            if len(outside) == 0:
                continue
            lines = shapely.shortest_line(out_pts, territory)
        except GEOSException:
            continue
        coords = shapely.get_coordinates(lines).reshape(-1, 2, 2)
        metres = _metres(coords[:, 0, :], coords[:, 1, :])
        anc = units[anc_fid]
        for k, j in enumerate(outside):
            u = units[loc_fids[idx[j]]]
            is_parent = u.parent_key == anc.key
            whose = "its parent" if is_parent else "its nearest ancestor with a territory,"
            km = metres[k] / 1000
            how_far = f"{km:.1f} km" if km >= 1 else f"{metres[k]:.0f} m"
            report.add(
                "point_outside_parent",
                u,
                f"The point of {u.label} lies {how_far} outside the territory of {whose} "
                f"{anc.label}. Check the coordinates, or whether it belongs to another parent.",
                ancestor_uuid=anc.uuid,
                ancestor_source_ref=anc.source_ref,
                ancestor_name=anc.name,
                ancestor_type=anc.type_name,
                ancestor_is_parent=is_parent,
                distance_m=round(float(metres[k])),
                location=_xy(out_pts[k]),
            )


def _metres(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Geodesic distances (WGS 84) between lon/lat pairs; approximate without pyproj."""
    if len(a) == 0:
        return np.empty(0)
    try:
        from pyproj import Geod
    except ImportError:  # pragma: no cover - pyproj comes with the GIS stack
        lat = np.radians((a[:, 1] + b[:, 1]) / 2)
        dx = (b[:, 0] - a[:, 0]) * np.cos(lat)
        dy = b[:, 1] - a[:, 1]
        return np.hypot(dx, dy) * METRES_PER_DEGREE
    cols = [np.asarray(c, dtype=float).tolist() for c in (a[:, 0], a[:, 1], b[:, 0], b[:, 1])]
    _az1, _az2, dist = Geod(ellps="WGS84").inv(*cols)
    dist = np.asarray(dist, dtype=float)
    return np.where(np.isfinite(dist), dist, math.nan)
