"""Writing units into one version of a registry (either side of a sync): upserts keyed
on uuid, moves, territories, memberships, deletions — and the figures they add up to."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from sqlalchemy import Connection, bindparam, text

from storage import audit_sql, geometry
from storage.backends import Backend
from storage.errors import ConflictError
from storage.registry import Registry
from sync.unit_snapshots import (
    COPY_FROM,
    FIELDS,
    MAX_LISTED,
    Unit,
    _canon_locations,
    _chunks,
    _in_rows,
    _wkb,
    group_identity,
    read_units,
)


@dataclass
class Figures:
    """What one push or pull sent and changed (shown to the user, kept in the history)."""

    units_sent: int = 0
    units_inserted: int = 0
    units_updated: int = 0
    units_moved: int = 0
    units_deleted: int = 0
    territories_sent: int = 0
    territories_changed: int = 0
    memberships_sent: int = 0
    memberships_added: int = 0
    memberships_removed: int = 0
    groups_changed: int = 0
    types_changed: int = 0
    versions_created: int = 0
    versions_updated: int = 0
    versions_published: int = 0
    versions_deleted: int = 0
    #: versions published here that a push left a draft centrally (units differ there)
    versions_not_published: int = 0
    #: versions deleted here that a push kept centrally (changed there since the last pull)
    versions_held: int = 0
    batches: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        # a unit held in one phase of a push (a version sent whole) is looked at again
        # in the next (held units): one row per unit and field
        conflicts = list({(c["source"], c["version"], c["uuid"], c["field"]): c
                          for c in self.conflicts}.values())
        out["conflicts"] = conflicts[:MAX_LISTED]
        out["conflict_count"] = len(conflicts)
        # a version in conflict (deleted here, published centrally while edited here) is
        # one row without a unit: counted apart, not as a unit (it was counted as one)
        versions = [c for c in conflicts if is_version_conflict(c)]
        units = [c for c in conflicts if not is_version_conflict(c)]
        out["conflicting_units"] = len({(c["source"], c["version"], c["uuid"]) for c in units})
        out["conflicting_versions"] = len({(c["source"], c["version"]) for c in versions})
        # units of a version published here that differ centrally: only a push with
        # --prefer-local (or making the central units equal) settles those
        out["conflicting_units_published_here"] = len({
            (c["source"], c["version"], c["uuid"]) for c in units if c.get("published_here")})
        out["refused"] = self.refused[:MAX_LISTED]
        out["warnings"] = self.warnings[:MAX_LISTED]
        return out


def is_version_conflict(row: dict[str, Any]) -> bool:
    """A conflict row about a whole version (no unit: ``uuid`` None, ``kind`` "version")."""
    return row.get("kind") == "version" or row.get("uuid") is None


class UnitWriter:
    """Upserts units into one version of a registry, inside an open write transaction."""

    def __init__(self, reg: Registry, conn: Connection, version_id: int, figures: Figures):
        self.reg = reg
        self.conn = conn
        self.version_id = version_id
        self.fig = figures
        self.backend = reg.backend
        #: (unit_key, path, depth) of units looked up by ``present``
        self._known: dict[str, tuple[int, str, int]] = {}
        self._types: dict[str, int] = {
            r.name: r.fid for r in conn.execute(text("SELECT fid, name FROM org_unit_type"))
        }
        loc = geometry.bind_sql(self.backend, "location")
        self._insert = text(
            "INSERT INTO org_unit (fid, location, version_id, unit_key, uuid, source_ref, name, "
            "code, type_id, parent_key, path, depth, validation_status, opening_date, "
            "closed_date, aliases, extra_fields) VALUES (:fid, "
            f"{loc}, :v, :fid, :uuid, :source_ref, :name, :code, :type_id, :parent_key, :path, "
            ":depth, :validation_status, :opening_date, :closed_date, :aliases, :extra_fields)"
        )
        self._update = text(
            f"UPDATE org_unit SET location = {loc}, source_ref = :source_ref, name = :name, "
            "code = :code, type_id = :type_id, validation_status = :validation_status, "
            "opening_date = :opening_date, closed_date = :closed_date, aliases = :aliases, "
            "extra_fields = :extra_fields WHERE fid = :fid"
        )

    # ids and types
    def _next_fids(self, n: int) -> list[int]:
        if n == 0:
            return []
        if self.backend.is_sqlite:
            start = self.conn.execute(
                text(
                    "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'org_unit'),"
                    " 0), COALESCE((SELECT max(fid) FROM org_unit), 0)) + 1"
                )
            ).scalar_one()
            return list(range(int(start), int(start) + n))
        return [int(r) for r in self.conn.execute(
            text("SELECT nextval('org_unit_fid_seq') FROM generate_series(1, :n)"), {"n": n}
        ).scalars()]

    def _type_id(self, name: str | None) -> int | None:
        if not name:
            return None
        if name not in self._types:
            self._types[name] = int(self.conn.execute(
                text("INSERT INTO org_unit_type (name) VALUES (:n) RETURNING fid"), {"n": name}
            ).scalar_one())
        return self._types[name]

    def _params(self, u: Unit, with_location: bool = True) -> dict[str, Any]:
        val = u.values
        return {
            "v": self.version_id,
            "uuid": u.uuid,
            "source_ref": val["source_ref"],
            "name": val["name"],
            "code": val["code"],
            "type_id": self._type_id(val["type"]),
            "validation_status": val["validation_status"] or "valid",
            "opening_date": val["opening_date"],
            "closed_date": val["closed_date"],
            "aliases": None if val["aliases"] is None
            else json.dumps(val["aliases"], ensure_ascii=False),
            "extra_fields": None if val["extra_fields"] is None
            else json.dumps(val["extra_fields"], ensure_ascii=False),
            "location": geometry.encode(self.backend, val["location"]) if with_location
            else None,
        }

    def _tree_info(self, uuids: Iterable[str]) -> dict[str, tuple[int, str, int]]:
        return {r.uuid: (int(r.unit_key), r.path, int(r.depth)) for r in _in_rows(
            self.conn, "SELECT uuid, unit_key, path, depth FROM org_unit WHERE version_id = :v "
            "AND uuid IN :u", "u", uuids, {"v": self.version_id})}

    def present(self, uuids: set[str]) -> set[str]:
        """Which of ``uuids`` exist on this side; their keys and paths are kept for the
        upsert that follows in the same transaction (the parents it needs: one lookup)."""
        info = self._tree_info(uuids)
        self._known.update(info)
        return set(info)

    # the upsert
    def upsert(
        self,
        units: list[Unit],
        *,
        territory_for: set[str] | None = None,
        groups_for: set[str] | None = None,
        everything: bool = False,
        fresh: bool = False,
        releasable: Callable[[dict[str, str]], set[str]] | None = None,
    ) -> None:
        """Insert or update ``units`` (read from the other side, parents first).

        ``fresh``: the version was created on this side by this run, so none of these
        units can exist here yet (saves looking them up).  ``releasable``: given the
        units here that hold a ref one of ``units`` takes ({uuid: ref}), which of them
        the other side has deleted or re-referenced (``_released_on``) — those let go of
        their refs first.
        """
        if not units:
            return
        fig = self.fig
        fig.units_sent += len(units)
        uuids = {u.uuid for u in units}
        if not fresh and releasable is not None:
            self._free_refs(units, releasable)
        # territories and memberships are compared only where asked for (new units get
        # theirs whole)
        existing = {} if fresh else {
            u.uuid: u
            for u in read_units(self.reg, self.conn, self.version_id, uuids=uuids,
                                territory_for=uuids if everything else territory_for,
                                groups_for=uuids if everything else groups_for)
        }
        parents = {u.values["parent_uuid"] for u in units if u.values["parent_uuid"]}
        tree = {u.uuid: (int(u.unit_key or 0), u.path or "", u.depth)
                for u in existing.values()}
        wanted = parents - set(tree)
        tree |= {p: self._known[p] for p in wanted if p in self._known}
        tree |= self._tree_info(wanted - set(tree))
        new = [u for u in units if u.uuid not in existing]
        fids = self._next_fids(len(new))
        copy = self.backend is Backend.POSTGIS and len(new) >= COPY_FROM
        rows = []
        for u, fid in zip(new, fids, strict=True):
            parent = u.values["parent_uuid"]
            if parent is None:
                path, depth, parent_key = f"/{fid}/", 1, None
            elif parent in tree:
                parent_key, ppath, pdepth = tree[parent]
                path, depth = f"{ppath}{fid}/", pdepth + 1
            else:
                raise ConflictError(
                    f"Unit {u.values['name']!r} ({u.uuid}): its parent ({parent}) is missing "
                    "on the receiving side (deleted there?) and was not sent with it; nothing "
                    "was written for this batch. Pull (or push) first, then try again."
                )
            tree[u.uuid] = (fid, path, depth)
            u_row = self._params(u, not copy) | {"fid": fid, "parent_key": parent_key,
                                                 "path": path, "depth": depth}
            rows.append(u_row)
            existing_new = Unit(u.uuid, depth, u.values, fid, fid, path, None, set())
            existing[u.uuid] = existing_new
        copied: set[str] = set()
        if copy:
            self._copy_new(new, rows)
            copied = {u.uuid for u in new}
        elif rows:
            self.conn.execute(self._insert, rows)
        fig.units_inserted += len(rows)
        inserted = {u.uuid for u in new}
        _canon_locations(itertools.chain.from_iterable(
            (u, existing[u.uuid]) for u in units if u.uuid not in inserted))
        updates, moves = [], []
        for u in units:
            if u.uuid in inserted:
                continue
            old = existing[u.uuid]
            mine, theirs = u.compared(), old.compared()
            if any(mine[k] != theirs[k] for k in FIELDS if k != "parent_uuid"):
                updates.append(self._params(u, False) | {"fid": old.fid, "_unit": u})
            if mine["parent_uuid"] != theirs["parent_uuid"]:
                moves.append(u)
        if updates:
            geoms = [row.pop("_unit").values["location"] for row in updates]
            blobs = (_wkb_many(geoms) if self.backend is Backend.POSTGIS
                     else [geometry.encode(self.backend, g) for g in geoms])
            for row, blob in zip(updates, blobs, strict=True):
                row["location"] = blob
            if self.backend is Backend.POSTGIS:
                self._update_set(updates)
            else:
                self.conn.execute(self._update, updates)
            fig.units_updated += len(updates)
        moved: list[dict[str, Any]] = []
        for u in sorted(moves, key=lambda m: m.depth):
            parent = u.values["parent_uuid"]
            if parent is not None and parent not in tree:
                raise ConflictError(
                    f"Unit {u.values['name']!r} ({u.uuid}) moves under {parent}, which is "
                    "missing on the receiving side."
                )
            moved.append({"p": tree[parent][0] if parent else None, "f": existing[u.uuid].fid})
        if moved:
            paths = [str(existing[u.uuid].path or "") for u in sorted(moves, key=lambda m: m.depth)]
            targets = [tree[u.values["parent_uuid"]][1] for u in moves if u.values["parent_uuid"]]
            if self.backend is Backend.POSTGIS and _apart(paths, targets):
                # no moved unit is below another or below a new parent: each move's
                # subtree update is independent of the others, so one statement moves all
                self.conn.execute(
                    text("UPDATE org_unit u SET parent_key = n.p FROM unnest(CAST(:p AS bigint[]), "
                         "CAST(:f AS bigint[])) AS n(p, f) WHERE u.fid = n.f"),
                    {"p": [m["p"] for m in moved], "f": [m["f"] for m in moved]})
            else:  # one statement per move, in this order, sent together
                self.conn.execute(text("UPDATE org_unit SET parent_key = :p WHERE fid = :f"),
                                  moved)
            fig.units_moved += len(moved)
        ter = [u for u in units if u.uuid not in copied and (
            everything or u.uuid in inserted
            or (territory_for is not None and u.uuid in territory_for))]
        self._territories(ter, existing)
        grp = [u for u in units if u.uuid not in copied and (
            everything or u.uuid in inserted
            or (groups_for is not None and u.uuid in groups_for))]
        self._memberships(grp, existing)

    def _free_refs(self, units: list[Unit],
                   releasable: Callable[[dict[str, str]], set[str]]) -> None:
        """Refs these units take from other units here let go of first.

        A unit deleted and made again with the same DHIS2 id, two units swapping refs, a
        feature deleted and digitised again in QGIS: a version's refs are unique after
        every statement, not only at the end, so writing the new holder first failed —
        in every push (or pull) after it.  A holder the other side has deleted or given
        another ref has its ref cleared now (logged like any change).  A holder the
        other side never had is another registry's unit: that stops the batch."""
        wanted = {str(u.values["source_ref"]): u for u in units if u.values.get("source_ref")}
        if not wanted:
            return
        holders = {uuid: str(ref) for uuid, ref in _in_rows(
            self.conn, "SELECT uuid, source_ref FROM org_unit WHERE version_id = :v "
            "AND source_ref IN :r", "r", wanted, {"v": self.version_id})
            if wanted[str(ref)].uuid != uuid}
        if not holders:
            return
        free = releasable(holders)
        stuck = sorted(set(holders) - free)
        if stuck:
            ref = holders[stuck[0]]
            raise ConflictError(
                f"Unit {wanted[ref].values['name']!r} ({wanted[ref].uuid}) has ref {ref}, "
                f"which unit {stuck[0]} holds on the receiving side — a unit the sending "
                f"side never had{f' (and {len(stuck) - 1} more like it)' if len(stuck) > 1 else ''}"
                ". Is another registry pushing the same source and version to this schema? "
                "Each registry needs a schema of its own. If the two units are one (made "
                "twice, once on each side), push with --prefer-local (or pull with "
                "--prefer-central) to let the sending side's unit have the ref. Nothing of "
                "this batch was written.")
        stmt = text("UPDATE org_unit SET source_ref = NULL WHERE version_id = :v "
                    "AND uuid IN :u").bindparams(bindparam("u", expanding=True))
        for part in _chunks(sorted(free)):
            self.conn.execute(stmt, {"v": self.version_id, "u": part})

    #: (column, PostgreSQL type) of the set-wise update of units
    _SET_COLUMNS = (("fid", "bigint"), ("location", "bytea"), ("source_ref", "text"),
                    ("name", "text"), ("code", "text"), ("type_id", "bigint"),
                    ("validation_status", "text"), ("opening_date", "date"),
                    ("closed_date", "date"), ("aliases", "jsonb"), ("extra_fields", "jsonb"))

    def _update_set(self, updates: list[dict[str, Any]]) -> None:
        """PostgreSQL: every update in one statement — the rows travel as arrays
        (``unnest``).  The central ``org_unit`` triggers are statement-level (migration
        0006): one published-version check, one ``INSERT … SELECT`` into the change log
        (before/after, only for units whose values changed) and one territory-name
        update for the whole statement, so the pusher leaves the logging to them."""
        cols = self._SET_COLUMNS
        sets = ", ".join(
            f"{c} = ST_GeomFromWKB(n.{c}, {geometry.SRID})" if c == "location" else f"{c} = n.{c}"
            for c, _t in cols if c != "fid")
        arrays = ", ".join(f"CAST(:{c} AS {t}[])" for c, t in cols)
        names = ", ".join(c for c, _t in cols)
        self.conn.execute(
            text(f"UPDATE org_unit u SET {sets} FROM unnest({arrays}) AS n({names}) "
                 "WHERE u.fid = n.fid"),
            {c: [row[c] for row in updates] for c, _t in cols})

    def _copy_new(self, new: list[Unit], rows: list[dict[str, Any]]) -> None:
        """Many new units on PostgreSQL: COPY them (with their territories and memberships)
        with the per-row audit off, then write the same change-log rows set-wise — as
        ``storage.bulk`` does for imports."""
        conn, fig, v = self.conn, self.fig, self.version_id
        self.reg.set_audit(conn, False)
        keys = self._group_keys()
        raw = conn.connection.driver_connection
        assert raw is not None
        territories: list[tuple[Any, ...]] = []
        members: list[tuple[Any, ...]] = []
        locations = _ewkb_many([u.values["location"] for u in new])
        with raw.cursor() as cur:
            with cur.copy(
                "COPY org_unit (fid, location, version_id, unit_key, uuid, source_ref, name, "
                "code, type_id, parent_key, path, depth, validation_status, opening_date, "
                "closed_date, aliases, extra_fields) FROM STDIN"
            ) as copy:
                for u, r, loc in zip(new, rows, locations, strict=True):
                    copy.write_row((
                        r["fid"], loc, v, r["fid"], r["uuid"],
                        r["source_ref"], r["name"], r["code"], r["type_id"], r["parent_key"],
                        r["path"], r["depth"], r["validation_status"], r["opening_date"],
                        r["closed_date"], r["aliases"], r["extra_fields"],
                    ))
                    if u.territory is not None and not u.territory.is_empty:
                        territories.append((_ewkb(geometry.as_multipolygon(u.territory)),
                                            r["fid"], v, r["name"]))
                    if u.groups:
                        fig.memberships_sent += 1
                        for ident in sorted(u.groups):
                            if ident in keys:
                                members.append((v, keys[ident], r["fid"]))
                            else:
                                fig.warnings.append(
                                    f"Unit {r['name']!r}: group {ident} does not exist on the "
                                    "receiving side; membership left out.")
            if territories:
                with cur.copy("COPY org_unit_territory (territory, unit_fid, version_id, name) "
                              "FROM STDIN") as copy:
                    for row in territories:
                        copy.write_row(row)
            if members:
                with cur.copy("COPY group_membership (version_id, group_key, unit_key) "
                              "FROM STDIN") as copy:
                    for row in members:
                        copy.write_row(row)
        fig.territories_sent += len(territories)
        fig.territories_changed += len(territories)
        fig.memberships_added += len(members)
        fids = [r["fid"] for r in rows]
        _join, ctx = audit_sql.context_columns(Backend.POSTGIS)
        cols = audit_sql.LOG_COLUMNS
        conn.execute(text(
            f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'org_unit', 'insert', u.uuid, "
            f"u.unit_key, u.fid, NULL, {audit_sql.unit_json(Backend.POSTGIS, 'u')}, {ctx} "
            "FROM org_unit u WHERE u.fid = ANY(:f) ORDER BY u.fid"), {"f": fids})
        if territories:
            conn.execute(text(
                f"INSERT INTO change_log ({cols}) SELECT u.version_id, 'territory', 'insert', "
                f"u.uuid, u.unit_key, t.fid, NULL, "
                f"{audit_sql.territory_json(Backend.POSTGIS, 't')}, {ctx} "
                "FROM org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid "
                "WHERE t.unit_fid = ANY(:f) ORDER BY t.fid"), {"f": fids})
        if members:
            conn.execute(text(
                f"INSERT INTO change_log ({cols}) SELECT m.version_id, 'group_membership', "
                "'insert', u.uuid, u.unit_key, m.fid, NULL, "
                f"jsonb_build_object('group_key', m.group_key, 'group', g.name), {ctx} "
                "FROM group_membership m JOIN org_unit u ON u.version_id = m.version_id "
                "AND u.unit_key = m.unit_key JOIN org_unit_group g ON g.version_id = "
                "m.version_id AND g.group_key = m.group_key WHERE m.version_id = :v "
                "AND m.unit_key = ANY(:f) ORDER BY m.fid"), {"v": v, "f": fids})
        self.reg.set_audit(conn, True)

    def _group_keys(self) -> dict[str, int]:
        return {
            group_identity(r.source_ref, r.name): r.group_key
            for r in self.conn.execute(
                text("SELECT group_key, source_ref, name FROM org_unit_group WHERE version_id = :v"),
                {"v": self.version_id},
            )
        }

    def _territories(self, units: list[Unit], existing: dict[str, Unit]) -> None:
        bind = geometry.bind_sql(self.backend, "g")
        for u in units:
            old = existing[u.uuid]
            want, have = _wkb(u.territory), _wkb(old.territory)
            if want is None and have is None:
                continue
            self.fig.territories_sent += 1
            if want == have:
                continue
            if want is None:
                self.conn.execute(
                    text("DELETE FROM org_unit_territory WHERE unit_fid = :f"), {"f": old.fid}
                )
            else:
                blob = geometry.encode(self.backend, geometry.as_multipolygon(u.territory))
                sql = (
                    f"UPDATE org_unit_territory SET territory = {bind} WHERE unit_fid = :f"
                    if have is not None
                    else f"INSERT INTO org_unit_territory (territory, unit_fid) VALUES ({bind}, :f)"
                )
                self.conn.execute(text(sql), {"g": blob, "f": old.fid})
            self.fig.territories_changed += 1

    def _memberships(self, units: list[Unit], existing: dict[str, Unit]) -> None:
        if not units:
            return
        keys = self._group_keys()
        add, remove = [], []
        for u in units:
            old = existing[u.uuid]
            want, have = set(u.groups or ()), set(old.groups or ())
            if not want and not have:
                continue
            self.fig.memberships_sent += 1
            for ident in sorted(want - have):
                if ident not in keys:
                    self.fig.warnings.append(
                        f"Unit {u.values['name']!r}: group {ident} does not exist on the "
                        "receiving side; membership left out."
                    )
                    continue
                add.append({"v": self.version_id, "g": keys[ident], "u": old.unit_key})
            for ident in sorted(have - want):
                remove.append({"v": self.version_id, "g": keys[ident], "u": old.unit_key})
        if add:
            self.conn.execute(
                text(
                    "INSERT INTO group_membership (version_id, group_key, unit_key) "
                    "VALUES (:v, :g, :u)"
                ),
                add,
            )
        if remove:
            self.conn.execute(
                text(
                    "DELETE FROM group_membership WHERE version_id = :v AND group_key = :g "
                    "AND unit_key = :u"
                ),
                remove,
            )
        self.fig.memberships_added += len(add)
        self.fig.memberships_removed += len(remove)

    def delete(self, uuids: Iterable[str]) -> None:
        wanted = sorted(set(uuids))
        if not wanted:
            return
        stmt = text("DELETE FROM org_unit WHERE version_id = :v AND uuid IN :u").bindparams(
            bindparam("u", expanding=True)
        )
        for part in _chunks(wanted):
            self.fig.units_deleted += self.conn.execute(
                stmt, {"v": self.version_id, "u": part}
            ).rowcount


def _released_on(reg: Registry, version_id: int, sender_wins: bool = False
                 ) -> Callable[[dict[str, str]], set[str]]:
    """For ``UnitWriter.upsert``: which holders of a ref ({uuid: ref} on the receiving
    side) the sending side ``reg`` has given another ref, or deleted (its change log
    says so) — as opposed to units it never had.  ``sender_wins`` (--prefer-local on a
    push, --prefer-central on a pull): all of them."""
    def released(holders: dict[str, str]) -> set[str]:
        if sender_wins:
            return set(holders)
        with reg.read() as conn:
            present = {r.uuid: r.source_ref for r in _in_rows(
                conn, "SELECT uuid, source_ref FROM org_unit WHERE version_id = :v "
                "AND uuid IN :u", "u", holders, {"v": version_id})}
            absent = set(holders) - set(present)
            deleted = {r.unit_uuid for r in _in_rows(
                conn, "SELECT DISTINCT unit_uuid FROM change_log WHERE version_id = :v "
                "AND entity = 'org_unit' AND op = 'delete' AND unit_uuid IN :u", "u", absent,
                {"v": version_id})} if absent else set()
        return {u for u, ref in present.items() if ref != holders[u]} | deleted
    return released


def _apart(moved: list[str], targets: list[str]) -> bool:
    """Whether no path in ``moved`` is an ancestor of another of them or of a path in
    ``targets`` (materialised paths ``/1/7/42/``; an empty path is unknown: not apart)."""
    if not all(moved):
        return False
    mine = set(moved)
    if len(mine) != len(moved):
        return False
    for path in [*moved, *targets]:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            if "/" + "/".join(parts[:i]) + "/" in mine:
                return False
    return not (set(targets) & mine)


def _wkb_many(geoms: list[BaseGeometry | None]) -> list[bytes | None]:
    """``geometry.encode`` (PostgreSQL, SpatiaLite: ISO WKB) of many geometries at once."""
    present = [i for i, g in enumerate(geoms) if g is not None]
    out: list[bytes | None] = [None] * len(geoms)
    if present:
        arr = np.asarray([geoms[i] for i in present], dtype=object)
        for i, value in zip(present, shapely.to_wkb(arr, byte_order=1, flavor="iso"), strict=True):
            out[i] = bytes(value)
    return out


def _ewkb_many(geoms: list[BaseGeometry | None]) -> list[str | None]:
    """Hex EWKB of many geometries at once (None stays None)."""
    present = [i for i, g in enumerate(geoms) if g is not None]
    out: list[str | None] = [None] * len(geoms)
    if present:
        arr = shapely.set_srid(np.asarray([geoms[i] for i in present], dtype=object),
                               geometry.SRID)
        for i, value in zip(present, shapely.to_wkb(arr, hex=True, byte_order=1,
                                                     include_srid=True), strict=True):
            out[i] = str(value)
    return out


def _ewkb(geom: BaseGeometry | None) -> str | None:
    """Hex EWKB with the SRID: what PostGIS reads from COPY."""
    if geom is None:
        return None
    return str(shapely.to_wkb(shapely.set_srid(geom, geometry.SRID), hex=True, byte_order=1,
                              include_srid=True))


def _close_ancestors(
    reg: Registry,
    conn: Connection,
    version_id: int,
    units: list[Unit],
    present_on_target: Callable[[set[str]], set[str]],
) -> list[Unit]:
    """Add the parents the receiving side lacks (e.g. a unit moved under a new unit)."""
    have = {u.uuid for u in units}
    while True:
        parents = {u.values["parent_uuid"] for u in units if u.values["parent_uuid"]} - have
        if not parents:
            break
        missing = parents - present_on_target(parents)
        if not missing:
            break
        extra = read_units(reg, conn, version_id, uuids=missing, everything=True)
        if not extra:
            break
        units = units + extra
        have |= {u.uuid for u in extra}
    units.sort(key=lambda u: (u.depth, u.fid or 0))
    return units
