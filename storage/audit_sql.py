"""SQL expressions shared by set-based writers that log to ``change_log`` themselves.

The per-row triggers (see the migrations) and these expressions write the same
snapshot shape, so the history reads the same whoever wrote the change.
"""

from __future__ import annotations

from storage.backends import Backend

UNIT_FIELDS = (
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
)
LOG_COLUMNS = (
    "version_id, entity, op, unit_uuid, unit_key, record_fid, before, after, origin, author, "
    "operation"
)


def geom_hex(backend: Backend, expr: str) -> str:
    if backend is Backend.GEOPACKAGE:
        return f"hex({expr})"
    if backend is Backend.SPATIALITE:
        return f"hex(AsBinary({expr}))"
    return f"encode(ST_AsBinary({expr}), 'hex')"


def unit_json(backend: Backend, alias: str) -> str:
    fn = "jsonb_build_object" if backend is Backend.POSTGIS else "json_object"
    parts = [f"'uuid', {alias}.uuid", f"'unit_key', {alias}.unit_key"]
    parts += [f"'{f}', {alias}.{f}" for f in UNIT_FIELDS]
    parts.append(f"'location', {geom_hex(backend, alias + '.location')}")
    return f"{fn}(" + ", ".join(parts) + ")"


def territory_json(backend: Backend, alias: str) -> str:
    fn = "jsonb_build_object" if backend is Backend.POSTGIS else "json_object"
    return f"{fn}('territory', {geom_hex(backend, alias + '.territory')})"


def context_columns(backend: Backend) -> tuple[str, str]:
    """(FROM-clause addition, select list) giving origin, author, operation."""
    if backend is Backend.POSTGIS:
        return (
            "",
            "COALESCE(NULLIF(current_setting('georeg.origin', true), ''), 'external'), "
            "NULLIF(current_setting('georeg.author', true), ''), "
            "NULLIF(current_setting('georeg.operation', true), '')",
        )
    return (
        " CROSS JOIN (SELECT origin, author, operation FROM edit_context WHERE fid = 1) ctx",
        "ctx.origin, ctx.author, ctx.operation",
    )
