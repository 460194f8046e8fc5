"""Sync bookkeeping and scheduled jobs: sync_state, schedule_job, schedule_run.

Revision ID: 0002
Revises: 0001

Frozen SQL, written once with type tokens and rendered per backend (the style of
``schema_0001``): never edit this file once released; change the schema in a new
migration.  On GeoPackage the three tables are registered in ``gpkg_contents`` as
``attributes`` so GDAL's validator, ogrinfo and QGIS see ordinary tables.

* ``sync_state`` — one row per upstream target (a PostGIS schema, a DHIS2
  server): how far this registry's change log has been pushed
  (``last_change_id``), how far the target's changes have been pulled
  (``last_pull_marker``, text: a change-log id, a DHIS2 timestamp …) and
  target-specific bookkeeping in ``details`` (resume cursor, held conflicts).
  Never credentials: those live in a secrets file outside the registry.
* ``schedule_job`` — scheduled jobs (kind, target name, every N seconds or a
  cron expression, options, retries), stored in the registry so every front end
  sees the same schedule.
* ``schedule_run`` — the run history: start, end, outcome, attempt, figures,
  error.
"""

from storage.migrations.attribute_tables import Table, create, drop

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


TABLES: list[Table] = [
    (
        "sync_state",
        "Sync progress per upstream target (no credentials: see the secrets file).",
        [
            "fid {PK}",
            "target TEXT NOT NULL UNIQUE",
            "kind TEXT NOT NULL DEFAULT 'postgis'",
            "last_change_id {INT}",
            "last_pull_marker TEXT",
            "updated_at {TS} NOT NULL DEFAULT {NOW}",
            "details {JSON}",
        ],
        [],
    ),
    (
        "schedule_job",
        "Scheduled sync jobs (georeg schedule add/list/remove).",
        [
            "fid {PK}",
            "name TEXT NOT NULL UNIQUE",
            "kind TEXT NOT NULL",
            "target TEXT",
            "every_seconds {INT} CHECK (every_seconds IS NULL OR every_seconds > 0)",
            "cron TEXT",
            "options {JSON}",
            "enabled BOOLEAN NOT NULL DEFAULT {TRUE}",
            "max_retries {INT} NOT NULL DEFAULT 3",
            "retry_base_seconds {REAL} NOT NULL DEFAULT 30",
            "retry_max_seconds {REAL} NOT NULL DEFAULT 3600",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "created_by TEXT",
            "CHECK ((every_seconds IS NULL) <> (cron IS NULL))",
        ],
        [],
    ),
    (
        "schedule_run",
        "History of scheduled and manual job runs: outcome, figures, error.",
        [
            "fid {PK}",
            "job_id {INT} REFERENCES schedule_job(fid) ON DELETE SET NULL",
            "job_name TEXT NOT NULL",
            "kind TEXT NOT NULL",
            "triggered_by TEXT NOT NULL DEFAULT 'schedule'",
            "attempt {INT} NOT NULL DEFAULT 1",
            "started_at {TS} NOT NULL DEFAULT {NOW}",
            "ended_at {TS}",
            "outcome TEXT NOT NULL DEFAULT 'running'"
            " CHECK (outcome IN ('running', 'ok', 'failed', 'skipped'))",
            "figures {JSON}",
            "error TEXT",
            "retry_at {TS}",
        ],
        ["CREATE INDEX schedule_run_job_idx ON schedule_run (job_name, fid)"],
    ),
]


def upgrade() -> None:
    create(TABLES)


def downgrade() -> None:
    drop(TABLES)
