"""PostGIS: materialised paths compared byte by byte, whatever the server's locale.

Revision ID: 0007
Revises: 0006

Frozen SQL (never edit once released).  PostgreSQL only: SQLite and GeoPackage
registries are stamped and otherwise untouched (SQLite compares text byte by byte).

A subtree is one range of ``org_unit.path``: ``path >= '/1/7/' AND path < '/1/70'``
(``storage/tree.py``).  That holds in byte order only.  A PostgreSQL database takes
its default collation from the server's locale, and glibc's en_US.UTF-8 (like most
linguistic collations) ignores punctuation at first: it sorts ``/1/7/23/`` after
``/1/70/``.  On such a server a subtree read missed most of the subtree, a move left
descendants with their old paths (the trigger rewrites the same range) and a user
limited to a district did not see all of it.  ``COLLATE "C"`` on the column fixes the
order for every query, trigger and index on it (the path index is rebuilt).
"""

from alembic import op

from storage.migrations.attribute_tables import current_backend

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = ['ALTER TABLE org_unit ALTER COLUMN path TYPE text COLLATE "C"']
DOWNGRADE = ['ALTER TABLE org_unit ALTER COLUMN path TYPE text COLLATE pg_catalog."default"']

#: views (plain or materialised) over org_unit.path — a DBA's or a QGIS user's: the
#: column's type cannot change under them, so they are dropped and made again as they
#: were (definition, owner, grants) in the same transaction
VIEWS = """
SELECT DISTINCT v.oid, v.oid::regclass::text AS name, v.relkind,
       pg_get_viewdef(v.oid) AS definition, pg_get_userbyid(v.relowner) AS owner
FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid JOIN pg_class v ON v.oid = r.ev_class
WHERE d.refobjid = 'org_unit'::regclass AND v.oid <> 'org_unit'::regclass
  AND d.refobjsubid = (SELECT attnum FROM pg_attribute
                       WHERE attrelid = 'org_unit'::regclass AND attname = 'path')
"""
GRANTS = """
SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(a.grantee)) END,
       a.privilege_type
FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = CAST(%(oid)s AS oid)
"""


def _with_views_remade(statements: list[str]) -> None:
    if current_backend() != "postgis":
        return
    bind = op.get_bind()
    views = bind.exec_driver_sql(VIEWS).mappings().all()
    kept = []
    for v in views:
        grants = bind.exec_driver_sql(GRANTS, {"oid": v["oid"]}).all()
        kept.append((v, grants))
    try:
        for v, _grants in kept:
            kind = "MATERIALIZED VIEW" if v["relkind"] == "m" else "VIEW"
            bind.exec_driver_sql(f"DROP {kind} {v['name']}")
    except Exception as error:
        from storage.errors import SetupError

        names = ", ".join(v["name"] for v in views)
        raise SetupError(
            f"This registry needs its org_unit.path column compared byte by byte "
            f"(migration 0007), and views depend on it that cannot be set aside for a "
            f"moment ({names}: {str(error).splitlines()[0]}). Drop them, open the "
            "registry again, then make them again.") from error
    for sql in statements:
        bind.exec_driver_sql(sql)
    for v, grants in kept:
        kind = "MATERIALIZED VIEW" if v["relkind"] == "m" else "VIEW"
        bind.exec_driver_sql(f"CREATE {kind} {v['name']} AS {v['definition']}")
        bind.exec_driver_sql(f"ALTER {kind} {v['name']} OWNER TO {_ident(v['owner'])}")
        for grantee, privilege in grants:
            bind.exec_driver_sql(f"GRANT {privilege} ON {v['name']} TO {grantee}")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def upgrade() -> None:
    _with_views_remade(UPGRADE)


def downgrade() -> None:
    _with_views_remade(DOWNGRADE)
