"""PostGIS: set-wise (statement-level) guard and audit on ``org_unit``.

Revision ID: 0006
Revises: 0005

Frozen SQL (never edit once released).  PostgreSQL only: SQLite and GeoPackage
registries are stamped and otherwise untouched.

Until 0005 every row written to ``org_unit`` ran two PL/pgSQL row triggers besides the
one that fills keys and paths: ``org_unit_published`` (refuse writes to a published
version) and ``org_unit_after`` (change log, paths below a moved unit, the unit's name
on its territory).  A statement that updates a thousand units ran them a thousand
times each.  Here they become one statement-level trigger per event, with transition
tables (PostgreSQL >= 10): the published guard is one join of the written rows with
``source_version``, the change log one ``INSERT … SELECT`` with the same before/after
snapshots, and territory names one ``UPDATE``.  What stays per row is what depends on
the order of rows: the subtree paths of a moved unit (``org_unit_tree``, fired only
``WHEN`` the parent changes; its own UPDATE of those paths, flagged ``georeg.subtree``,
changes no logged field, so the statement trigger only checks it against published
versions) and ``org_unit_before`` (keys, paths of new units, the cycle check).

Same behaviour: a write to a published version still fails, through every route, with
the same message (the statement is refused as a whole, as before); every change still
lands in ``change_log`` with its before and after, in row-id order within a statement;
``georeg.audit = '0'`` still turns the log off for set-based writers that log
themselves.

``fillfactor = 90`` on ``org_unit``: pages keep room for a new row version, so an
update that changes no indexed column (name, code, dates, attributes, a point moved
in place…) is a HOT update — no new entry in any of the table's nine indexes (applies
to pages written from now on).
"""

from alembic import op

from storage.migrations.attribute_tables import current_backend
from storage.migrations.schema_0001 import PUBLISHED_MSG, UNIT_FIELDS

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _unit_json(r: str) -> str:
    parts = [f"'uuid', {r}.uuid", f"'unit_key', {r}.unit_key"]
    parts += [f"'{f}', {r}.{f}" for f in UNIT_FIELDS]
    parts.append(f"'location', encode(ST_AsBinary({r}.location), 'hex')")
    return "jsonb_build_object(" + ", ".join(parts) + ")"


_CTX = (
    "COALESCE(NULLIF(current_setting('georeg.origin', true), ''), 'external'), "
    "NULLIF(current_setting('georeg.author', true), ''), "
    "NULLIF(current_setting('georeg.operation', true), '')"
)
_AUDIT = "COALESCE(NULLIF(current_setting('georeg.audit', true), ''), '1') = '1'"
_LOG = (
    "INSERT INTO change_log (version_id, entity, op, unit_uuid, unit_key, record_fid, before, "
    "after, origin, author, operation)"
)
_CHANGED = " OR ".join(f"o.{f} IS DISTINCT FROM n.{f}" for f in UNIT_FIELDS) + (
    " OR NOT (o.location IS NOT DISTINCT FROM n.location)"
)


def _published(table: str) -> str:
    return (
        f"IF EXISTS (SELECT 1 FROM {table} r JOIN source_version v ON v.fid = r.version_id "
        f"WHERE v.status = 'published') THEN RAISE EXCEPTION '{PUBLISHED_MSG}'; END IF;"
    )


UPGRADE = [
    f"""CREATE FUNCTION georeg_unit_stmt() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE v_log boolean; BEGIN
      -- the paths below a moved unit, rewritten by georeg_unit_tree (a trigger, hence the
      -- depth: a session setting the flag itself still gets its statements logged):
      -- no logged field changes there, so only the guard runs
      v_log := NOT (COALESCE(current_setting('georeg.subtree', true), '') = '1'
                    AND pg_trigger_depth() > 1);
      IF TG_OP = 'INSERT' THEN
        {_published('georeg_new')}
        IF v_log AND {_AUDIT} THEN
          {_LOG} SELECT n.version_id, 'org_unit', 'insert', n.uuid, n.unit_key, n.fid, NULL,
            {_unit_json('n')}, {_CTX} FROM georeg_new n ORDER BY n.fid;
        END IF;
      ELSIF TG_OP = 'DELETE' THEN
        {_published('georeg_old')}
        IF v_log AND {_AUDIT} THEN
          {_LOG} SELECT o.version_id, 'org_unit', 'delete', o.uuid, o.unit_key, o.fid,
            {_unit_json('o')}, NULL, {_CTX} FROM georeg_old o ORDER BY o.fid;
        END IF;
      ELSE
        {_published('georeg_old')}
        {_published('georeg_new')}
        IF v_log THEN
          UPDATE org_unit_territory t SET name = n.name FROM georeg_new n
            JOIN georeg_old o ON o.version_id = n.version_id AND o.unit_key = n.unit_key
            WHERE t.unit_fid = n.fid AND o.name IS DISTINCT FROM n.name;
        END IF;
        IF v_log AND {_AUDIT} THEN
          {_LOG} SELECT n.version_id, 'org_unit', 'update', n.uuid, n.unit_key, n.fid,
            {_unit_json('o')}, {_unit_json('n')}, {_CTX} FROM georeg_new n
            JOIN georeg_old o ON o.version_id = n.version_id AND o.unit_key = n.unit_key
            WHERE {_CHANGED} ORDER BY n.fid;
        END IF;
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE FUNCTION georeg_unit_tree() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE ppath text; pdepth bigint; BEGIN
      IF OLD.path IS NOT NULL THEN
        SELECT path, depth INTO ppath, pdepth FROM org_unit
          WHERE version_id = NEW.version_id AND unit_key = NEW.parent_key;
        PERFORM set_config('georeg.subtree', '1', true);
        UPDATE org_unit SET
          path = COALESCE(ppath, '/') || NEW.unit_key || '/' || substr(path, length(OLD.path) + 1),
          depth = depth - OLD.depth + 1 + COALESCE(pdepth, 0)
          WHERE version_id = NEW.version_id AND path >= OLD.path
            AND path < left(OLD.path, length(OLD.path) - 1) || '0';
        PERFORM set_config('georeg.subtree', '', true);
      END IF;
      RETURN NULL;
    END $$""",
    "DROP TRIGGER org_unit_published ON org_unit",
    "DROP TRIGGER org_unit_after ON org_unit",
    "CREATE TRIGGER org_unit_tree AFTER UPDATE ON org_unit FOR EACH ROW "
    "WHEN (OLD.parent_key IS DISTINCT FROM NEW.parent_key) EXECUTE FUNCTION georeg_unit_tree()",
    "CREATE TRIGGER org_unit_stmt_insert AFTER INSERT ON org_unit REFERENCING NEW TABLE AS "
    "georeg_new FOR EACH STATEMENT EXECUTE FUNCTION georeg_unit_stmt()",
    "CREATE TRIGGER org_unit_stmt_update AFTER UPDATE ON org_unit REFERENCING OLD TABLE AS "
    "georeg_old NEW TABLE AS georeg_new FOR EACH STATEMENT EXECUTE FUNCTION georeg_unit_stmt()",
    "CREATE TRIGGER org_unit_stmt_delete AFTER DELETE ON org_unit REFERENCING OLD TABLE AS "
    "georeg_old FOR EACH STATEMENT EXECUTE FUNCTION georeg_unit_stmt()",
    "ALTER TABLE org_unit SET (fillfactor = 90)",
]

DOWNGRADE = [
    "DROP TRIGGER org_unit_stmt_delete ON org_unit",
    "DROP TRIGGER org_unit_stmt_update ON org_unit",
    "DROP TRIGGER org_unit_stmt_insert ON org_unit",
    "DROP TRIGGER org_unit_tree ON org_unit",
    "DROP FUNCTION georeg_unit_tree()",
    "DROP FUNCTION georeg_unit_stmt()",
    # the 0001 functions are still there (other tables use the guard)
    "CREATE TRIGGER org_unit_published BEFORE INSERT OR UPDATE OR DELETE ON org_unit "
    "FOR EACH ROW EXECUTE FUNCTION georeg_guard_published()",
    "CREATE TRIGGER org_unit_after AFTER INSERT OR UPDATE OR DELETE ON org_unit "
    "FOR EACH ROW EXECUTE FUNCTION georeg_unit_after()",
    "ALTER TABLE org_unit RESET (fillfactor)",
]


def upgrade() -> None:
    if current_backend() != "postgis":
        return
    bind = op.get_bind()
    for sql in UPGRADE:
        bind.exec_driver_sql(sql)


def downgrade() -> None:
    if current_backend() != "postgis":
        return
    bind = op.get_bind()
    for sql in DOWNGRADE:
        bind.exec_driver_sql(sql)
