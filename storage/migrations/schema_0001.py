"""The first registry schema, frozen: used only by migration 0001.

Never edit this file once released; change the schema in a new migration.
Tables are written once with type tokens and rendered per backend:
GeoPackage, SpatiaLite (both SQLite) and PostGIS.  Triggers hold the rules
that must hold for every writer, Georeg or not (QGIS, GDAL, plain SQL):
published versions are read-only, moves keep subtree paths right, cycles are
refused, and every edit lands in ``change_log``.
"""

from __future__ import annotations

from typing import Any

# (table, gpkg data_type or None, geometry (column, type) or None, column lines, extra sql)
TABLES: list[tuple[str, str | None, tuple[str, str] | None, list[str], list[str]]] = [
    (
        "data_source",
        "attributes",
        None,
        [
            "fid {PK}",
            "name TEXT NOT NULL UNIQUE",
            "description TEXT",
            "read_only BOOLEAN NOT NULL DEFAULT {FALSE}",
            "default_version_id {INT}",
            "upstream TEXT",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
        ],
        [],
    ),
    (
        "source_version",
        "attributes",
        None,
        [
            "fid {PK}",
            "source_id {INT} NOT NULL REFERENCES data_source(fid) ON DELETE CASCADE",
            "number {INT} NOT NULL",
            "status TEXT NOT NULL DEFAULT 'draft' CHECK (status IN ('draft', 'published'))",
            "description TEXT",
            "copied_from_id {INT}",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "created_by TEXT",
            "published_at {TS}",
            "published_by TEXT",
            "UNIQUE (source_id, number)",
        ],
        [],
    ),
    (
        "org_unit_type",
        "attributes",
        None,
        [
            "fid {PK}",
            "name TEXT NOT NULL UNIQUE",
            "short_name TEXT",
            "depth {INT}",
            "category TEXT",
            "sub_types {JSON}",
        ],
        [],
    ),
    (
        "org_unit",
        "features",
        ("location", "POINT"),
        [
            "fid {PK}",
            "{GEOM}",
            "version_id {INT} NOT NULL REFERENCES source_version(fid) ON DELETE CASCADE",
            "unit_key {INT}",
            "uuid TEXT",
            "source_ref TEXT",
            "name TEXT NOT NULL CHECK (length(trim(name)) > 0)",
            "code TEXT",
            "type_id {INT} REFERENCES org_unit_type(fid)",
            "parent_key {INT}",
            "path TEXT",
            "depth {INT}",
            "validation_status TEXT NOT NULL DEFAULT 'valid'"
            " CHECK (validation_status IN ('new', 'valid', 'rejected'))",
            "opening_date DATE",
            "closed_date DATE",
            "aliases {JSON}",
            "extra_fields {JSON}",
            "UNIQUE (version_id, unit_key)",
            "UNIQUE (version_id, uuid)",
            "UNIQUE (version_id, source_ref)",
            "FOREIGN KEY (version_id, parent_key) REFERENCES org_unit(version_id, unit_key)"
            " DEFERRABLE INITIALLY DEFERRED",
        ],
        [
            "CREATE INDEX org_unit_path_idx ON org_unit (version_id, path)",
            "CREATE INDEX org_unit_parent_idx ON org_unit (version_id, parent_key)",
            "CREATE INDEX org_unit_uuid_idx ON org_unit (uuid)",
            "CREATE INDEX org_unit_type_idx ON org_unit (version_id, type_id)",
        ],
    ),
    (
        "org_unit_territory",
        "features",
        ("territory", "MULTIPOLYGON"),
        [
            "fid {PK}",
            "{GEOM}",
            "unit_fid {INT} NOT NULL UNIQUE REFERENCES org_unit(fid) ON DELETE CASCADE",
            "version_id {INT}",
            "name TEXT",
        ],
        ["CREATE INDEX org_unit_territory_version_idx ON org_unit_territory (version_id)"],
    ),
    (
        "org_unit_group",
        "attributes",
        None,
        [
            "fid {PK}",
            "version_id {INT} NOT NULL REFERENCES source_version(fid) ON DELETE CASCADE",
            "group_key {INT}",
            "source_ref TEXT",
            "name TEXT NOT NULL",
            "short_name TEXT",
            "code TEXT",
            "UNIQUE (version_id, group_key)",
            "UNIQUE (version_id, source_ref)",
        ],
        [],
    ),
    (
        "group_membership",
        "attributes",
        None,
        [
            "fid {PK}",
            "version_id {INT} NOT NULL REFERENCES source_version(fid) ON DELETE CASCADE",
            "group_key {INT} NOT NULL",
            "unit_key {INT} NOT NULL",
            "UNIQUE (version_id, group_key, unit_key)",
            "FOREIGN KEY (version_id, group_key) REFERENCES org_unit_group(version_id, group_key)"
            " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
            "FOREIGN KEY (version_id, unit_key) REFERENCES org_unit(version_id, unit_key)"
            " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
        ],
        ["CREATE INDEX group_membership_unit_idx ON group_membership (version_id, unit_key)"],
    ),
    (
        "group_set",
        "attributes",
        None,
        [
            "fid {PK}",
            "version_id {INT} NOT NULL REFERENCES source_version(fid) ON DELETE CASCADE",
            "set_key {INT}",
            "source_ref TEXT",
            "name TEXT NOT NULL",
            "short_name TEXT",
            "belonging TEXT NOT NULL DEFAULT 'multiple' CHECK (belonging IN ('single', 'multiple'))",
            "compulsory BOOLEAN NOT NULL DEFAULT {FALSE}",
            "UNIQUE (version_id, set_key)",
            "UNIQUE (version_id, source_ref)",
        ],
        [],
    ),
    (
        "group_set_member",
        "attributes",
        None,
        [
            "fid {PK}",
            "version_id {INT} NOT NULL REFERENCES source_version(fid) ON DELETE CASCADE",
            "set_key {INT} NOT NULL",
            "group_key {INT} NOT NULL",
            "UNIQUE (version_id, set_key, group_key)",
            "FOREIGN KEY (version_id, set_key) REFERENCES group_set(version_id, set_key)"
            " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
            "FOREIGN KEY (version_id, group_key) REFERENCES org_unit_group(version_id, group_key)"
            " ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED",
        ],
        [],
    ),
    (
        "change_log",
        "attributes",
        None,
        [
            "fid {PK}",
            "at {TS} NOT NULL DEFAULT {NOW}",
            "version_id {INT}",
            "entity TEXT NOT NULL",
            "op TEXT NOT NULL",
            "unit_uuid TEXT",
            "unit_key {INT}",
            "record_fid {INT}",
            "before {JSON}",
            "after {JSON}",
            "origin TEXT NOT NULL",
            "author TEXT",
            "operation TEXT",
        ],
        [
            "CREATE INDEX change_log_unit_idx ON change_log (unit_uuid)",
            "CREATE INDEX change_log_version_idx ON change_log (version_id)",
        ],
    ),
    (
        "algorithm_run",
        "attributes",
        None,
        [
            "fid {PK}",
            "kind TEXT NOT NULL",
            "left_version_id {INT}",
            "right_version_id {INT}",
            "parameters {JSON}",
            "metrics {JSON}",
            "status TEXT NOT NULL DEFAULT 'running'",
            "launched_by TEXT",
            "started_at {TS} NOT NULL DEFAULT {NOW}",
            "ended_at {TS}",
        ],
        [],
    ),
    (
        "link",
        "attributes",
        None,
        [
            "fid {PK}",
            "run_id {INT} REFERENCES algorithm_run(fid) ON DELETE CASCADE",
            "left_version_id {INT} NOT NULL",
            "left_unit_uuid TEXT",
            "right_version_id {INT} NOT NULL",
            "right_unit_uuid TEXT",
            "score REAL",
            "status TEXT NOT NULL DEFAULT 'review'",
            "kind TEXT NOT NULL DEFAULT 'one_to_one'",
            "evidence {JSON}",
            "reviewer TEXT",
            "reviewed_at {TS}",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
        ],
        [
            "CREATE INDEX link_run_idx ON link (run_id, status)",
            "CREATE INDEX link_left_idx ON link (left_version_id, left_unit_uuid)",
        ],
    ),
    (
        "change_request",
        "attributes",
        None,
        [
            "fid {PK}",
            "uuid TEXT NOT NULL UNIQUE",
            "version_id {INT} NOT NULL",
            "unit_uuid TEXT",
            "kind TEXT NOT NULL CHECK (kind IN ('creation', 'change'))",
            "status TEXT NOT NULL DEFAULT 'new' CHECK (status IN ('new', 'approved', 'rejected'))",
            "requested_fields {JSON}",
            "approved_fields {JSON}",
            "new_parent_uuid TEXT",
            "new_name TEXT",
            "new_type_id {INT}",
            "new_code TEXT",
            "new_opening_date DATE",
            "new_closed_date DATE",
            "new_groups {JSON}",
            "new_location_wkb {BLOB}",
            "new_location_accuracy REAL",
            "new_territory_wkb {BLOB}",
            "old_values {JSON}",
            "device TEXT",
            "created_by TEXT",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "reviewed_by TEXT",
            "reviewed_at {TS}",
            "rejection_comment TEXT",
        ],
        ["CREATE INDEX change_request_status_idx ON change_request (version_id, status)"],
    ),
]

VERSIONED_TABLES = ["org_unit", "org_unit_group", "group_membership", "group_set", "group_set_member"]

SQLITE_TOKENS = {
    "PK": "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL",
    "INT": "INTEGER",
    "JSON": "TEXT",
    "BLOB": "BLOB",
    "TS": "DATETIME",
    "NOW": "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    "FALSE": "0",
}
PG_TOKENS = {
    "PK": "BIGSERIAL PRIMARY KEY",
    "INT": "BIGINT",
    "JSON": "JSONB",
    "BLOB": "BYTEA",
    "TS": "TEXT",
    "NOW": "(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))",
    "FALSE": "FALSE",
}

PUBLISHED_MSG = (
    "georeg:published: This version is published and read-only. "
    "Make a new draft to edit it (georeg version new)."
)
CYCLE_MSG = "georeg:cycle: This move would make a unit its own ancestor."
KEY_MSG = "georeg:invalid: The version_id, unit_key and uuid of a unit cannot be changed."
VERSION_MSG = (
    "georeg:published: A published version cannot be changed or deleted "
    "(only its description may be edited)."
)


def render_tables(backend: str) -> list[str]:
    """CREATE TABLE / INDEX statements for ``gpkg``, ``spatialite`` or ``postgis``."""
    tokens = PG_TOKENS if backend == "postgis" else SQLITE_TOKENS
    out: list[str] = []
    for table, _kind, geom, columns, extra in TABLES:
        cols = []
        for line in columns:
            if line == "{GEOM}":
                if backend == "gpkg":
                    assert geom is not None
                    cols.append(f"{geom[0]} {geom[1]}")
                elif backend == "postgis":
                    assert geom is not None
                    pg_type = "Point" if geom[1] == "POINT" else "MultiPolygon"
                    cols.append(f"{geom[0]} geometry({pg_type}, 4326)")
                continue  # SpatiaLite: AddGeometryColumn below
            cols.append(line.format(**tokens))
        out.append(f'CREATE TABLE "{table}" (\n  ' + ",\n  ".join(cols) + "\n)")
        out.extend(extra)
    return out


# --- GeoPackage core ---------------------------------------------------------------

GPKG_CORE = [
    "PRAGMA application_id = 1196444487",
    "PRAGMA user_version = 10200",
    """CREATE TABLE gpkg_spatial_ref_sys (srs_name TEXT NOT NULL,srs_id INTEGER NOT NULL PRIMARY KEY,
    organization TEXT NOT NULL,organization_coordsys_id INTEGER NOT NULL,definition TEXT NOT NULL,
    description TEXT)""",
    """CREATE TABLE gpkg_contents (table_name TEXT NOT NULL PRIMARY KEY,data_type TEXT NOT NULL,
    identifier TEXT UNIQUE,description TEXT DEFAULT '',last_change DATETIME NOT NULL DEFAULT
    (strftime('%Y-%m-%dT%H:%M:%fZ','now')),min_x DOUBLE, min_y DOUBLE,max_x DOUBLE, max_y DOUBLE,
    srs_id INTEGER,CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES
    gpkg_spatial_ref_sys(srs_id))""",
    """CREATE TABLE gpkg_geometry_columns (table_name TEXT NOT NULL,column_name TEXT NOT NULL,
    geometry_type_name TEXT NOT NULL,srs_id INTEGER NOT NULL,z TINYINT NOT NULL,m TINYINT NOT NULL,
    CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),CONSTRAINT uk_gc_table_name
    UNIQUE (table_name),CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES
    gpkg_contents(table_name),CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES
    gpkg_spatial_ref_sys (srs_id))""",
    """CREATE TABLE gpkg_extensions (table_name TEXT,column_name TEXT,extension_name TEXT NOT NULL,
    definition TEXT NOT NULL,scope TEXT NOT NULL,CONSTRAINT ge_tce UNIQUE (table_name, column_name,
    extension_name))""",
    """INSERT INTO gpkg_spatial_ref_sys VALUES ('Undefined cartesian SRS', -1, 'NONE', -1,
    'undefined', 'undefined cartesian coordinate reference system')""",
    """INSERT INTO gpkg_spatial_ref_sys VALUES ('Undefined geographic SRS', 0, 'NONE', 0,
    'undefined', 'undefined geographic coordinate reference system')""",
    """INSERT INTO gpkg_spatial_ref_sys VALUES ('WGS 84 geodetic', 4326, 'EPSG', 4326,
    'GEOGCS["WGS 84",DATUM["WGS_1984",SPHEROID["WGS 84",6378137,298.257223563,AUTHORITY["EPSG","7030"]],AUTHORITY["EPSG","6326"]],PRIMEM["Greenwich",0,AUTHORITY["EPSG","8901"]],UNIT["degree",0.0174532925199433,AUTHORITY["EPSG","9122"]],AXIS["Latitude",NORTH],AXIS["Longitude",EAST],AUTHORITY["EPSG","4326"]]',
    'longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid')""",
]

GPKG_DESCRIPTIONS = {
    "org_unit": "Organisation units of every version (point location). Filter on version_id.",
    "org_unit_territory": "Territory polygons of organisation units (unit_fid = org_unit.fid).",
}


def gpkg_register(table: str, kind: str, geom: tuple[str, str] | None) -> list[str]:
    desc = GPKG_DESCRIPTIONS.get(table, "").replace("'", "''")
    srs = "4326" if geom else "NULL"
    stmts = [
        f"INSERT INTO gpkg_contents (table_name, data_type, identifier, description, srs_id) "
        f"VALUES ('{table}', '{kind}', '{table}', '{desc}', {srs})"
    ]
    if geom:
        col, gtype = geom
        stmts.append(
            f"INSERT INTO gpkg_geometry_columns VALUES ('{table}', '{col}', '{gtype}', 4326, 0, 0)"
        )
        stmts.extend(gpkg_rtree(table, col))
    return stmts


def gpkg_rtree(t: str, c: str) -> list[str]:
    """The R-tree extension exactly as GDAL writes it (GeoPackage 1.2)."""
    r = f"rtree_{t}_{c}"
    ins = (
        f'INSERT OR REPLACE INTO "{r}" VALUES (NEW."fid",ST_MinX(NEW."{c}"), ST_MaxX(NEW."{c}"),'
        f'ST_MinY(NEW."{c}"), ST_MaxY(NEW."{c}"));'
    )
    return [
        f"INSERT INTO gpkg_extensions VALUES ('{t}', '{c}', 'gpkg_rtree_index', "
        "'http://www.geopackage.org/spec120/#extension_rtree', 'write-only')",
        f'CREATE VIRTUAL TABLE "{r}" USING rtree(id, minx, maxx, miny, maxy)',
        f'CREATE TRIGGER "{r}_insert" AFTER INSERT ON "{t}" WHEN (new."{c}" NOT NULL AND '
        f'NOT ST_IsEmpty(NEW."{c}")) BEGIN {ins} END',
        f'CREATE TRIGGER "{r}_update1" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."fid" = NEW."fid" '
        f'AND (NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}")) BEGIN {ins} END',
        f'CREATE TRIGGER "{r}_update2" AFTER UPDATE OF "{c}" ON "{t}" WHEN OLD."fid" = NEW."fid" '
        f'AND (NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}")) BEGIN DELETE FROM "{r}" WHERE id = '
        'OLD."fid"; END',
        f'CREATE TRIGGER "{r}_update3" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND '
        f'(NEW."{c}" NOTNULL AND NOT ST_IsEmpty(NEW."{c}")) BEGIN DELETE FROM "{r}" WHERE id = '
        f'OLD."fid"; {ins} END',
        f'CREATE TRIGGER "{r}_update4" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND '
        f'(NEW."{c}" ISNULL OR ST_IsEmpty(NEW."{c}")) BEGIN DELETE FROM "{r}" WHERE id IN '
        '(OLD."fid", NEW."fid"); END',
        f'CREATE TRIGGER "{r}_delete" AFTER DELETE ON "{t}" WHEN old."{c}" NOT NULL BEGIN '
        f'DELETE FROM "{r}" WHERE id = OLD."fid"; END',
    ]


# --- SQLite triggers (GeoPackage and SpatiaLite) ------------------------------------

SQLITE_CONTEXT = [
    """CREATE TABLE edit_context (fid INTEGER PRIMARY KEY CHECK (fid = 1), origin TEXT,
    author TEXT, operation TEXT, audit INTEGER NOT NULL DEFAULT 1)""",
]

_ORIGIN = "COALESCE((SELECT origin FROM edit_context WHERE fid = 1), 'external')"
_AUTHOR = "(SELECT author FROM edit_context WHERE fid = 1)"
_OPERATION = "(SELECT operation FROM edit_context WHERE fid = 1)"
_AUDIT_ON = "COALESCE((SELECT audit FROM edit_context WHERE fid = 1), 1) = 1"
_SQLITE_UUID = (
    "lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || "
    "substr(lower(hex(randomblob(2))), 2) || '-' || lower(hex(randomblob(6)))"
)
UNIT_FIELDS = [
    "source_ref",
    "name",
    "code",
    "type_id",
    "parent_key",
    "validation_status",
    "opening_date",
    "closed_date",
    "aliases",
    "extra_fields",
]


def _sqlite_geom_hex(backend: str, expr: str) -> str:
    if backend == "spatialite":
        return f"hex(AsBinary({expr}))"
    return f"hex({expr})"


def _sqlite_unit_json(backend: str, r: str) -> str:
    parts = [f"'uuid', {r}.uuid", f"'unit_key', {r}.unit_key"]
    parts += [f"'{f}', {r}.{f}" for f in UNIT_FIELDS]
    parts.append(f"'location', {_sqlite_geom_hex(backend, r + '.location')}")
    return "json_object(" + ", ".join(parts) + ")"


def _sqlite_published(version_expr: str) -> str:
    return (
        f"SELECT RAISE(ABORT, '{PUBLISHED_MSG}') WHERE "
        f"(SELECT status FROM source_version WHERE fid = {version_expr}) = 'published';"
    )


def sqlite_triggers(backend: str) -> list[str]:
    changed = " OR ".join(f"OLD.{f} IS NOT NEW.{f}" for f in UNIT_FIELDS + ["location"])
    log_cols = (
        "version_id, entity, op, unit_uuid, unit_key, record_fid, before, after, origin, author, "
        "operation"
    )
    ctx = f"{_ORIGIN}, {_AUTHOR}, {_OPERATION}"
    stmts: list[str] = []
    # Published versions are read-only, whoever writes.
    for table in VERSIONED_TABLES:
        for op, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD")):
            extra = _sqlite_published("NEW.version_id") if op == "UPDATE" else ""
            stmts.append(
                f"CREATE TRIGGER {table}_{op.lower()}_published BEFORE {op} ON {table} "
                f"BEGIN {_sqlite_published(row + '.version_id')} {extra} END"
            )
    unit_of = "(SELECT version_id FROM org_unit WHERE fid = {r}.unit_fid)"
    for op, row in (("INSERT", "NEW"), ("UPDATE", "OLD"), ("DELETE", "OLD")):
        stmts.append(
            f"CREATE TRIGGER org_unit_territory_{op.lower()}_published BEFORE {op} ON "
            f"org_unit_territory BEGIN {_sqlite_published(unit_of.format(r=row))} END"
        )
    stmts += [
        f"""CREATE TRIGGER source_version_published_update BEFORE UPDATE ON source_version
        WHEN OLD.status = 'published' AND (NEW.status IS NOT 'published'
          OR NEW.number IS NOT OLD.number OR NEW.source_id IS NOT OLD.source_id)
        BEGIN SELECT RAISE(ABORT, '{VERSION_MSG}'); END""",
        f"""CREATE TRIGGER source_version_published_delete BEFORE DELETE ON source_version
        WHEN OLD.status = 'published' BEGIN SELECT RAISE(ABORT, '{VERSION_MSG}'); END""",
        # Identity columns never change once set.
        f"""CREATE TRIGGER org_unit_keys_fixed BEFORE UPDATE OF version_id, unit_key, uuid ON org_unit
        WHEN OLD.version_id IS NOT NEW.version_id
          OR (OLD.unit_key IS NOT NULL AND OLD.unit_key IS NOT NEW.unit_key)
          OR (OLD.uuid IS NOT NULL AND OLD.uuid IS NOT NEW.uuid)
        BEGIN SELECT RAISE(ABORT, '{KEY_MSG}'); END""",
        # A unit cannot move under itself or its own descendants.
        f"""CREATE TRIGGER org_unit_no_cycle BEFORE UPDATE OF parent_key ON org_unit
        WHEN NEW.parent_key IS NOT NULL AND (NEW.parent_key = OLD.unit_key OR
          substr((SELECT p.path FROM org_unit p WHERE p.version_id = NEW.version_id
                  AND p.unit_key = NEW.parent_key), 1, length(OLD.path)) = OLD.path)
        BEGIN SELECT RAISE(ABORT, '{CYCLE_MSG}'); END""",
        # Audit of inserts.  SQLite runs the triggers of one event newest first, so
        # org_unit_fill (created after this one) has filled uuid and path by now.
        f"""CREATE TRIGGER org_unit_audit_insert AFTER INSERT ON org_unit WHEN {_AUDIT_ON} BEGIN
          INSERT INTO change_log ({log_cols})
            SELECT u.version_id, 'org_unit', 'insert', u.uuid, u.unit_key, u.fid, NULL,
                   {_sqlite_unit_json(backend, 'u')}, {ctx}
            FROM org_unit u WHERE u.fid = NEW.fid;
        END""",
        # Fill identity and path for rows written by other programs (QGIS, GDAL, SQL).
        f"""CREATE TRIGGER org_unit_fill AFTER INSERT ON org_unit
        WHEN NEW.unit_key IS NULL OR NEW.uuid IS NULL OR NEW.depth IS NULL BEGIN
          UPDATE org_unit SET unit_key = COALESCE(unit_key, fid), uuid = COALESCE(uuid, {_SQLITE_UUID})
            WHERE fid = NEW.fid;
          UPDATE org_unit SET
            path = COALESCE((SELECT p.path FROM org_unit p WHERE p.version_id = NEW.version_id
                             AND p.unit_key = NEW.parent_key), '/') || unit_key || '/',
            depth = COALESCE((SELECT p.depth FROM org_unit p WHERE p.version_id = NEW.version_id
                              AND p.unit_key = NEW.parent_key), 0) + 1
            WHERE fid = NEW.fid;
        END""",
        # A move keeps every path of the moved subtree right.
        """CREATE TRIGGER org_unit_after_move AFTER UPDATE OF parent_key ON org_unit
        WHEN OLD.parent_key IS NOT NEW.parent_key AND OLD.path IS NOT NULL BEGIN
          UPDATE org_unit SET
            path = COALESCE((SELECT p.path FROM org_unit p WHERE p.version_id = NEW.version_id
                             AND p.unit_key = NEW.parent_key), '/') || NEW.unit_key || '/'
                   || substr(path, length(OLD.path) + 1),
            depth = depth - OLD.depth + 1 + COALESCE((SELECT p.depth FROM org_unit p
                    WHERE p.version_id = NEW.version_id AND p.unit_key = NEW.parent_key), 0)
          WHERE version_id = NEW.version_id AND path >= OLD.path
            AND path < substr(OLD.path, 1, length(OLD.path) - 1) || '0';
        END""",
        f"""CREATE TRIGGER org_unit_after_update AFTER UPDATE ON org_unit
        WHEN ({changed}) AND {_AUDIT_ON} BEGIN
          INSERT INTO change_log ({log_cols}) VALUES (NEW.version_id, 'org_unit', 'update',
            NEW.uuid, NEW.unit_key, NEW.fid, {_sqlite_unit_json(backend, 'OLD')},
            {_sqlite_unit_json(backend, 'NEW')}, {ctx});
        END""",
        """CREATE TRIGGER org_unit_name_to_territory AFTER UPDATE OF name ON org_unit
        WHEN OLD.name IS NOT NEW.name BEGIN
          UPDATE org_unit_territory SET name = NEW.name WHERE unit_fid = NEW.fid;
        END""",
        f"""CREATE TRIGGER org_unit_after_delete AFTER DELETE ON org_unit WHEN {_AUDIT_ON} BEGIN
          INSERT INTO change_log ({log_cols}) VALUES (OLD.version_id, 'org_unit', 'delete',
            OLD.uuid, OLD.unit_key, OLD.fid, {_sqlite_unit_json(backend, 'OLD')}, NULL, {ctx});
        END""",
        f"""CREATE TRIGGER org_unit_territory_after_insert AFTER INSERT ON org_unit_territory BEGIN
          UPDATE org_unit_territory SET
            version_id = (SELECT version_id FROM org_unit WHERE fid = NEW.unit_fid),
            name = (SELECT name FROM org_unit WHERE fid = NEW.unit_fid)
            WHERE fid = NEW.fid AND (NEW.version_id IS NULL OR NEW.name IS NULL);
          INSERT INTO change_log ({log_cols})
            SELECT u.version_id, 'territory', 'insert', u.uuid, u.unit_key, NEW.fid, NULL,
                   json_object('territory', {_sqlite_geom_hex(backend, 'NEW.territory')}), {ctx}
            FROM org_unit u WHERE u.fid = NEW.unit_fid AND {_AUDIT_ON};
        END""",
        f"""CREATE TRIGGER org_unit_territory_after_update AFTER UPDATE OF territory, unit_fid
        ON org_unit_territory WHEN (OLD.territory IS NOT NEW.territory
          OR OLD.unit_fid IS NOT NEW.unit_fid) AND {_AUDIT_ON} BEGIN
          INSERT INTO change_log ({log_cols})
            SELECT u.version_id, 'territory', 'update', u.uuid, u.unit_key, NEW.fid,
                   json_object('territory', {_sqlite_geom_hex(backend, 'OLD.territory')}),
                   json_object('territory', {_sqlite_geom_hex(backend, 'NEW.territory')}), {ctx}
            FROM org_unit u WHERE u.fid = NEW.unit_fid;
        END""",
        f"""CREATE TRIGGER org_unit_territory_after_delete AFTER DELETE ON org_unit_territory
        WHEN {_AUDIT_ON} BEGIN
          INSERT INTO change_log ({log_cols})
            SELECT OLD.version_id, 'territory', 'delete',
                   (SELECT uuid FROM org_unit WHERE fid = OLD.unit_fid),
                   (SELECT unit_key FROM org_unit WHERE fid = OLD.unit_fid), OLD.fid,
                   json_object('territory', {_sqlite_geom_hex(backend, 'OLD.territory')}), NULL, {ctx};
        END""",
        "CREATE TRIGGER org_unit_group_after_insert AFTER INSERT ON org_unit_group "
        "WHEN NEW.group_key IS NULL BEGIN "
        "UPDATE org_unit_group SET group_key = fid WHERE fid = NEW.fid; END",
        "CREATE TRIGGER group_set_after_insert AFTER INSERT ON group_set "
        "WHEN NEW.set_key IS NULL BEGIN UPDATE group_set SET set_key = fid WHERE fid = NEW.fid; END",
    ]
    for op, row in (("insert", "NEW"), ("delete", "OLD")):
        member = (
            f"json_object('group_key', {row}.group_key, 'group', (SELECT name FROM org_unit_group g "
            f"WHERE g.version_id = {row}.version_id AND g.group_key = {row}.group_key))"
        )
        before, after = ("NULL", member) if op == "insert" else (member, "NULL")
        stmts.append(
            f"""CREATE TRIGGER group_membership_after_{op} AFTER {op.upper()} ON group_membership
            WHEN {_AUDIT_ON} BEGIN
              INSERT INTO change_log ({log_cols}) VALUES ({row}.version_id, 'group_membership',
                '{op}', (SELECT uuid FROM org_unit u WHERE u.version_id = {row}.version_id
                         AND u.unit_key = {row}.unit_key), {row}.unit_key, {row}.fid,
                {before}, {after}, {ctx});
            END"""
        )
    return stmts


# --- PostGIS triggers ---------------------------------------------------------------------

_PG_CTX = """
  v_origin := COALESCE(NULLIF(current_setting('georeg.origin', true), ''), 'external');
  v_author := NULLIF(current_setting('georeg.author', true), '');
  v_operation := NULLIF(current_setting('georeg.operation', true), '');
  v_audit := COALESCE(NULLIF(current_setting('georeg.audit', true), ''), '1') = '1';
"""
_PG_DECLARE = "DECLARE v_origin text; v_author text; v_operation text; v_audit boolean;"


def _pg_unit_json(r: str) -> str:
    parts = [f"'uuid', {r}.uuid", f"'unit_key', {r}.unit_key"]
    parts += [f"'{f}', {r}.{f}" for f in UNIT_FIELDS]
    parts.append(f"'location', encode(ST_AsBinary({r}.location), 'hex')")
    return "jsonb_build_object(" + ", ".join(parts) + ")"


def pg_triggers() -> list[str]:
    changed = " OR ".join(f"OLD.{f} IS DISTINCT FROM NEW.{f}" for f in UNIT_FIELDS)
    changed += " OR NOT (OLD.location IS NOT DISTINCT FROM NEW.location)"
    log = (
        "INSERT INTO change_log (version_id, entity, op, unit_uuid, unit_key, record_fid, before, "
        "after, origin, author, operation) VALUES "
    )
    return [
        f"""CREATE FUNCTION georeg_guard_published() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE v bigint; s text; BEGIN
          IF TG_TABLE_NAME = 'org_unit_territory' THEN
            SELECT version_id INTO v FROM org_unit
              WHERE fid = (CASE WHEN TG_OP = 'INSERT' THEN NEW.unit_fid ELSE OLD.unit_fid END);
          ELSIF TG_OP = 'INSERT' THEN v := NEW.version_id;
          ELSE v := OLD.version_id; END IF;
          SELECT status INTO s FROM source_version WHERE fid = v;
          IF s = 'published' THEN RAISE EXCEPTION '{PUBLISHED_MSG}'; END IF;
          IF TG_OP = 'UPDATE' AND TG_TABLE_NAME <> 'org_unit_territory' THEN
            SELECT status INTO s FROM source_version WHERE fid = NEW.version_id;
            IF s = 'published' THEN RAISE EXCEPTION '{PUBLISHED_MSG}'; END IF;
          END IF;
          IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
          RETURN NEW;
        END $$""",
        *[
            f"CREATE TRIGGER {t}_published BEFORE INSERT OR UPDATE OR DELETE ON {t} "
            "FOR EACH ROW EXECUTE FUNCTION georeg_guard_published()"
            for t in VERSIONED_TABLES + ["org_unit_territory"]
        ],
        f"""CREATE FUNCTION georeg_version_guard() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          IF TG_OP = 'DELETE' AND OLD.status = 'published' THEN RAISE EXCEPTION '{VERSION_MSG}'; END IF;
          IF TG_OP = 'UPDATE' AND OLD.status = 'published' AND (NEW.status <> 'published'
             OR NEW.number <> OLD.number OR NEW.source_id <> OLD.source_id) THEN
            RAISE EXCEPTION '{VERSION_MSG}'; END IF;
          IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
          RETURN NEW;
        END $$""",
        "CREATE TRIGGER source_version_guard BEFORE UPDATE OR DELETE ON source_version "
        "FOR EACH ROW EXECUTE FUNCTION georeg_version_guard()",
        f"""CREATE FUNCTION georeg_unit_before() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE ppath text; pdepth bigint; BEGIN
          IF TG_OP = 'INSERT' THEN
            NEW.unit_key := COALESCE(NEW.unit_key, NEW.fid);
            NEW.uuid := COALESCE(NEW.uuid, gen_random_uuid()::text);
            IF NEW.depth IS NULL THEN
              SELECT path, depth INTO ppath, pdepth FROM org_unit
                WHERE version_id = NEW.version_id AND unit_key = NEW.parent_key;
              NEW.path := COALESCE(ppath, '/') || NEW.unit_key || '/';
              NEW.depth := COALESCE(pdepth, 0) + 1;
            END IF;
            RETURN NEW;
          END IF;
          IF OLD.version_id IS DISTINCT FROM NEW.version_id
             OR OLD.unit_key IS DISTINCT FROM NEW.unit_key OR OLD.uuid IS DISTINCT FROM NEW.uuid THEN
            RAISE EXCEPTION '{KEY_MSG}';
          END IF;
          IF NEW.parent_key IS DISTINCT FROM OLD.parent_key AND NEW.parent_key IS NOT NULL THEN
            SELECT path INTO ppath FROM org_unit
              WHERE version_id = NEW.version_id AND unit_key = NEW.parent_key;
            IF NEW.parent_key = OLD.unit_key OR left(ppath, length(OLD.path)) = OLD.path THEN
              RAISE EXCEPTION '{CYCLE_MSG}';
            END IF;
          END IF;
          RETURN NEW;
        END $$""",
        "CREATE TRIGGER org_unit_before BEFORE INSERT OR UPDATE ON org_unit "
        "FOR EACH ROW EXECUTE FUNCTION georeg_unit_before()",
        f"""CREATE FUNCTION georeg_unit_after() RETURNS trigger LANGUAGE plpgsql AS $$
        {_PG_DECLARE} ppath text; pdepth bigint; BEGIN
          {_PG_CTX}
          IF TG_OP = 'INSERT' THEN
            IF v_audit THEN {log} (NEW.version_id, 'org_unit', 'insert', NEW.uuid, NEW.unit_key,
              NEW.fid, NULL, {_pg_unit_json('NEW')}, v_origin, v_author, v_operation); END IF;
            RETURN NULL;
          ELSIF TG_OP = 'DELETE' THEN
            IF v_audit THEN {log} (OLD.version_id, 'org_unit', 'delete', OLD.uuid, OLD.unit_key,
              OLD.fid, {_pg_unit_json('OLD')}, NULL, v_origin, v_author, v_operation); END IF;
            RETURN NULL;
          END IF;
          IF OLD.parent_key IS DISTINCT FROM NEW.parent_key AND OLD.path IS NOT NULL THEN
            SELECT path, depth INTO ppath, pdepth FROM org_unit
              WHERE version_id = NEW.version_id AND unit_key = NEW.parent_key;
            UPDATE org_unit SET
              path = COALESCE(ppath, '/') || NEW.unit_key || '/' || substr(path, length(OLD.path) + 1),
              depth = depth - OLD.depth + 1 + COALESCE(pdepth, 0)
              WHERE version_id = NEW.version_id AND path >= OLD.path
                AND path < left(OLD.path, length(OLD.path) - 1) || '0';
          END IF;
          IF OLD.name IS DISTINCT FROM NEW.name THEN
            UPDATE org_unit_territory SET name = NEW.name WHERE unit_fid = NEW.fid;
          END IF;
          IF v_audit AND ({changed}) THEN
            {log} (NEW.version_id, 'org_unit', 'update', NEW.uuid, NEW.unit_key, NEW.fid,
              {_pg_unit_json('OLD')}, {_pg_unit_json('NEW')}, v_origin, v_author, v_operation);
          END IF;
          RETURN NULL;
        END $$""",
        "CREATE TRIGGER org_unit_after AFTER INSERT OR UPDATE OR DELETE ON org_unit "
        "FOR EACH ROW EXECUTE FUNCTION georeg_unit_after()",
        f"""CREATE FUNCTION georeg_territory_trg() RETURNS trigger LANGUAGE plpgsql AS $$
        {_PG_DECLARE} u record; BEGIN
          {_PG_CTX}
          IF TG_OP = 'INSERT' THEN
            SELECT * INTO u FROM org_unit WHERE fid = NEW.unit_fid;
            IF TG_WHEN = 'BEFORE' THEN
              NEW.version_id := COALESCE(NEW.version_id, u.version_id);
              NEW.name := COALESCE(NEW.name, u.name);
              RETURN NEW;
            END IF;
            IF v_audit THEN {log} (u.version_id, 'territory', 'insert', u.uuid, u.unit_key, NEW.fid,
              NULL, jsonb_build_object('territory', encode(ST_AsBinary(NEW.territory), 'hex')),
              v_origin, v_author, v_operation); END IF;
            RETURN NULL;
          END IF;
          IF TG_WHEN = 'BEFORE' THEN RETURN NEW; END IF;
          IF TG_OP = 'DELETE' THEN
            SELECT * INTO u FROM org_unit WHERE fid = OLD.unit_fid;
            IF v_audit THEN {log} (OLD.version_id, 'territory', 'delete', u.uuid, u.unit_key, OLD.fid,
              jsonb_build_object('territory', encode(ST_AsBinary(OLD.territory), 'hex')), NULL,
              v_origin, v_author, v_operation); END IF;
            RETURN NULL;
          END IF;
          IF v_audit AND (NOT (OLD.territory IS NOT DISTINCT FROM NEW.territory)
                          OR OLD.unit_fid IS DISTINCT FROM NEW.unit_fid) THEN
            SELECT * INTO u FROM org_unit WHERE fid = NEW.unit_fid;
            {log} (u.version_id, 'territory', 'update', u.uuid, u.unit_key, NEW.fid,
              jsonb_build_object('territory', encode(ST_AsBinary(OLD.territory), 'hex')),
              jsonb_build_object('territory', encode(ST_AsBinary(NEW.territory), 'hex')),
              v_origin, v_author, v_operation);
          END IF;
          RETURN NULL;
        END $$""",
        "CREATE TRIGGER org_unit_territory_before BEFORE INSERT ON org_unit_territory "
        "FOR EACH ROW EXECUTE FUNCTION georeg_territory_trg()",
        "CREATE TRIGGER org_unit_territory_after AFTER INSERT OR UPDATE OR DELETE ON "
        "org_unit_territory FOR EACH ROW EXECUTE FUNCTION georeg_territory_trg()",
        f"""CREATE FUNCTION georeg_membership_trg() RETURNS trigger LANGUAGE plpgsql AS $$
        {_PG_DECLARE} r record; g text; uu text; BEGIN
          {_PG_CTX}
          IF TG_OP = 'INSERT' THEN r := NEW; ELSE r := OLD; END IF;
          IF NOT v_audit THEN RETURN NULL; END IF;
          SELECT name INTO g FROM org_unit_group WHERE version_id = r.version_id
            AND group_key = r.group_key;
          SELECT uuid INTO uu FROM org_unit WHERE version_id = r.version_id
            AND unit_key = r.unit_key;
          IF TG_OP = 'INSERT' THEN
            {log} (r.version_id, 'group_membership', 'insert', uu, r.unit_key, r.fid, NULL,
              jsonb_build_object('group_key', r.group_key, 'group', g), v_origin, v_author,
              v_operation);
          ELSE
            {log} (r.version_id, 'group_membership', 'delete', uu, r.unit_key, r.fid,
              jsonb_build_object('group_key', r.group_key, 'group', g), NULL, v_origin, v_author,
              v_operation);
          END IF;
          RETURN NULL;
        END $$""",
        "CREATE TRIGGER group_membership_after AFTER INSERT OR DELETE ON group_membership "
        "FOR EACH ROW EXECUTE FUNCTION georeg_membership_trg()",
        """CREATE FUNCTION georeg_fill_key() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
          IF TG_TABLE_NAME = 'org_unit_group' THEN NEW.group_key := COALESCE(NEW.group_key, NEW.fid);
          ELSE NEW.set_key := COALESCE(NEW.set_key, NEW.fid); END IF;
          RETURN NEW;
        END $$""",
        "CREATE TRIGGER org_unit_group_key BEFORE INSERT ON org_unit_group "
        "FOR EACH ROW EXECUTE FUNCTION georeg_fill_key()",
        "CREATE TRIGGER group_set_key BEFORE INSERT ON group_set "
        "FOR EACH ROW EXECUTE FUNCTION georeg_fill_key()",
    ]


def create(bind: Any, backend: str) -> None:
    """Create the whole first schema on a connection (inside the migration)."""

    def run(sql: str) -> None:
        bind.exec_driver_sql(sql)

    def check(sql: str) -> None:
        # SpatiaLite's admin functions report failure by returning 0, not by raising.
        if not bind.exec_driver_sql(sql).scalar():
            raise RuntimeError(f"SpatiaLite could not run {sql!r}")

    if backend == "gpkg":
        for sql in GPKG_CORE:
            run(sql)
    elif backend == "spatialite":
        check("SELECT InitSpatialMetadata(0, 'WGS84')")
    else:
        run("CREATE EXTENSION IF NOT EXISTS postgis")
    for sql in render_tables(backend):
        run(sql)
    for table, kind, geom, _cols, _extra in TABLES:
        if backend == "gpkg" and kind:
            for sql in gpkg_register(table, kind, geom):
                run(sql)
        elif backend == "spatialite" and geom:
            col, gtype = geom
            check(f"SELECT AddGeometryColumn('{table}', '{col}', 4326, '{gtype}', 'XY')")
            check(f"SELECT CreateSpatialIndex('{table}', '{col}')")
        elif backend == "postgis" and geom:
            run(f"CREATE INDEX {table}_{geom[0]}_gist ON {table} USING GIST ({geom[0]})")
    if backend == "postgis":
        for sql in pg_triggers():
            run(sql)
    else:
        for sql in SQLITE_CONTEXT + sqlite_triggers(backend):
            run(sql)
