"""Submission exports to DHIS2: data_export.

Revision ID: 0005
Revises: 0004

Frozen SQL rendered per backend (the style of 0002_sync_state.py); on GeoPackage the
table is registered in ``gpkg_contents`` as ``attributes``.

* ``data_export`` — one row per (submission ``instance_id``, target): whether the
  submission reached that DHIS2 target (``status`` exported / failed / skipped), what
  it became there (``kind`` event or data values, ``remote_ref``: the event uid —
  chosen *before* sending, so a retry after a lost answer updates the same event —,
  or ``dataSet/period/orgUnit`` for data values), how many attempts, the last error in
  the user's terms and DHIS2's own words (``details``).  ``target`` names the DHIS2
  server and the program or data set (``https://dhis2.example.org#events:eBAyeGv0exc``),
  never credentials.  A submission is sent to a target until it is ``exported`` there,
  then never again (unless asked with ``--again``).
"""

from storage.migrations.attribute_tables import Table, create, drop

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


TABLES: list[Table] = [
    (
        "data_export",
        "Submissions exported to DHIS2 (one row per submission and target).",
        [
            "fid {PK}",
            "instance_id TEXT NOT NULL",
            "target TEXT NOT NULL",
            "kind TEXT NOT NULL CHECK (kind IN ('event', 'data_values'))",
            "status TEXT NOT NULL DEFAULT 'pending'"
            " CHECK (status IN ('pending', 'exported', 'failed', 'skipped'))",
            "remote_ref TEXT",
            "attempts {INT} NOT NULL DEFAULT 0",
            "error TEXT",
            "details {JSON}",
            "first_attempt_at {TS} NOT NULL DEFAULT {NOW}",
            "last_attempt_at {TS}",
            "exported_at {TS}",
            "UNIQUE (instance_id, target)",
        ],
        ["CREATE INDEX data_export_target_idx ON data_export (target, status)"],
    ),
]


def upgrade() -> None:
    create(TABLES)


def downgrade() -> None:
    drop(TABLES)
