"""Tree queries: children, ancestors, subtrees by indexed path, counts per level and type.

A unit's ``path`` is ``/k1/k2/…/kn/`` of stable unit keys, indexed with its
version, so a subtree is one index range scan: ``path >= P AND path < P'``
where P' is P with its final ``/`` replaced by ``0`` (the next character).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from storage.registry import Registry
from storage.units import find_unit, row_to_dict, unit_columns, unit_joins
from storage.versions import VersionRef, resolve_version


def subtree_bounds(path: str) -> tuple[str, str]:
    return path, path[:-1] + "0"


def _units(
    reg: Registry, conn: Connection, where: str, params: dict[str, Any], order: str,
    with_geometry: bool = True,
) -> list[dict[str, Any]]:
    rows = conn.execute(
        text(f"SELECT {unit_columns(reg.backend)} FROM org_unit u {unit_joins()} "
             f"WHERE {where} ORDER BY {order}"),
        params,
    ).all()
    return [row_to_dict(reg.backend, r, with_geometry=with_geometry) for r in rows]


def children(reg: Registry, source: str, ident: str | None = None, number: int | None = None
             ) -> list[dict[str, Any]]:
    """Direct children of a unit, or the roots when ``ident`` is None."""
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        if ident is None:
            return _units(reg, conn, "u.version_id = :v AND u.parent_key IS NULL",
                          {"v": version.id}, "u.name")
        unit = find_unit(conn, version, ident)
        return _units(reg, conn, "u.version_id = :v AND u.parent_key = :k",
                      {"v": version.id, "k": unit.unit_key}, "u.name")


def ancestors(reg: Registry, source: str, ident: str, number: int | None = None
              ) -> list[dict[str, Any]]:
    """From the root down to the unit's parent."""
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        unit = find_unit(conn, version, ident)
        keys = [int(k) for k in unit.path.strip("/").split("/")[:-1]]
        if not keys:
            return []
        binds = ", ".join(f":k{i}" for i in range(len(keys)))
        return _units(reg, conn, f"u.version_id = :v AND u.unit_key IN ({binds})",
                      {"v": version.id} | {f"k{i}": k for i, k in enumerate(keys)}, "u.depth")


def subtree_rows(conn: Connection, version: VersionRef, path: str,
                 columns: str = "fid, uuid, name, depth") -> list[Any]:
    """The raw, fast subtree read (one index range scan) used by the API below."""
    lo, hi = subtree_bounds(path)
    return list(conn.execute(
        text(f"SELECT {columns} FROM org_unit WHERE version_id = :v AND path >= :lo AND path < :hi"),
        {"v": version.id, "lo": lo, "hi": hi},
    ))


def subtree(reg: Registry, source: str, ident: str, number: int | None = None, *,
            max_depth: int | None = None, details: bool = False) -> list[dict[str, Any]]:
    """A unit and everything below it.  ``details`` adds types, parents and geometry."""
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        unit = find_unit(conn, version, ident)
        lo, hi = subtree_bounds(unit.path)
        limit = "" if max_depth is None else " AND u.depth <= :d"
        params = {"v": version.id, "lo": lo, "hi": hi, "d": (max_depth or 0) + unit.depth}
        if details:
            return _units(reg, conn, f"u.version_id = :v AND u.path >= :lo AND u.path < :hi{limit}",
                          params, "u.path")
        rows = conn.execute(
            text("SELECT u.uuid, u.source_ref, u.name, u.depth, u.path FROM org_unit u "
                 f"WHERE u.version_id = :v AND u.path >= :lo AND u.path < :hi{limit}"),
            params,
        ).all()
        return [{"uuid": r[0], "source_ref": r[1], "name": r[2], "depth": r[3], "path": r[4]}
                for r in rows]


def counts(reg: Registry, source: str, number: int | None = None) -> dict[str, Any]:
    """Units per level and per type, with how many have a point or a territory."""
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        by_level = conn.execute(
            text("SELECT u.depth, count(*), count(u.location), count(t.fid) FROM org_unit u "
                 "LEFT JOIN org_unit_territory t ON t.unit_fid = u.fid "
                 "WHERE u.version_id = :v GROUP BY u.depth ORDER BY u.depth"),
            {"v": version.id},
        ).all()
        by_type = conn.execute(
            text("SELECT COALESCE(ty.name, '(no type)'), count(*) FROM org_unit u "
                 "LEFT JOIN org_unit_type ty ON ty.fid = u.type_id WHERE u.version_id = :v "
                 "GROUP BY ty.name ORDER BY min(u.depth), ty.name"),
            {"v": version.id},
        ).all()
    return {
        "version": version.to_dict(),
        "total": sum(r[1] for r in by_level),
        "levels": [{"level": r[0], "units": r[1], "points": r[2], "territories": r[3]}
                   for r in by_level],
        "types": [{"type": r[0], "units": r[1]} for r in by_type],
    }


def tree_summary(reg: Registry, source: str, number: int | None = None, *,
                 max_depth: int | None = None, root: str | None = None) -> dict[str, Any]:
    """The tree down to ``max_depth`` levels, each node with how many units it holds."""
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        if root is not None:
            start = find_unit(conn, version, root)
            lo, hi = subtree_bounds(start.path)
            base_depth = start.depth
        else:
            lo, hi, base_depth = "/", "0", 1
        depth_limit = base_depth + (max_depth - 1 if max_depth else 10_000)
        rows = conn.execute(
            text("SELECT u.fid, u.uuid, u.source_ref, u.name, u.depth, u.path, ty.name "
                 "FROM org_unit u LEFT JOIN org_unit_type ty ON ty.fid = u.type_id "
                 "WHERE u.version_id = :v AND u.path >= :lo AND u.path < :hi AND u.depth <= :d "
                 "ORDER BY u.path"),
            {"v": version.id, "lo": lo, "hi": hi, "d": depth_limit},
        ).all()
        nodes: list[dict[str, Any]] = []
        for r in rows:
            below = conn.execute(
                text("SELECT count(*) FROM org_unit WHERE version_id = :v AND path > :lo "
                     "AND path < :hi"),
                {"v": version.id, "lo": r[5], "hi": r[5][:-1] + "0"},
            ).scalar_one()
            nodes.append({"uuid": r[1], "source_ref": r[2], "name": r[3], "level": r[4],
                          "type": r[6], "units_below": below, "path": r[5]})
        nodes = _sorted_by_name(nodes)
        total = conn.execute(text("SELECT count(*) FROM org_unit WHERE version_id = :v"),
                             {"v": version.id}).scalar_one()
    return {"version": version.to_dict(), "total_units": total, "max_depth": max_depth,
            "nodes": nodes}


def _sorted_by_name(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Depth-first order with siblings by name (paths order siblings by key)."""
    by_parent: dict[str, list[dict[str, Any]]] = {}
    paths = {n["path"] for n in nodes}
    roots = []
    for n in nodes:
        parent_path = n["path"][: n["path"].rstrip("/").rfind("/") + 1]
        if parent_path in paths:
            by_parent.setdefault(parent_path, []).append(n)
        else:
            roots.append(n)
    out: list[dict[str, Any]] = []

    def walk(items: list[dict[str, Any]]) -> None:
        for n in sorted(items, key=lambda x: x["name"].casefold()):
            out.append(n)
            walk(by_parent.get(n["path"], []))

    walk(roots)
    return out
