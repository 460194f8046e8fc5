"""What the migrations after 0001 share: plain attribute tables written as frozen SQL.

A migration lists its tables as ``(name, description, column lines, extra statements)``,
column lines using the ``{PK}``, ``{INT}``, ``{JSON}`` … tokens below, and calls
:func:`create` / :func:`drop`.  On GeoPackage each table is registered in
``gpkg_contents`` as ``attributes`` (so GDAL and QGIS list it).

Frozen like the migrations themselves: never change what an existing token or function
renders (a registry created last year must upgrade exactly as it did then); add a new
token or function instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

#: (table name, description, column lines, statements after the CREATE TABLE)
Table = tuple[str, str, list[str], list[str]]

SQLITE = {
    "PK": "INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL",
    "INT": "INTEGER",
    "REAL": "REAL",
    "JSON": "TEXT",
    "BLOB": "BLOB",
    "TS": "DATETIME",
    "NOW": "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    "TRUE": "1",
    "FALSE": "0",
}
POSTGRES = {
    "PK": "BIGSERIAL PRIMARY KEY",
    "INT": "BIGINT",
    "REAL": "DOUBLE PRECISION",
    "JSON": "JSONB",
    "BLOB": "BYTEA",
    "TS": "TEXT",
    "NOW": "(to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))",
    "TRUE": "TRUE",
    "FALSE": "FALSE",
}


def current_backend() -> str:
    """``gpkg``, ``spatialite`` or ``postgis``: the backend this migration runs on."""
    return str(op.get_bind().dialect.georeg_backend.value)  # type: ignore[attr-defined]


def run_on_postgis(statements: Sequence[str]) -> None:
    """Run ``statements`` when this migration runs on PostgreSQL (a PostgreSQL-only
    migration leaves SQLite and GeoPackage registries as they are: just stamped)."""
    if current_backend() != "postgis":
        return
    bind = op.get_bind()
    for sql in statements:
        bind.exec_driver_sql(sql)


def render(tables: Sequence[Table], backend: str) -> list[str]:
    """The CREATE statements of ``tables`` (then their extra statements) for ``backend``."""
    tokens = POSTGRES if backend == "postgis" else SQLITE
    out: list[str] = []
    for table, _desc, columns, extra in tables:
        cols = ",\n  ".join(line.format(**tokens) for line in columns)
        out.append(f'CREATE TABLE "{table}" (\n  {cols}\n)')
        out.extend(extra)
    return out


def create(tables: Sequence[Table], after: Sequence[str] = ()) -> None:
    """Create ``tables`` (GeoPackage: registered as attributes), then run ``after``."""
    bind = op.get_bind()
    backend = current_backend()
    for sql in [*render(tables, backend), *after]:
        bind.exec_driver_sql(sql)
    if backend == "gpkg":
        for table, desc, _cols, _extra in tables:
            d = desc.replace("'", "''")
            bind.exec_driver_sql(
                "INSERT INTO gpkg_contents (table_name, data_type, identifier, description, "
                f"srs_id) VALUES ('{table}', 'attributes', '{table}', '{d}', NULL)"
            )


def drop(tables: Sequence[Table]) -> None:
    """Drop ``tables`` (last first) and their GeoPackage registration."""
    bind = op.get_bind()
    backend = current_backend()
    for table, _desc, _cols, _extra in reversed(tables):
        bind.exec_driver_sql(f'DROP TABLE "{table}"')
        if backend == "gpkg":
            bind.exec_driver_sql(f"DELETE FROM gpkg_contents WHERE table_name = '{table}'")
