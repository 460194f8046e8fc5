"""Merge: merge runs, merge conflicts, and no publishing while conflicts are open.

Revision ID: 0004
Revises: 0003

Frozen SQL, written once with type tokens and rendered per backend (the style of
``0002_sync_state``): never edit this file once released; change the schema in a
new migration.  On GeoPackage both tables are registered in ``gpkg_contents`` as
``attributes`` so GDAL's validator, ogrinfo and QGIS see ordinary tables.

* ``merge_run`` — one row per merge (``rules`` or ``three_way``): the versions it
  read, the draft it made (``result_version_id``), the link run and rules used,
  and the report (counts, integrity-check summary) as JSON.
* ``merge_conflict`` — one row per conflict of a 3-way merge: the merged draft,
  the unit (and the other unit of a duplicate pair), the kind and field, the
  base / ours / theirs values (JSON), status ``open`` | ``resolved`` and how it
  was resolved (``resolution``, ``resolved_value``, ``resolver``,
  ``resolved_at``).

A trigger refuses to publish a version that still has open conflicts — for every
writer, Georeg or plain SQL — with a ``georeg:conflict:`` message.
"""

from alembic import op

from storage.migrations.attribute_tables import Table, create, current_backend, drop

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


TABLES: list[Table] = [
    (
        "merge_run",
        "Merges (georeg merge / merge3): versions read, draft made, rules, report.",
        [
            "fid {PK}",
            "kind TEXT NOT NULL CHECK (kind IN ('rules', 'three_way'))",
            "result_version_id {INT} REFERENCES source_version(fid) ON DELETE SET NULL",
            "target_version_id {INT}",
            "source_version_id {INT}",
            "theirs_version_id {INT}",
            "links_run_id {INT}",
            "rules {JSON}",
            "report {JSON}",
            "started_by TEXT",
            "started_at {TS} NOT NULL DEFAULT {NOW}",
            "ended_at {TS}",
        ],
        [],
    ),
    (
        "merge_conflict",
        "Conflicts of 3-way merges, open until resolved (georeg conflicts).",
        [
            "fid {PK}",
            "merge_run_id {INT} REFERENCES merge_run(fid) ON DELETE CASCADE",
            "version_id {INT} NOT NULL REFERENCES source_version(fid) ON DELETE CASCADE",
            "unit_uuid TEXT",
            "other_uuid TEXT",
            "kind TEXT NOT NULL CHECK (kind IN ('field', 'edit_delete', 'move_move', "
            "'duplicate_new', 'cycle'))",
            "field TEXT",
            "base_value {JSON}",
            "ours_value {JSON}",
            "theirs_value {JSON}",
            "message TEXT",
            "status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved'))",
            "resolution TEXT",
            "resolved_value {JSON}",
            "resolver TEXT",
            "resolved_at {TS}",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
        ],
        ["CREATE INDEX merge_conflict_version_idx ON merge_conflict (version_id, status)"],
    ),
]

OPEN_MSG = (
    "georeg:conflict: This version has unresolved merge conflicts and cannot be published. "
    "List them with: georeg conflicts REG --version SOURCE:N"
)

SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER source_version_open_conflicts BEFORE UPDATE OF status ON source_version
    WHEN NEW.status = 'published' AND OLD.status IS NOT 'published' AND EXISTS
      (SELECT 1 FROM merge_conflict c WHERE c.version_id = NEW.fid AND c.status = 'open')
    BEGIN SELECT RAISE(ABORT, '{OPEN_MSG}'); END""",
]
PG_TRIGGERS = [
    f"""CREATE FUNCTION georeg_open_conflicts_guard() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF NEW.status = 'published' AND OLD.status IS DISTINCT FROM 'published' AND EXISTS
         (SELECT 1 FROM merge_conflict c WHERE c.version_id = NEW.fid AND c.status = 'open') THEN
        RAISE EXCEPTION '{OPEN_MSG}';
      END IF;
      RETURN NEW;
    END $$""",
    "CREATE TRIGGER source_version_open_conflicts BEFORE UPDATE OF status ON source_version "
    "FOR EACH ROW EXECUTE FUNCTION georeg_open_conflicts_guard()",
]


def upgrade() -> None:
    pg = current_backend() == "postgis"
    create(TABLES, after=PG_TRIGGERS if pg else SQLITE_TRIGGERS)


def downgrade() -> None:
    bind = op.get_bind()
    if current_backend() == "postgis":
        bind.exec_driver_sql("DROP TRIGGER source_version_open_conflicts ON source_version")
        bind.exec_driver_sql("DROP FUNCTION georeg_open_conflicts_guard()")
    else:
        bind.exec_driver_sql("DROP TRIGGER source_version_open_conflicts")
    drop(TABLES)
