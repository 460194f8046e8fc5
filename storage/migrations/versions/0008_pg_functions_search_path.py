"""PostGIS: the registry's functions find its tables whatever the caller's search path.

Revision ID: 0008
Revises: 0007

Frozen SQL (never edit once released).  PostgreSQL only: SQLite and GeoPackage
registries are stamped and otherwise untouched.

The triggers' functions name the registry's tables without their schema
(``source_version``, ``change_log`` …).  Georeg's own connections put the registry's
schema first on the search path, but QGIS, psql or any other client connected to the
database has the default path (``"$user", public``): there every write to
``district_bo.org_unit`` failed with *relation "source_version" does not exist* — the
central edits the sync is built to bring back could not be made.  Each function now
carries the search path it was made with (the registry's schema, ``public``, and
PostGIS's schema where a DBA put it elsewhere: ``SET search_path FROM CURRENT``,
Georeg's connection path).  A later migration that replaces a function must set it
again (``CREATE OR REPLACE`` resets it).
"""

from alembic import op

from storage.migrations.attribute_tables import current_backend

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: the registry's own functions (all named georeg_…) in its schema — never an
#: extension's: a registry in ``public`` shares it with PostGIS, whose functions must
#: keep no SET (one on every call is a 4× slower ST_DWithin) and may not be ours to alter
FUNCTIONS = ("SELECT p.oid::regprocedure::text FROM pg_proc p "
             "WHERE p.pronamespace = to_regnamespace(current_schema()) AND p.prokind = 'f' "
             "AND left(p.proname, 7) = 'georeg_' AND NOT EXISTS (SELECT 1 FROM pg_depend d "
             "WHERE d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e')")


def _each_function(change: str) -> None:
    """``ALTER FUNCTION f <change>`` for each of the registry's functions (PostgreSQL)."""
    if current_backend() != "postgis":
        return
    bind = op.get_bind()
    for (fn,) in bind.exec_driver_sql(FUNCTIONS).all():
        bind.exec_driver_sql(f"ALTER FUNCTION {fn} {change}")


def upgrade() -> None:
    _each_function("SET search_path FROM CURRENT")


def downgrade() -> None:
    _each_function("RESET search_path")
