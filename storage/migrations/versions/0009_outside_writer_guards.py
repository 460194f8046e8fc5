"""Guards for edits by other programs: territories, paths and deleted parents.

Revision ID: 0009
Revises: 0008

Frozen SQL (never edit once released).  Every backend.  What GDAL, QGIS, sqlite3 or
psql could do to a registry that Georeg never does itself, found by a review:

- **A territory re-pointed at a unit of a published version** (``UPDATE
  org_unit_territory SET unit_fid = …``, a fid typed in QGIS's attribute table) was
  accepted: the guard checked only the row's old unit, so the published version gained
  a territory.  The new unit's version is checked too, and the row's ``version_id``
  and ``name`` follow the unit it now belongs to (QGIS filters on ``version_id``).
- **``path`` or ``depth`` edited directly** was neither refused nor logged, and
  Georeg's range operations trust them: a facility given its district's path was
  deleted with the whole district by ``unit delete --recursive``.  They are computed
  from ``parent_key``; a change of them without a change of ``parent_key`` is refused,
  except the subtree rewrite of a move (the trigger's own ``UPDATE``): on PostgreSQL it
  is flagged by ``georeg.subtree`` at trigger depth > 1 (as migration 0006's statement
  trigger already knows it), on SQLite — which has no trigger depth — the move trigger
  holds a row in ``subtree_rewrite`` for the length of its ``UPDATE``.  A row still
  being completed (no path or depth yet: a unit digitised in QGIS) is not refused.
- **A unit deleted while it still has units below it**: GDAL and QGIS open a
  GeoPackage with foreign keys off, so the parent key's foreign key (and the
  ``ON DELETE CASCADE`` of territories and memberships) did nothing: the children were
  left as orphans, and a version published that way could no longer be copied.  Such a
  delete is now refused ("delete its children first, or use georeg unit delete
  --recursive"), and a deleted unit's territory and memberships go with it.  Georeg's
  own writes are not checked here: they run with foreign keys on, whose deferred check
  at commit already covers them, and they delete subtrees in whatever order suits them
  (one path range, batches of uuids, a version's rows by cascade), which a check row by
  row would refuse half-way.  They are told apart as the audit tells them apart: a
  Georeg write has an ``edit_context`` row (SQLite) or ``georeg.origin`` (PostgreSQL).
  Deleting a whole version by cascade is not refused either (the version is gone).
  On PostgreSQL the foreign key always holds; the check there is per statement (after
  it, with its deleted rows), so one statement deleting a whole subtree is accepted
  and a parent deleted alone gets this message instead of the foreign key's.

On PostgreSQL the replaced functions are made again with ``SET search_path FROM
CURRENT`` (migration 0008: ``CREATE OR REPLACE`` would reset it).
"""

from alembic import op

from storage.migrations import schema_0001
from storage.migrations.attribute_tables import current_backend
from storage.migrations.schema_0001 import CYCLE_MSG, KEY_MSG, PUBLISHED_MSG

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PATH_MSG = (
    "georeg:invalid: path and depth are computed from parent_key and cannot be edited. "
    "To move a unit, change its parent_key instead (or use georeg unit move)."
)
CHILDREN_MSG = (
    "georeg:conflict: This unit still has units below it. Delete its children first, "
    "or use georeg unit delete --recursive."
)


def _published(version_expr: str) -> str:
    return (
        f"SELECT RAISE(ABORT, '{PUBLISHED_MSG}') WHERE "
        f"(SELECT status FROM source_version WHERE fid = {version_expr}) = 'published';"
    )


_UNIT_OF = "(SELECT version_id FROM org_unit WHERE fid = {r}.unit_fid)"
#: not one of Georeg's own writes (they hold the edit context: see the module docstring)
_OUTSIDE = "NOT EXISTS (SELECT 1 FROM edit_context)"

SQLITE_UPGRADE = [
    # F1: the new unit's version is checked too, and the row follows its unit
    "DROP TRIGGER org_unit_territory_update_published",
    "CREATE TRIGGER org_unit_territory_update_published BEFORE UPDATE ON org_unit_territory "
    f"BEGIN {_published(_UNIT_OF.format(r='OLD'))} {_published(_UNIT_OF.format(r='NEW'))} END",
    """CREATE TRIGGER org_unit_territory_follow_unit AFTER UPDATE OF unit_fid ON org_unit_territory
    WHEN OLD.unit_fid IS NOT NEW.unit_fid BEGIN
      UPDATE org_unit_territory SET
        version_id = (SELECT version_id FROM org_unit WHERE fid = NEW.unit_fid),
        name = (SELECT name FROM org_unit WHERE fid = NEW.unit_fid)
        WHERE fid = NEW.fid;
    END""",
    # F2: path and depth follow parent_key only
    "CREATE TABLE subtree_rewrite (fid INTEGER PRIMARY KEY CHECK (fid = 1))",
    "DROP TRIGGER org_unit_after_move",
    """CREATE TRIGGER org_unit_after_move AFTER UPDATE OF parent_key ON org_unit
    WHEN OLD.parent_key IS NOT NEW.parent_key AND OLD.path IS NOT NULL BEGIN
      DELETE FROM subtree_rewrite;
      INSERT INTO subtree_rewrite (fid) VALUES (1);
      UPDATE org_unit SET
        path = COALESCE((SELECT p.path FROM org_unit p WHERE p.version_id = NEW.version_id
                         AND p.unit_key = NEW.parent_key), '/') || NEW.unit_key || '/'
               || substr(path, length(OLD.path) + 1),
        depth = depth - OLD.depth + 1 + COALESCE((SELECT p.depth FROM org_unit p
                WHERE p.version_id = NEW.version_id AND p.unit_key = NEW.parent_key), 0)
      WHERE version_id = NEW.version_id AND path >= OLD.path
        AND path < substr(OLD.path, 1, length(OLD.path) - 1) || '0';
      DELETE FROM subtree_rewrite;
    END""",
    f"""CREATE TRIGGER org_unit_path_computed BEFORE UPDATE OF path, depth ON org_unit
    WHEN OLD.path IS NOT NULL AND OLD.depth IS NOT NULL
      AND (OLD.path IS NOT NEW.path OR OLD.depth IS NOT NEW.depth)
      AND OLD.parent_key IS NEW.parent_key AND NOT EXISTS (SELECT 1 FROM subtree_rewrite)
    BEGIN SELECT RAISE(ABORT, '{PATH_MSG}'); END""",
    # F3: no orphans from writers with foreign keys off
    f"""CREATE TRIGGER org_unit_delete_children BEFORE DELETE ON org_unit
    WHEN {_OUTSIDE} AND EXISTS (SELECT 1 FROM source_version v WHERE v.fid = OLD.version_id)
      AND EXISTS (SELECT 1 FROM org_unit c WHERE c.version_id = OLD.version_id
                  AND c.parent_key = OLD.unit_key)
    BEGIN SELECT RAISE(ABORT, '{CHILDREN_MSG}'); END""",
    f"""CREATE TRIGGER org_unit_delete_dependents AFTER DELETE ON org_unit WHEN {_OUTSIDE} BEGIN
      DELETE FROM org_unit_territory WHERE unit_fid = OLD.fid;
      DELETE FROM group_membership WHERE version_id = OLD.version_id
        AND unit_key = OLD.unit_key;
    END""",
]


def _sqlite_0001(name: str) -> str:
    """The CREATE statement of a 0001 trigger, as 0001 made it (for the downgrade)."""
    [sql] = [s for s in schema_0001.sqlite_triggers("gpkg")
             if s.split()[2] == name]
    return sql


SQLITE_DOWNGRADE = [
    "DROP TRIGGER org_unit_delete_dependents",
    "DROP TRIGGER org_unit_delete_children",
    "DROP TRIGGER org_unit_path_computed",
    "DROP TRIGGER org_unit_after_move",
    _sqlite_0001("org_unit_after_move"),
    "DROP TABLE subtree_rewrite",
    "DROP TRIGGER org_unit_territory_follow_unit",
    "DROP TRIGGER org_unit_territory_update_published",
    _sqlite_0001("org_unit_territory_update_published"),
]

_SUBTREE = ("(COALESCE(current_setting('georeg.subtree', true), '') = '1' "
            "AND pg_trigger_depth() > 1)")

PG_UPGRADE = [
    # F1 (and the row follows its unit)
    f"""CREATE OR REPLACE FUNCTION georeg_guard_published() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    DECLARE v bigint; s text; BEGIN
      IF TG_TABLE_NAME = 'org_unit_territory' THEN
        SELECT version_id INTO v FROM org_unit
          WHERE fid = (CASE WHEN TG_OP = 'INSERT' THEN NEW.unit_fid ELSE OLD.unit_fid END);
      ELSIF TG_OP = 'INSERT' THEN v := NEW.version_id;
      ELSE v := OLD.version_id; END IF;
      SELECT status INTO s FROM source_version WHERE fid = v;
      IF s = 'published' THEN RAISE EXCEPTION '{PUBLISHED_MSG}'; END IF;
      IF TG_OP = 'UPDATE' THEN
        IF TG_TABLE_NAME = 'org_unit_territory' THEN
          IF NEW.unit_fid IS DISTINCT FROM OLD.unit_fid THEN
            SELECT version_id INTO v FROM org_unit WHERE fid = NEW.unit_fid;
            SELECT status INTO s FROM source_version WHERE fid = v;
            IF s = 'published' THEN RAISE EXCEPTION '{PUBLISHED_MSG}'; END IF;
            SELECT u.version_id, u.name INTO NEW.version_id, NEW.name FROM org_unit u
              WHERE u.fid = NEW.unit_fid;
          END IF;
        ELSE
          SELECT status INTO s FROM source_version WHERE fid = NEW.version_id;
          IF s = 'published' THEN RAISE EXCEPTION '{PUBLISHED_MSG}'; END IF;
        END IF;
      END IF;
      IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
      RETURN NEW;
    END $$""",
    # F2: 0001's function, with the path guard
    f"""CREATE OR REPLACE FUNCTION georeg_unit_before() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
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
      IF (OLD.path IS DISTINCT FROM NEW.path OR OLD.depth IS DISTINCT FROM NEW.depth)
         AND OLD.path IS NOT NULL AND OLD.depth IS NOT NULL
         AND OLD.parent_key IS NOT DISTINCT FROM NEW.parent_key AND NOT {_SUBTREE} THEN
        RAISE EXCEPTION '{PATH_MSG}';
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
    # F3: after the statement, with all its deleted rows
    f"""CREATE FUNCTION georeg_unit_children() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$ BEGIN
      IF COALESCE(current_setting('georeg.origin', true), '') = '' AND EXISTS (
          SELECT 1 FROM georeg_old o JOIN org_unit c ON c.version_id = o.version_id
          AND c.parent_key = o.unit_key) THEN
        RAISE EXCEPTION '{CHILDREN_MSG}';
      END IF;
      RETURN NULL;
    END $$""",
    "CREATE TRIGGER org_unit_children AFTER DELETE ON org_unit REFERENCING OLD TABLE AS "
    "georeg_old FOR EACH STATEMENT EXECUTE FUNCTION georeg_unit_children()",
]


def _pg_0001(name: str) -> str:
    """0001's CREATE FUNCTION statement, as a replacement (for the downgrade)."""
    [sql] = [s for s in schema_0001.pg_triggers() if s.startswith(f"CREATE FUNCTION {name}()")]
    return sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1).replace(
        "LANGUAGE plpgsql AS", "LANGUAGE plpgsql SET search_path FROM CURRENT AS", 1)


PG_DOWNGRADE = [
    "DROP TRIGGER org_unit_children ON org_unit",
    "DROP FUNCTION georeg_unit_children()",
    _pg_0001("georeg_unit_before"),
    _pg_0001("georeg_guard_published"),
]


def upgrade() -> None:
    bind = op.get_bind()
    for sql in PG_UPGRADE if current_backend() == "postgis" else SQLITE_UPGRADE:
        bind.exec_driver_sql(sql)


def downgrade() -> None:
    bind = op.get_bind()
    for sql in PG_DOWNGRADE if current_backend() == "postgis" else SQLITE_DOWNGRADE:
        bind.exec_driver_sql(sql)
