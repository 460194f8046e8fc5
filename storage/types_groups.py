"""Org-unit types and groups: list, add, rename (``georeg type …``, ``georeg group …``).

Until these existed, the only way to get a new type ("Hospital") or group ("Public
facilities") was to import a file that had one, and ``unit add --type`` / ``unit group
--add`` could only say what existed.

- **Types** are shared by the whole registry (every source and version points at the
  same rows).  Renaming one would therefore change what a *published* version says its
  units are, and published versions never change: a type that units of a published
  version use cannot be renamed (add a new type and set it on the units of a draft).
- **Groups** belong to one version of a source, like units: they are edited in a draft,
  and the database refuses them in a published version (the same trigger as units).

Names are unique (case aside: "hospital" next to "Hospital" is a typo waiting to be
picked, by imports that match names exactly).  Neither table has change-log triggers
(imports and DHIS2 pulls write them without a log row either), so these edits are not in
``georeg history``; unit memberships of a group are.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from storage.errors import ConflictError, InvalidInput, NotFound
from storage.registry import Registry
from storage.units import check_no_nul, group_row, same_name
from storage.versions import VersionRef, require_draft, resolve_version

#: how types are listed everywhere (by level, types without a level last)
TYPE_ORDER = "CASE WHEN depth IS NULL THEN 1 ELSE 0 END, depth, name"


def _clean_name(name: str | None, what: str, where: str) -> str:
    value = (name or "").strip()
    if not value:
        raise InvalidInput(f"{where}: a {what} needs a name (field 'name' is empty).")
    check_no_nul(value, where, "name", controls=True)
    return value


# --- types -------------------------------------------------------------------------------


def list_types(reg: Registry) -> list[dict[str, Any]]:
    """Every org-unit type, by level, with how many unit rows (all versions) use it."""
    with reg.read() as conn:
        used: dict[int, int] = {  # one pass over the units, not one per type
            int(r[0]): int(r[1]) for r in conn.execute(text(
                "SELECT type_id, count(*) FROM org_unit WHERE type_id IS NOT NULL "
                "GROUP BY type_id"))}
        rows = conn.execute(text(
            "SELECT fid, name, short_name, depth FROM org_unit_type "
            f"ORDER BY {TYPE_ORDER}")).all()
    return [{"id": r.fid, "name": r.name, "short_name": r.short_name, "level": r.depth,
             "units": used.get(int(r.fid), 0)} for r in rows]


def _type_row(conn: Connection, name: str) -> Any:
    row = conn.execute(text("SELECT fid, name, short_name, depth FROM org_unit_type "
                            "WHERE name = :n"), {"n": name.strip()}).first()
    if row is None:
        names = [r[0] for r in conn.execute(text(f"SELECT name FROM org_unit_type ORDER BY "
                                                 f"{TYPE_ORDER}"))]
        near = same_name(name, names)
        if near is not None:  # "type add" would refuse it: name the one that exists
            raise NotFound(f"No org-unit type named {name!r} — did you mean {near!r}? "
                           "(Type names match exactly.)")
        raise NotFound(f"No org-unit type named {name!r}"
                       + (f" (types: {', '.join(names)})." if names else
                          " (this registry has none yet).")
                       + " Add one with: georeg type add REG NAME")
    return row


def _refuse_taken_type(conn: Connection, name: str, but: int | None = None) -> None:
    """Names are unique case aside — compared in Python (:func:`storage.units.folded`),
    not with SQL ``lower()``, which left "École" next to "école" (types are few)."""
    clash = same_name(name, [r[0] for r in conn.execute(
        text("SELECT name FROM org_unit_type WHERE fid <> :but"),
        {"but": -1 if but is None else but})])
    if clash is not None:
        same = "" if clash == name else " (the names differ only in case)"
        raise ConflictError(f"An org-unit type named {clash!r} already exists{same}.")


def _check_level(level: int | None, where: str) -> None:
    if level is not None and level < 1:
        raise InvalidInput(f"{where}: field 'level' must be 1 (the roots) or more, not {level}.")


def add_type(reg: Registry, name: str, *, short_name: str | None = None,
             level: int | None = None, origin: str = "api") -> dict[str, Any]:
    """A new org-unit type.  ``level``: the tree level its units belong at (1 = the
    roots); ``georeg check`` then warns about a unit of this type elsewhere."""
    where = f"New type {name!r}"
    name = _clean_name(name, "type", where)
    _check_level(level, where)
    if short_name is not None:
        check_no_nul(short_name, where, "short_name", controls=True)
    with reg.write(origin=origin) as conn:
        _refuse_taken_type(conn, name)
        fid = conn.execute(
            text("INSERT INTO org_unit_type (name, short_name, depth) VALUES (:n, :s, :d) "
                 "RETURNING fid"),
            {"n": name, "s": (short_name or "").strip() or None, "d": level},
        ).scalar_one()
    return {"id": int(fid), "name": name, "short_name": (short_name or "").strip() or None,
            "level": level, "units": 0}


def rename_type(reg: Registry, name: str, new_name: str, *, origin: str = "api"
                ) -> dict[str, Any]:
    """Rename a type that no published version uses (see the module's docstring)."""
    with reg.write(origin=origin) as conn:
        row = _type_row(conn, name)
        new = _clean_name(new_name, "type", f"Type {row.name!r}")
        if new == row.name:
            raise InvalidInput(f"Type {row.name!r} already has that name.")
        published = [
            f"{r[0]} v{r[1]}" for r in conn.execute(text(
                "SELECT DISTINCT s.name, v.number FROM org_unit u JOIN source_version v ON "
                "v.fid = u.version_id JOIN data_source s ON s.fid = v.source_id "
                "WHERE u.type_id = :t AND v.status = 'published' ORDER BY s.name, v.number"),
                {"t": row.fid})]
        if published:
            shown = ", ".join(published[:5]) + (" …" if len(published) > 5 else "")
            raise ConflictError(
                f"Type {row.name!r} is used by units of published version(s) ({shown}). Types "
                "are shared by every version, so renaming it would change what a published "
                "version says, and published versions never change. Add a new type instead "
                f"(georeg type add REG \"{new}\") and set it on the units of a draft "
                f"(georeg unit edit REG UNIT --type \"{new}\" -s SOURCE -v N).")
        _refuse_taken_type(conn, new, but=row.fid)
        conn.execute(text("UPDATE org_unit_type SET name = :n WHERE fid = :t"),
                     {"n": new, "t": row.fid})
        units = conn.execute(text("SELECT count(*) FROM org_unit WHERE type_id = :t"),
                             {"t": row.fid}).scalar_one()
    return {"id": int(row.fid), "name": new, "old_name": row.name,
            "short_name": row.short_name, "level": row.depth, "units": int(units)}


# --- groups ------------------------------------------------------------------------------


def list_groups(reg: Registry, source: str, number: int | None = None) -> dict[str, Any]:
    """The groups of one version, with their number of member units."""
    with reg.read() as conn:
        version = resolve_version(conn, source, number)
        rows = conn.execute(text(
            "SELECT g.group_key, g.source_ref, g.name, g.short_name, g.code, "
            "(SELECT count(*) FROM group_membership m WHERE m.version_id = g.version_id "
            "AND m.group_key = g.group_key) AS units "
            "FROM org_unit_group g WHERE g.version_id = :v ORDER BY g.name"),
            {"v": version.id}).all()
    return {"version": version.to_dict(),
            "groups": [{"key": int(r.group_key), "ref": r.source_ref, "name": r.name,
                        "short_name": r.short_name, "code": r.code, "units": int(r.units)}
                       for r in rows]}


def find_group(conn: Connection, version: VersionRef, group: str) -> Any:
    """A group of ``version`` by ref, else by name; the error says how to add one (see
    :func:`storage.units.group_row`)."""
    return group_row(conn, version, group)


def _refuse_taken_group(conn: Connection, version: VersionRef, name: str,
                        but: int | None = None) -> None:
    """A group's name is unique in its version case aside (compared in Python, see
    :func:`_refuse_taken_type`), and is no other group's ref: commands that take a group
    by ref or name try the ref first, so such a name would address the other group."""
    others = conn.execute(text(
        "SELECT name, source_ref FROM org_unit_group WHERE version_id = :v "
        "AND group_key <> :but"),
        {"v": version.id, "but": -1 if but is None else but}).all()
    clash = same_name(name, [r[0] for r in others])
    if clash is not None:
        same = "" if clash == name else " (the names differ only in case)"
        raise ConflictError(f"{version.label} already has a group named {clash!r}{same}.")
    owner = next((r[0] for r in others if r[1] == name), None)
    if owner is not None:
        raise ConflictError(f"{name!r} is the ref of the group {owner!r} in {version.label}: "
                            "commands that take a group by ref or name would find that one. "
                            "Choose another name.")


def add_group(reg: Registry, source: str, name: str, *, number: int | None = None,
              ref: str | None = None, code: str | None = None, short_name: str | None = None,
              origin: str = "api") -> dict[str, Any]:
    """A new, empty group in a draft version (``unit group --add`` fills it)."""
    where = f"New group {name!r}"
    name = _clean_name(name, "group", where)
    ref = (ref or "").strip() or None
    for field, value in (("ref", ref), ("code", code), ("short_name", short_name)):
        check_no_nul(value, where, field, controls=True)
    with reg.write(origin=origin) as conn:
        version = resolve_version(conn, source, number)
        require_draft(version, conn)
        _refuse_taken_group(conn, version, name)
        if ref is not None:
            clash = conn.execute(text("SELECT name FROM org_unit_group WHERE version_id = :v "
                                      "AND source_ref = :r"),
                                 {"v": version.id, "r": ref}).first()
            if clash is not None:
                raise ConflictError(f"{where}: ref {ref!r} is already the group {clash[0]!r} "
                                    f"in {version.label}.")
            if conn.execute(text("SELECT 1 FROM org_unit_group WHERE version_id = :v "
                                 "AND name = :r"), {"v": version.id, "r": ref}).first():
                raise ConflictError(f"{where}: ref {ref!r} is the name of another group in "
                                    f"{version.label}: commands that take a group by ref or "
                                    "name would find the new group instead.")
        conn.execute(text(
            "INSERT INTO org_unit_group (version_id, source_ref, name, short_name, code) "
            "VALUES (:v, :r, :n, :s, :c)"),
            {"v": version.id, "r": ref, "n": name, "s": (short_name or "").strip() or None,
             "c": (code or "").strip() or None})
        row = find_group(conn, version, ref or name)
    return {"version": version.label, "key": int(row.group_key), "ref": row.source_ref,
            "name": row.name, "short_name": row.short_name, "code": row.code, "units": 0}


def rename_group(reg: Registry, source: str, group: str, new_name: str, *,
                 number: int | None = None, origin: str = "api") -> dict[str, Any]:
    """Rename a group (by ref or name) of a draft version; its members stay."""
    with reg.write(origin=origin) as conn:
        version = resolve_version(conn, source, number)
        require_draft(version, conn)
        row = find_group(conn, version, group)
        new = _clean_name(new_name, "group", f"Group {row.name!r}")
        if new == row.name:
            raise InvalidInput(f"Group {row.name!r} already has that name.")
        _refuse_taken_group(conn, version, new, but=int(row.group_key))
        conn.execute(text("UPDATE org_unit_group SET name = :n WHERE version_id = :v AND "
                          "group_key = :k"), {"n": new, "v": version.id, "k": row.group_key})
        units = conn.execute(text("SELECT count(*) FROM group_membership WHERE version_id = :v "
                                  "AND group_key = :k"),
                             {"v": version.id, "k": row.group_key}).scalar_one()
    return {"version": version.label, "key": int(row.group_key), "ref": row.source_ref,
            "name": new, "old_name": row.name, "short_name": row.short_name,
            "code": row.code, "units": int(units)}
