"""Data sources and their versions: create, copy to a new draft, publish, default."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, exc, text

from storage import audit_sql
from storage.backends import Backend
from storage.errors import ConflictError, InvalidInput, NotFound, PublishedVersionError
from storage.registry import Registry


@dataclass(frozen=True)
class VersionRef:
    """A resolved version: what every other module takes to address units."""

    id: int
    source_id: int
    source: str
    number: int
    status: str

    @property
    def label(self) -> str:
        return f"{self.source} v{self.number}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"label": self.label}


def _source_row(conn: Connection, source: str | int) -> Any:
    if isinstance(source, int) or (isinstance(source, str) and source.isdigit()):
        row = conn.execute(
            text("SELECT fid, name, default_version_id FROM data_source WHERE fid = :s OR name = :n"),
            {"s": int(source), "n": str(source)},
        ).first()
    else:
        row = conn.execute(
            text("SELECT fid, name, default_version_id FROM data_source WHERE name = :n"),
            {"n": source},
        ).first()
    if row is None:
        names = [r[0] for r in conn.execute(text("SELECT name FROM data_source ORDER BY name"))]
        hint = f" Sources here: {', '.join(names)}." if names else " This registry has no source yet."
        raise NotFound(f"No data source named {source!r}.{hint}")
    return row


def resolve_version(conn: Connection, source: str | int, number: int | None = None) -> VersionRef:
    """``source`` + ``number`` → version; no number means the default, else the newest."""
    src = _source_row(conn, source)
    if number is None:
        row = conn.execute(
            text(
                "SELECT fid, number, status FROM source_version WHERE source_id = :s "
                "ORDER BY CASE WHEN fid = :d THEN 0 ELSE 1 END, number DESC LIMIT 1"
            ),
            {"s": src.fid, "d": src.default_version_id or -1},
        ).first()
        if row is None:
            raise NotFound(
                f"Source {src.name!r} has no version yet. Create one with "
                f"'georeg version new REG --source \"{src.name}\"'."
            )
    else:
        row = conn.execute(
            text("SELECT fid, number, status FROM source_version WHERE source_id = :s AND number = :n"),
            {"s": src.fid, "n": number},
        ).first()
        if row is None:
            raise NotFound(f"Source {src.name!r} has no version {number}.")
    return VersionRef(row.fid, src.fid, src.name, row.number, row.status)


def version_by_id(conn: Connection, version_id: int) -> VersionRef:
    row = conn.execute(
        text(
            "SELECT v.fid, v.source_id, s.name, v.number, v.status FROM source_version v "
            "JOIN data_source s ON s.fid = v.source_id WHERE v.fid = :v"
        ),
        {"v": version_id},
    ).first()
    if row is None:
        raise NotFound(f"No version with id {version_id}.")
    return VersionRef(row[0], row[1], row[2], row[3], row[4])


def require_draft(version: VersionRef, conn: Connection | None = None) -> None:
    """Refuse early, with the command that fixes it, before the database would.  Given
    ``conn``, the error names the source's draft when it has one (see :func:`_published`)."""
    if version.status == "published":
        raise _published(version, conn)


def newest_draft(conn: Connection, source_id: int) -> int | None:
    """The number of the source's newest draft, if it has one."""
    number = conn.execute(text("SELECT max(number) FROM source_version WHERE source_id = :s "
                               "AND status = 'draft'"), {"s": source_id}).scalar()
    return None if number is None else int(number)


def _published(version: VersionRef, conn: Connection | None = None) -> PublishedVersionError:
    """The error for an edit of a published version.  When the source already has a
    draft (read through ``conn``), it is the one to edit: advising a new draft would
    make a second one."""
    draft = None if conn is None else newest_draft(conn, version.source_id)
    if draft is not None:
        return PublishedVersionError(
            f"{version.label} is published and read-only; draft v{draft} exists: "
            f"add -v {draft} to edit it.")
    return PublishedVersionError(
        f"{version.label} is published and read-only. Make a new draft to edit it: "
        f"georeg version new REG --source \"{version.source}\" --from {version.number}"
    )


def create_source(
    reg: Registry, name: str, *, description: str | None = None, origin: str = "api"
) -> dict[str, Any]:
    name = (name or "").strip()
    if not name:
        raise InvalidInput("A data source needs a name (field 'name' is empty).")
    with reg.write(origin=origin) as conn:
        exists = conn.execute(text("SELECT 1 FROM data_source WHERE name = :n"), {"n": name}).first()
        if exists:
            raise ConflictError(f"A data source named {name!r} already exists.")
        fid = conn.execute(
            text("INSERT INTO data_source (name, description) VALUES (:n, :d) RETURNING fid"),
            {"n": name, "d": description},
        ).scalar_one()
    return {"id": fid, "name": name, "description": description}


def ensure_source(conn: Connection, name: str, description: str | None = None) -> int:
    row = conn.execute(text("SELECT fid FROM data_source WHERE name = :n"), {"n": name}).first()
    if row:
        return int(row[0])
    return int(
        conn.execute(
            text("INSERT INTO data_source (name, description) VALUES (:n, :d) RETURNING fid"),
            {"n": name, "d": description},
        ).scalar_one()
    )


def list_sources(reg: Registry) -> list[dict[str, Any]]:
    with reg.read() as conn:
        rows = conn.execute(
            text(
                "SELECT s.fid, s.name, s.description, s.default_version_id, "
                "(SELECT count(*) FROM source_version v WHERE v.source_id = s.fid) AS versions, "
                "(SELECT number FROM source_version v WHERE v.fid = s.default_version_id) AS dflt, "
                "(SELECT max(number) FROM source_version v WHERE v.source_id = s.fid) AS latest "
                "FROM data_source s ORDER BY s.name"
            )
        ).all()
    return [
        {
            "id": r.fid,
            "name": r.name,
            "description": r.description,
            "versions": r.versions,
            "default_version": r.dflt,
            "latest_version": r.latest,
        }
        for r in rows
    ]


def insert_version(
    conn: Connection,
    source_id: int,
    *,
    description: str | None = None,
    copied_from_id: int | None = None,
    author: str | None = None,
) -> int:
    """Add the next-numbered draft version of a source; returns its id.

    The number is ``max + 1``.  On PostgreSQL two transactions (two merges, an import
    and a ``version new``…) would both read the same max and the second would fail on
    the unique (source, number) key — with a raw constraint error, after waiting for
    the first.  So the source's row is locked first (``FOR NO KEY UPDATE``: it does not
    block readers, nor rows that merely reference the source): whoever comes second
    waits for the first to commit or roll back, then numbers after it.  SQLite needs no
    lock (one writer at a time).  Should the number still be taken (a writer that does
    not come through here, such as a sync copying versions with their numbers), the
    error says what happened and that running it again is safe: the whole transaction
    is rolled back.
    """
    if author is None:
        author = _author(conn)
    lock = " FOR NO KEY UPDATE" if conn.dialect.name == "postgresql" else ""
    name = conn.execute(
        text(f"SELECT name FROM data_source WHERE fid = :s{lock}"), {"s": source_id}
    ).scalar()
    number = conn.execute(
        text("SELECT COALESCE(max(number), 0) + 1 FROM source_version WHERE source_id = :s"),
        {"s": source_id},
    ).scalar_one()
    try:
        return int(
            conn.execute(
                text(
                    "INSERT INTO source_version (source_id, number, description, copied_from_id, "
                    "created_by) VALUES (:s, :n, :d, :c, :a) RETURNING fid"
                ),
                {"s": source_id, "n": number, "d": description, "c": copied_from_id, "a": author},
            ).scalar_one()
        )
    except exc.IntegrityError as error:
        low = str(error.orig).lower()
        if "unique" not in low and "duplicate key" not in low:
            raise
        raise ConflictError(
            f"Version {number} of {name!r} was created by someone else at the same time (another "
            "merge, import or 'georeg version new' for this source). Nothing was written: run "
            "it again and it will make the next number."
        ) from error


def create_version(
    reg: Registry,
    source: str,
    *,
    copy_from: int | None = None,
    description: str | None = None,
    origin: str = "api",
    create_source_if_missing: bool = False,
) -> dict[str, Any]:
    """A new draft: empty, or a copy of version ``copy_from`` made in SQL."""
    with reg.write(origin=origin, audit=False) as conn:
        if create_source_if_missing:
            ensure_source(conn, source)
        src = _source_row(conn, source)
        base = resolve_version(conn, source, copy_from) if copy_from is not None else None
        if base is not None:
            _refuse_open_conflicts(conn, base, "copied")
        vid = insert_version(
            conn, src.fid, description=description, copied_from_id=base.id if base else None
        )
        counts = copy_version_content(reg, conn, base.id, vid) if base else {"units": 0}
        log_version(conn, vid, "create", {"copied_from": base.number if base else None} | counts)
        version = version_by_id(conn, vid)
    return version.to_dict() | {"copied_from": base.number if base else None, **counts}


def _author(conn: Connection, reg: Registry | None = None) -> str | None:
    """The author of the current write transaction (set by Registry.write)."""
    if conn.dialect.name == "sqlite":
        return conn.execute(text("SELECT author FROM edit_context WHERE fid = 1")).scalar()
    return conn.execute(text("SELECT NULLIF(current_setting('georeg.author', true), '')")).scalar()


def log_version(conn: Connection, version_id: int, op: str, after: dict[str, Any]) -> None:
    """One change-log entry for a whole-version operation (copy, publish …)."""
    sqlite = conn.dialect.name == "sqlite"
    join, ctx = audit_sql.context_columns(Backend.GEOPACKAGE if sqlite else Backend.POSTGIS)
    value = ":after" if sqlite else "CAST(:after AS jsonb)"
    conn.execute(
        text(
            "INSERT INTO change_log (version_id, entity, op, after, origin, author, operation) "
            f"SELECT :v, 'version', :op, {value}, {ctx}{' FROM (SELECT 1) one' if not sqlite else ''}"
            f"{' FROM (SELECT 1) one' + join if sqlite else ''}"
        ),
        {"v": version_id, "op": op, "after": json.dumps(after)},
    )


_UNIT_COPY_COLUMNS = (
    "location, unit_key, uuid, source_ref, name, code, type_id, parent_key, path, depth, "
    "validation_status, opening_date, closed_date, aliases, extra_fields"
)


def copy_version_content(
    reg: Registry, conn: Connection, from_id: int, to_id: int
) -> dict[str, int]:
    """Copy units, territories, groups and memberships set-wise: no row leaves SQL.

    Stable keys (unit_key, group_key, set_key) and paths are kept, so nothing is remapped
    but the territories' link to their unit's new row id.  Callers switch the per-row
    audit off: the copy is logged as one 'version create' entry.
    """
    p = {"src": from_id, "dst": to_id}
    if conn.dialect.name == "sqlite":
        units, offset = _copy_units_sqlite(reg, conn, from_id, to_id)
        territories = conn.execute(
            text(
                "INSERT INTO org_unit_territory (territory, unit_fid, version_id, name) "
                "SELECT t.territory, t.unit_fid + :off, :dst, t.name FROM org_unit_territory t "
                "JOIN org_unit o ON o.fid = t.unit_fid WHERE o.version_id = :src ORDER BY t.fid"
            ),
            p | {"off": offset},
        ).rowcount
    else:
        units = conn.execute(
            text(
                f"INSERT INTO org_unit (version_id, {_UNIT_COPY_COLUMNS}) "
                f"SELECT :dst, {_UNIT_COPY_COLUMNS} FROM org_unit WHERE version_id = :src"
            ),
            p,
        ).rowcount
        territories = conn.execute(
            text(
                "INSERT INTO org_unit_territory (territory, unit_fid, version_id, name) "
                "SELECT t.territory, n.fid, :dst, t.name FROM org_unit_territory t "
                "JOIN org_unit o ON o.fid = t.unit_fid "
                "JOIN org_unit n ON n.version_id = :dst AND n.unit_key = o.unit_key "
                "WHERE o.version_id = :src"
            ),
            p,
        ).rowcount
    groups = conn.execute(
        text(
            "INSERT INTO org_unit_group (version_id, group_key, source_ref, name, short_name, code) "
            "SELECT :dst, group_key, source_ref, name, short_name, code FROM org_unit_group "
            "WHERE version_id = :src"
        ),
        p,
    ).rowcount
    members = conn.execute(
        text(
            "INSERT INTO group_membership (version_id, group_key, unit_key) "
            "SELECT :dst, group_key, unit_key FROM group_membership WHERE version_id = :src"
        ),
        p,
    ).rowcount
    conn.execute(
        text(
            "INSERT INTO group_set (version_id, set_key, source_ref, name, short_name, belonging, "
            "compulsory) SELECT :dst, set_key, source_ref, name, short_name, belonging, compulsory "
            "FROM group_set WHERE version_id = :src"
        ),
        p,
    )
    conn.execute(
        text(
            "INSERT INTO group_set_member (version_id, set_key, group_key) "
            "SELECT :dst, set_key, group_key FROM group_set_member WHERE version_id = :src"
        ),
        p,
    )
    return {"units": units, "territories": territories, "groups": groups, "memberships": members}


#: per-row insert triggers on org_unit that a copy sets aside (see ``_copy_units_sqlite``)
_GUARD, _AUDIT, _FILL = "org_unit_insert_published", "org_unit_audit_insert", "org_unit_fill"
_SPATIAL = {
    Backend.GEOPACKAGE: ("rtree_org_unit_location_insert",),
    Backend.SPATIALITE: ("ggi_org_unit_location", "tmi_org_unit_location",
                         "gii_org_unit_location"),
}
_RTREE = {
    Backend.GEOPACKAGE: ("rtree_org_unit_location", "id, minx, maxx, miny, maxy"),
    Backend.SPATIALITE: ("idx_org_unit_location", "pkid, xmin, xmax, ymin, ymax"),
}


def _copy_units_sqlite(
    reg: Registry, conn: Connection, from_id: int, to_id: int
) -> tuple[int, int]:
    """SQLite: the units of ``from_id`` into ``to_id``; returns (count, fid offset).

    Each copy gets row id ``fid + offset`` (rows in the same order, after every row id
    ever used), so the territories and the spatial index follow without a lookup.
    What the per-row insert triggers would do is done once for the whole set: the
    published-version guard is checked here, the identity/path fill has nothing to fill
    (kept in place if a source row lacks its key, uuid or depth), the insert audit is
    quiet (kept if the caller left the audit on).  The spatial index gets the source
    units' boxes — the same geometries, so the very boxes its trigger would compute —
    bulk-loaded under its root (``bulk.fill_rtree``) instead of one R-tree insertion
    per unit: that insertion was half the copy's time.  SpatiaLite's per-row geometry
    check has nothing to check (the same column's values) and its insert-time stamp
    is set once.  DDL is transactional in SQLite and we hold the write lock: nobody
    sees the triggers missing, and an error rolls their drop back.
    """
    from storage.bulk import fill_rtree  # numpy and shapely: loaded when a copy runs

    status = conn.execute(
        text("SELECT status FROM source_version WHERE fid = :v"), {"v": to_id}
    ).scalar()
    if status == "published":
        raise _published(version_by_id(conn, to_id), conn)
    bounds = conn.execute(
        text(
            "SELECT min(fid), max(fid), count(*), sum(unit_key IS NULL OR uuid IS NULL "
            "OR depth IS NULL) FROM org_unit WHERE version_id = :v"
        ),
        {"v": from_id},
    ).one()
    if not bounds[2]:
        return 0, 0
    next_fid = conn.execute(
        text(
            "SELECT max(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'org_unit'), 0), "
            "COALESCE((SELECT max(fid) FROM org_unit), 0)) + 1"
        )
    ).scalar_one()
    offset = int(next_fid) - int(bounds[0])
    names = [_GUARD, *_SPATIAL.get(reg.backend, ())]
    if not bounds[3]:
        names.append(_FILL)
    if not conn.execute(text("SELECT audit FROM edit_context WHERE fid = 1")).scalar():
        names.append(_AUDIT)
    aside = [
        (r[0], r[1])
        for r in conn.execute(
            text(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                f"AND tbl_name = 'org_unit' AND name IN ({', '.join(repr(n) for n in names)})"
            )
        )
    ]
    for name, _sql in aside:
        conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
    p = {"src": from_id, "dst": to_id, "off": offset}
    first, last, count = int(bounds[0]), int(bounds[1]), int(bounds[2])
    # the version's rows are exactly the row ids first..last (the common case: a version
    # imported or copied whole): read them in row-id order, no index search, no sort
    contiguous = last - first + 1 == count
    where = (f"fid BETWEEN {first} AND {last}" if contiguous
             else "version_id = :src ORDER BY fid")
    units = conn.execute(
        text(
            f"INSERT INTO org_unit (fid, version_id, {_UNIT_COPY_COLUMNS}) "
            f"SELECT fid + :off, :dst, {_UNIT_COPY_COLUMNS} FROM org_unit WHERE {where}"
        ),
        p,
    ).rowcount
    dropped = {name for name, _sql in aside}
    if reg.backend in _RTREE and _SPATIAL[reg.backend][-1] in dropped:
        rtree, cols = _RTREE[reg.backend]
        key = cols.split(",")[0]
        boxes = (
            f"SELECT r.{key} + {offset}, {', '.join('r.' + c.strip() for c in cols.split(',')[1:])} "
            f'FROM "{rtree}" r '
        )
        if contiguous:  # no lookup of each box's unit needed either
            boxes += f"WHERE r.{key} BETWEEN {first} AND {last}"
        else:
            boxes += f"JOIN org_unit o ON o.fid = r.{key} WHERE o.version_id = {from_id}"

        fill_rtree(conn.connection.dbapi_connection, rtree, boxes)  # type: ignore[arg-type]
    if "tmi_org_unit_location" in dropped:
        conn.exec_driver_sql(
            "UPDATE geometry_columns_time SET last_insert = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "WHERE Lower(f_table_name) = 'org_unit' AND Lower(f_geometry_column) = 'location'"
        )
    for _name, sql in aside:
        conn.exec_driver_sql(sql)
    return units, offset


def publish_version(
    reg: Registry, source: str, number: int, *, make_default: bool = False, origin: str = "api"
) -> dict[str, Any]:
    with reg.write(origin=origin) as conn:
        version = resolve_version(conn, source, number)
        if version.status == "published":
            raise PublishedVersionError(f"{version.label} is already published.")
        _refuse_open_conflicts(conn, version)
        conn.execute(
            text(
                "UPDATE source_version SET status = 'published', published_at = "
                + (
                    "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')"
                    if conn.dialect.name == "sqlite"
                    else "to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                )
                + ", published_by = :a WHERE fid = :v"
            ),
            {"v": version.id, "a": _author(conn)},
        )
        if make_default:
            conn.execute(
                text("UPDATE data_source SET default_version_id = :v WHERE fid = :s"),
                {"v": version.id, "s": version.source_id},
            )
        log_version(conn, version.id, "publish", {"number": number, "default": make_default})
        return version_by_id(conn, version.id).to_dict()


def _refuse_open_conflicts(conn: Connection, version: VersionRef, action: str = "published"
                           ) -> None:
    """A merged draft with unresolved merge conflicts cannot be published (the database
    refuses it too: trigger of migration 0004), nor copied (the copy would lose them), nor
    made the default version (phones would get its placeholder values)."""
    count = conn.execute(
        text("SELECT count(*) FROM merge_conflict WHERE version_id = :v AND status = 'open'"),
        {"v": version.id},
    ).scalar_one()
    if count:
        raise ConflictError(
            f"{version.label} has {count} unresolved merge conflict(s) and cannot be {action}. "
            f"List them with 'georeg conflicts list REG --version \"{version.source}:"
            f"{version.number}\"' and settle each with 'georeg conflicts resolve REG ID --take …'."
        )


def set_default_version(
    reg: Registry, source: str, number: int, *, origin: str = "api"
) -> dict[str, Any]:
    """Make ``number`` the version served to phones and read when no version is named.

    A merged draft with open conflicts is refused, as for publishing and copying: while
    they are open it holds placeholder values (the base's) and possibly both of two
    duplicate units, which the phones would then receive.
    """
    with reg.write(origin=origin) as conn:
        version = resolve_version(conn, source, number)
        _refuse_open_conflicts(conn, version, "made the default version")
        conn.execute(
            text("UPDATE data_source SET default_version_id = :v WHERE fid = :s"),
            {"v": version.id, "s": version.source_id},
        )
        log_version(conn, version.id, "set_default", {"number": number})
        return version.to_dict() | {"default": True}


def list_versions(reg: Registry, source: str) -> list[dict[str, Any]]:
    with reg.read() as conn:
        src = _source_row(conn, source)
        rows = conn.execute(
            text(
                "SELECT v.fid, v.number, v.status, v.description, v.created_at, v.created_by, "
                "v.published_at, v.copied_from_id, "
                "(SELECT count(*) FROM org_unit u WHERE u.version_id = v.fid) AS units "
                "FROM source_version v WHERE v.source_id = :s ORDER BY v.number"
            ),
            {"s": src.fid},
        ).all()
    return [
        {
            "id": r.fid,
            "number": r.number,
            "status": r.status,
            "default": r.fid == src.default_version_id,
            "description": r.description,
            "units": r.units,
            "created_at": r.created_at,
            "created_by": r.created_by,
            "published_at": r.published_at,
        }
        for r in rows
    ]


def delete_version(reg: Registry, source: str, number: int, *, force: bool = False,
                   origin: str = "api") -> dict[str, Any]:
    """Delete a draft version (a published one is refused by the database itself).

    A 3-way merge's draft whose conflicts someone already resolved is refused unless
    ``force``: its conflicts go with it (ON DELETE CASCADE), and with them the
    decisions made — deleting the draft to abort the merge must not drop them
    silently.  The count is returned (``resolved_conflicts_lost``).

    A draft with change requests from the field still waiting for review is refused:
    they name it as the version the phone saw and the one an approval writes to, so
    they would be left pointing at nothing (no approval possible, and before this
    check the whole list of requests failed).  Reviewed requests stay as history; the
    change log's ``delete`` entry keeps the source's name so they can still say where
    they were made.
    """
    with reg.write(origin=origin, audit=False) as conn:
        version = resolve_version(conn, source, number)
        if version.status == "published":
            raise _published(version)
        _refuse_pending_requests(conn, version)
        resolved = int(conn.execute(
            text("SELECT count(*) FROM merge_conflict WHERE version_id = :v "
                 "AND status = 'resolved'"), {"v": version.id}).scalar_one())
        if resolved and not force:
            raise ConflictError(
                f"{version.label} is a merge's draft with {resolved} resolved conflict(s); "
                "deleting it loses those resolutions with it (they are stored with the draft "
                f"and no other version has them). List them with georeg conflicts list REG "
                f"--version \"{version.source}:{version.number}\" --status resolved; to delete "
                "it anyway (e.g. to start the merge over), give --force.")
        was_default = conn.execute(
            text("UPDATE data_source SET default_version_id = NULL WHERE default_version_id = :v"),
            {"v": version.id},
        ).rowcount > 0
        conn.execute(text("DELETE FROM source_version WHERE fid = :v"), {"v": version.id})
        log_version(conn, version.id, "delete", {"number": number, "source": version.source})
    # (the default is cleared, not moved: which version phones get is for a person to say)
    return {"deleted": number, "source": version.source, "was_default": was_default,
            "resolved_conflicts_lost": resolved}


def _refuse_pending_requests(conn: Connection, version: VersionRef) -> None:
    pending = [
        int(r[0])
        for r in conn.execute(
            text("SELECT fid FROM change_request WHERE version_id = :v AND status = 'new' "
                 "ORDER BY fid"),
            {"v": version.id},
        )
    ]
    if not pending:
        return
    shown = ", ".join(f"#{n}" for n in pending[:10]) + (" …" if len(pending) > 10 else "")
    raise ConflictError(
        f"{version.label} has {len(pending)} change request(s) from the field waiting for "
        f"review ({shown}); deleting it would leave them pointing at a version that no "
        "longer exists. Settle each first — approve it (georeg changes approve REG ID) or "
        "reject it (georeg changes reject REG ID --comment WHY) — then delete the version. "
        "List them with 'georeg changes REG --status new'."
    )
