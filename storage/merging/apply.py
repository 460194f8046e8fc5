"""Make a draft version equal to a desired state: the one writer of every merge.

:func:`apply_state` takes the draft as it is (a fresh copy of the target or base
version) and the state a merge planned (uuid → :class:`UnitState`) and writes
only the differences, inside the caller's transaction, through ordinary SQL so
that the database's triggers keep paths right, refuse cycles and write the
change log (origin ``merge``):

1. groups the plan needs that the draft lacks are created;
2. new units are inserted parents first (their parent may be new too);
3. moves run in the order of the *final* tree's depth, shallowest first — in that
   order no single move can pass through a cycle, whatever the moves are
   (a unit's new parent is always already at its final place);
4. attributes, territories and group memberships are updated;
5. units absent from the plan are deleted last.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, text

from storage import geometry
from storage.backends import Backend
from storage.merging.snapshot import COLUMNS, GroupDef, Snapshot, UnitState, depth_order, same

Progress = Callable[[int, int, str], None]


@dataclass
class Applied:
    added: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    moved: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    groups_created: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "added": len(self.added),
            "deleted": len(self.deleted),
            "moved": len(self.moved),
            "updated": len(self.updated),
            "groups_created": self.groups_created,
            "memberships_added": self.memberships_added,
            "memberships_removed": self.memberships_removed,
        }


def _column_value(name: str, value: Any) -> Any:
    if name in ("aliases", "extra_fields"):
        return json.dumps(value, ensure_ascii=False) if value else None
    if isinstance(value, str):
        return value.strip() or None if name != "name" else value.strip()
    return value


class Writer:
    """Writes unit changes into one draft version (inside an open write transaction)."""

    def __init__(self, conn: Connection, backend: Backend, version_id: int,
                 keys: dict[str, int]) -> None:
        self.conn, self.backend, self.version_id = conn, backend, version_id
        self.keys = keys  # uuid → unit_key of every unit of the draft (kept up to date)
        self.group_keys: dict[int, int] = {}  # planned group key → real key in the draft

    def _bind(self, column: str) -> str:
        if column == "location":
            return geometry.bind_sql(self.backend, column)
        if column in ("aliases", "extra_fields") and self.backend is Backend.POSTGIS:
            return f"CAST(:{column} AS jsonb)"
        return f":{column}"

    # --- groups ----------------------------------------------------------------------

    def ensure_groups(self, defs: dict[int, GroupDef], wanted: set[int]) -> int:
        existing = {int(r[0]) for r in self.conn.execute(
            text("SELECT group_key FROM org_unit_group WHERE version_id = :v"),
            {"v": self.version_id})}
        created = 0
        for key in sorted(wanted):
            if key in existing:
                self.group_keys[key] = key
                continue
            g = defs[key]
            ref = g.source_ref
            if ref and self.conn.execute(
                text("SELECT 1 FROM org_unit_group WHERE version_id = :v AND source_ref = :r"),
                {"v": self.version_id, "r": ref},
            ).first():
                ref = None
            real = self.conn.execute(
                text("INSERT INTO org_unit_group (version_id, group_key, source_ref, name, "
                     "short_name, code) VALUES (:v, :k, :r, :n, :s, :c) RETURNING fid"),
                {"v": self.version_id, "k": key if key > 0 else None, "r": ref, "n": g.name,
                 "s": g.short_name, "c": g.code},
            ).scalar_one()
            self.group_keys[key] = key if key > 0 else int(real)
            created += 1
        return created

    def set_groups(self, uuid: str, before: frozenset[int], after: frozenset[int]
                   ) -> tuple[int, int]:
        unit_key = self.keys[uuid]
        real_before = {self.group_keys.get(k, k) for k in before}
        real_after = {self.group_keys.get(k, k) for k in after}
        add, remove = real_after - real_before, real_before - real_after
        for g in sorted(add):
            self.conn.execute(
                text("INSERT INTO group_membership (version_id, group_key, unit_key) "
                     "VALUES (:v, :g, :u)"),
                {"v": self.version_id, "g": g, "u": unit_key},
            )
        for g in sorted(remove):
            self.conn.execute(
                text("DELETE FROM group_membership WHERE version_id = :v AND group_key = :g "
                     "AND unit_key = :u"),
                {"v": self.version_id, "g": g, "u": unit_key},
            )
        return len(add), len(remove)

    # --- units -----------------------------------------------------------------------

    def insert(self, unit: UnitState) -> None:
        parent = unit.get("parent")
        cols: dict[str, Any] = {
            "version_id": self.version_id,
            "uuid": unit.uuid,
            "unit_key": unit.key,
            "parent_key": self.keys[parent] if parent else None,
            "location": geometry.encode(self.backend, unit.get("location")),
        }
        for name, column in COLUMNS.items():
            cols[column] = _column_value(name, unit.get(name))
        cols["validation_status"] = cols["validation_status"] or "valid"
        binds = ", ".join(self._bind(k) for k in cols)
        fid = int(self.conn.execute(
            text(f"INSERT INTO org_unit ({', '.join(cols)}) VALUES ({binds}) RETURNING fid"), cols
        ).scalar_one())
        key = self.conn.execute(text("SELECT unit_key FROM org_unit WHERE fid = :f"),
                                {"f": fid}).scalar_one()
        self.keys[unit.uuid] = int(key)
        if unit.get("territory") is not None:
            self.set_territory(unit.uuid, unit.get("territory"))

    def move(self, uuid: str, parent: str | None) -> None:
        self.conn.execute(
            text("UPDATE org_unit SET parent_key = :p WHERE version_id = :v AND uuid = :u"),
            {"p": self.keys[parent] if parent else None, "v": self.version_id, "u": uuid},
        )

    def update(self, uuid: str, values: dict[str, Any]) -> None:
        cols = {COLUMNS[k]: _column_value(k, v) for k, v in values.items() if k in COLUMNS}
        sets = [f"{c} = {self._bind(c)}" for c in cols]
        if "location" in values:
            cols["location"] = geometry.encode(self.backend, values["location"])
            sets.append(f"location = {geometry.bind_sql(self.backend, 'location')}")
        if sets:
            self.conn.execute(
                text(f"UPDATE org_unit SET {', '.join(sets)} WHERE version_id = :v_ AND uuid = :u_"),
                cols | {"v_": self.version_id, "u_": uuid},
            )
        if "territory" in values:
            self.set_territory(uuid, values["territory"])

    def set_territory(self, uuid: str, territory: Any) -> None:
        fid = self.conn.execute(
            text("SELECT fid FROM org_unit WHERE version_id = :v AND uuid = :u"),
            {"v": self.version_id, "u": uuid},
        ).scalar_one()
        if territory is None or territory.is_empty:
            self.conn.execute(text("DELETE FROM org_unit_territory WHERE unit_fid = :f"),
                              {"f": fid})
            return
        blob = geometry.encode(self.backend, geometry.as_multipolygon(territory))
        bind = geometry.bind_sql(self.backend, "g")
        if not self.conn.execute(
            text(f"UPDATE org_unit_territory SET territory = {bind} WHERE unit_fid = :f"),
            {"g": blob, "f": fid},
        ).rowcount:
            self.conn.execute(
                text(f"INSERT INTO org_unit_territory (territory, unit_fid) VALUES ({bind}, :f)"),
                {"g": blob, "f": fid},
            )

    def delete(self, uuids: list[str]) -> None:
        for uuid in uuids:
            self.conn.execute(
                text("DELETE FROM org_unit WHERE version_id = :v AND uuid = :u"),
                {"v": self.version_id, "u": uuid},
            )
            self.keys.pop(uuid, None)


def apply_state(conn: Connection, backend: Backend, current: Snapshot,
                desired: dict[str, UnitState], group_defs: dict[int, GroupDef],
                progress: Progress | None = None) -> Applied:
    """Write into ``current.version`` (a draft) whatever differs from ``desired``.

    A unit of ``desired`` that *is* (same object) the unit of ``current`` is unchanged and
    not compared: planners hand back untouched units as they read them.
    """
    out = Applied()
    writer = Writer(conn, backend, current.version.id,
                    {u: s.key for u, s in current.units.items() if s.key is not None})
    total = len(desired) + len(current.units)
    done = 0

    def tick(n: int, message: str) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, total, message)

    wanted_groups = set().union(*(u.get("groups") or frozenset() for u in desired.values())) \
        if desired else set()
    out.groups_created = writer.ensure_groups(group_defs, wanted_groups)
    order = depth_order(desired)
    for i, uuid in enumerate(order):
        if uuid not in current.units:
            writer.insert(desired[uuid])
            out.added.append(uuid)
            added, _ = writer.set_groups(uuid, frozenset(), desired[uuid].get("groups")
                                         or frozenset())
            out.memberships_added += added
        if i % 500 == 0:
            tick(500 if i else 0, "Adding new units")
    for uuid in order:
        before = current.units.get(uuid)
        if before is not None and not same("parent", before.get("parent"),
                                           desired[uuid].get("parent")):
            writer.move(uuid, desired[uuid].get("parent"))
            out.moved.append(uuid)
    tick(0, "Updating units")
    for i, uuid in enumerate(order):
        before = current.units.get(uuid)
        after = desired[uuid]
        if before is None or after is before:  # new, or the very object read: unchanged
            continue
        changed = {f: after.get(f) for f in (*COLUMNS, "location", "territory")
                   if not same(f, before.get(f), after.get(f))}
        if changed:
            writer.update(uuid, changed)
            out.updated.append(uuid)
        added, removed = writer.set_groups(uuid, before.get("groups") or frozenset(),
                                           after.get("groups") or frozenset())
        out.memberships_added += added
        out.memberships_removed += removed
        if i % 500 == 0:
            tick(500 if i else 0, "Updating units")
    gone = [u for u in current.units if u not in desired]
    writer.delete(gone)
    out.deleted = gone
    tick(len(gone), "Deleting units")
    return out
