"""Read the change log: who changed what, when, from where, with before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from storage import audit_sql, geometry
from storage.errors import InvalidInput, NotFound
from storage.registry import Registry, json_value
from storage.versions import VersionRef, resolve_version

GEOMETRY_KEYS = ("location", "territory")


def _geom_text(reg: Registry, value: Any) -> str | None:
    if not value:
        return None
    geom = geometry.decode_audit_hex(reg.backend, value)
    return geom.wkt if geom is not None else None


def _unit_label(conn: Connection, version_id: int | None, key: Any) -> str | None:
    """A parent as people know it: 'Bo [O6uvpzGd5pu]' rather than its internal key."""
    if key is None:
        return None
    row = conn.execute(
        text("SELECT name, source_ref FROM org_unit WHERE version_id = :v AND unit_key = :k"),
        {"v": version_id, "k": key},
    ).first()
    if row is None:
        return f"unit #{key}"
    return f"{row[0]} [{row[1]}]" if row[1] else str(row[0])


def _type_label(conn: Connection, type_id: Any) -> str | None:
    if type_id is None:
        return None
    name = conn.execute(
        text("SELECT name FROM org_unit_type WHERE fid = :t"), {"t": type_id}
    ).scalar()
    return name or f"type #{type_id}"


#: whole-version operations that bring units without a change-log row per unit
WHOLE_VERSION_OPS = ("push", "import")


def _as_arrived(reg: Registry, conn: Connection, version_id: int, uuid: str,
                since: int) -> dict[str, Any] | None:
    """A unit as it arrived with a version sent or imported whole: the before-snapshot
    of its first own change after that (every later change logs one), else its row now."""
    first = conn.execute(text(
        "SELECT before FROM change_log WHERE unit_uuid = :u AND version_id = :v AND "
        "entity = 'org_unit' AND fid > :f AND before IS NOT NULL ORDER BY fid LIMIT 1"),
        {"u": uuid, "v": version_id, "f": since}).first()
    if first is not None:
        snap = json_value(first[0])
    else:
        row = conn.execute(text(
            f"SELECT {audit_sql.unit_json(reg.backend, 'u')} FROM org_unit u "
            "WHERE u.version_id = :v AND u.uuid = :u"), {"v": version_id, "u": uuid}).first()
        snap = json_value(row[0]) if row is not None else None
    if isinstance(snap, dict) and snap.get("location"):
        snap["location"] = _geom_text(reg, snap["location"])
    return snap if isinstance(snap, dict) else None


def _history_unit(conn: Connection, unit: str, version: VersionRef | None) -> str:
    """The uuid whose history is asked for, or an error saying why there is none to show
    — rather than "No changes recorded." for a ref given without ``--source``, a unit
    that does not exist, or one that is not in the version read.

    A uuid the change log knows (a unit deleted since has rows there) is taken as it is.
    """
    if version is not None:
        row = conn.execute(
            text("SELECT uuid FROM org_unit WHERE version_id = :v AND "
                 "(uuid = :u OR source_ref = :u) "
                 "ORDER BY CASE WHEN uuid = :u THEN 0 ELSE 1 END LIMIT 1"),
            {"v": version.id, "u": unit},
        ).first()
        if row is not None:
            return str(row[0])
        logged = conn.execute(
            text("SELECT 1 FROM change_log WHERE version_id = :v AND unit_uuid = :u LIMIT 1"),
            {"v": version.id, "u": unit},
        ).first()
        if logged is not None:  # a unit deleted from this version: its log is there
            return unit
        elsewhere = conn.execute(
            text("SELECT v.number FROM org_unit u JOIN source_version v ON v.fid = u.version_id "
                 "WHERE v.source_id = :s AND (u.uuid = :u OR u.source_ref = :u) "
                 "ORDER BY v.number"),
            {"s": version.source_id, "u": unit},
        ).scalars().all()
        if elsewhere:
            numbers = sorted(set(int(n) for n in elsewhere))
            default = " (the default)" if _is_default(conn, version) else ""
            raise NotFound(
                f"{unit!r} is not in {version.label}{default}; it is in "
                + ", ".join(f"v{n}" for n in numbers)
                + f": try --version {numbers[-1]}."
            )
        raise NotFound(
            f"No unit with uuid or ref {unit!r} in {version.source!r} (in any of its "
            "versions), and the change log has no entry for it."
        )
    known = conn.execute(
        text("SELECT 1 FROM org_unit WHERE uuid = :u UNION ALL "
             "SELECT 1 FROM change_log WHERE unit_uuid = :u LIMIT 1"),
        {"u": unit},
    ).first()
    if known is not None:
        return unit
    sources = conn.execute(
        text("SELECT DISTINCT s.name FROM org_unit u JOIN source_version v "
             "ON v.fid = u.version_id JOIN data_source s ON s.fid = v.source_id "
             "WHERE u.source_ref = :u ORDER BY s.name"),
        {"u": unit},
    ).scalars().all()
    if sources:
        raise InvalidInput(
            f"{unit!r} is a ref, not a uuid: a ref names a unit only within a source. Give "
            f"the source: --source \"{sources[0]}\""
            + (f" (or {', '.join(repr(s) for s in sources[1:])})" if len(sources) > 1 else "")
            + "."
        )
    raise NotFound(
        f"No unit with uuid {unit!r} in this registry, and the change log has no entry for "
        "it. To name a unit by its ref, give its --source too."
    )


def _is_default(conn: Connection, version: VersionRef) -> bool:
    default = conn.execute(
        text("SELECT default_version_id FROM data_source WHERE fid = :s"),
        {"s": version.source_id},
    ).scalar()
    return default == version.id


def changed_fields(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    """{field: [before, after]} for the fields that differ."""
    before, after = before or {}, after or {}
    keys = [k for k in {**before, **after} if k not in ("uuid", "unit_key")]
    return {k: [before.get(k), after.get(k)] for k in keys if before.get(k) != after.get(k)}


def history(
    reg: Registry,
    *,
    unit: str | None = None,
    source: str | None = None,
    number: int | None = None,
    limit: int = 100,
    since_id: int | None = None,
) -> list[dict[str, Any]]:
    """Newest first.  ``unit`` is a uuid (or, with ``source``, a source ref).

    ``unit`` with ``source`` and no ``number``: the unit's rows in every version of the
    source (a ref names one unit per version).  Reading only the default version hid
    the draft where reviewers had just approved a change from the field (review #16).
    """
    if unit is not None and source is not None and number is None:
        return _history_in_every_version(reg, unit, source, limit, since_id)
    where = ["1 = 1"]
    params: dict[str, Any] = {"limit": limit}
    with reg.read() as conn:
        version: VersionRef | None = None
        if source is not None:
            version = resolve_version(conn, source, number)
            where.append("c.version_id = :v")
            params["v"] = version.id
        if unit is not None:
            unit = _history_unit(conn, unit.strip(), version)
        if unit is not None:
            # with the row of a version sent whole by a sync push (op 'push', see
            # docs/sync-postgis.md) or loaded whole by an import (op 'import', see
            # docs/architecture.md): where the unit came from, when it has no row of its own
            # (a unit added to that version later has an 'insert' row there: not those)
            where.append("(c.unit_uuid = :u OR (c.entity = 'version' AND c.op IN "
                         f"{WHOLE_VERSION_OPS} AND c.version_id IN "
                         "(SELECT version_id FROM org_unit WHERE uuid = :u) AND NOT EXISTS "
                         "(SELECT 1 FROM change_log i WHERE i.unit_uuid = :u AND i.version_id "
                         "= c.version_id AND i.entity = 'org_unit' AND i.op = 'insert')))")
            params["u"] = unit
        if since_id is not None:
            where.append("c.fid > :since")
            params["since"] = since_id
        rows = conn.execute(
            text(
                "SELECT c.fid, c.at, c.version_id, s.name AS source, v.number, c.entity, c.op, "
                "c.unit_uuid, c.before, c.after, c.origin, c.author, c.operation "
                "FROM change_log c LEFT JOIN source_version v ON v.fid = c.version_id "
                "LEFT JOIN data_source s ON s.fid = v.source_id "
                f"WHERE {' AND '.join(where)} ORDER BY c.fid DESC LIMIT :limit"
            ),
            params,
        ).all()
        out = []
        for r in rows:
            before, after = json_value(r.before), json_value(r.after)
            for snap in (before, after):
                if isinstance(snap, dict):
                    for key in GEOMETRY_KEYS:
                        if key in snap:
                            snap[key] = _geom_text(reg, snap[key])
            arrived = r.entity == "version" and r.op in WHOLE_VERSION_OPS
            if unit is not None and arrived:
                # what the unit was when it arrived with the version (the version's
                # row holds counts; the unit's values are where ``_as_arrived`` says)
                after = _as_arrived(reg, conn, r.version_id, unit, r.fid)
            name = (after or {}).get("name") or (before or {}).get("name")
            changes = (
                changed_fields(before, after) if r.entity != "version"
                or (unit is not None and arrived) else (after or {})
            )
            if "parent_key" in changes:
                changes["parent"] = [
                    _unit_label(conn, r.version_id, key) for key in changes.pop("parent_key")
                ]
            if "type_id" in changes:
                changes["type"] = [_type_label(conn, key) for key in changes.pop("type_id")]
            out.append(
                {
                    "id": r.fid,
                    "at": r.at,
                    "source": r.source,
                    "version": r.number,
                    "entity": r.entity,
                    "op": r.op,
                    "unit_uuid": r.unit_uuid,
                    "name": name,
                    "changes": changes,
                    "origin": r.origin,
                    "author": r.author,
                    "operation": r.operation,
                }
            )
    return out


def _history_in_every_version(reg: Registry, unit: str, source: str, limit: int,
                              since_id: int | None) -> list[dict[str, Any]]:
    """:func:`history` of ``unit`` in each version of ``source`` that has it (or logged
    it), merged newest first."""
    with reg.read() as conn:
        first = resolve_version(conn, source)
        numbers = [int(n) for n in conn.execute(
            text("SELECT number FROM source_version WHERE source_id = :s ORDER BY number"),
            {"s": first.source_id}).scalars()]
    rows: list[dict[str, Any]] = []
    found = False
    for number in numbers:
        try:
            rows += history(reg, unit=unit, source=source, number=number, limit=limit,
                            since_id=since_id)
        except NotFound:  # not in this version
            continue
        found = True
    if not found:
        raise NotFound(
            f"No unit with uuid or ref {unit.strip()!r} in {first.source!r} (in any of its "
            "versions), and the change log has no entry for it."
        )
    rows.sort(key=lambda r: r["id"], reverse=True)
    return rows[:limit]
