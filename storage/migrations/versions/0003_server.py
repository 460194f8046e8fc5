"""Local server: users, projects, forms, submissions, attachments.

Revision ID: 0003
Revises: 0002

Frozen SQL rendered per backend (the style of 0002_sync_state.py); on GeoPackage every
table is registered in ``gpkg_contents`` as ``attributes``.

* ``app_user`` — people who sign in to ``georeg serve`` (``user`` is a reserved word in
  PostgreSQL, hence the prefix).  ``password_hash`` is an scrypt hash
  (``scrypt$n$r$p$salt$hash``); ``ha1_md5`` / ``ha1_sha256`` are the HTTP Digest
  ``H(username:realm:password)`` for ``digest_realm`` — what Digest needs, never the
  plain password.
* ``app_user_root`` — the subtrees (unit uuids) a user is limited to; none = everything.
* ``project`` — an Iaso app id (``app_id``) that forms are attached to.
* ``form`` / ``form_version`` — a form (XForm id) and its versions: the source file
  (XLSForm bytes, or NULL for a ready XForm), the XForm bytes served to phones, their md5.
  The newest version (highest fid) is the one served.
* ``form_media`` — media files of a form version (bytes inside the registry).
* ``submission`` — one row per instanceID (UNIQUE: concurrent retries cannot make two),
  the XML exactly as received, its JSON reading, the org unit and the geopoint, status,
  device, deprecatedID (edits), the encrypted flag and ``export_status`` for a later push.
* ``iaso_upload`` — the Iaso app's two-call upload (metadata, then or before the XML),
  paired by the XML's file name (``local_server/iaso_uploads.py``).
* ``entity`` — ODK entities (spec 2024.1): dataset, uuid, label, properties, version,
  created or updated by submissions of forms that declare ``<meta><entity>``; served as
  ``<dataset>.csv`` entity lists.
* ``form.entity_dataset`` — the dataset a form creates or updates entities in.
* ``attachment`` — files of a submission, **bytes inside the registry** (BLOB / BYTEA),
  so a submission and its files commit in one transaction and one file holds everything.
"""

from storage.migrations.attribute_tables import Table, create, drop

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


TABLES: list[Table] = [
    (
        "app_user",
        "Users of georeg serve (hashed passwords and Digest HA1, never plain text).",
        [
            "fid {PK}",
            "name TEXT NOT NULL UNIQUE",
            "role TEXT NOT NULL DEFAULT 'collector'"
            " CHECK (role IN ('collector', 'reviewer', 'admin'))",
            "password_hash TEXT NOT NULL",
            "digest_realm TEXT NOT NULL",
            "ha1_md5 TEXT NOT NULL",
            "ha1_sha256 TEXT NOT NULL",
            "active BOOLEAN NOT NULL DEFAULT {TRUE}",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "created_by TEXT",
        ],
        [],
    ),
    (
        "app_user_root",
        "Subtrees (unit uuids) a user may see and submit in.",
        [
            "fid {PK}",
            "user_id {INT} NOT NULL REFERENCES app_user(fid) ON DELETE CASCADE",
            "unit_uuid TEXT NOT NULL",
            "unit_ref TEXT",
            "UNIQUE (user_id, unit_uuid)",
        ],
        [],
    ),
    (
        "project",
        "Projects of the Iaso app (app_id); forms are attached to them.",
        [
            "fid {PK}",
            "name TEXT NOT NULL",
            "app_id TEXT NOT NULL UNIQUE",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
        ],
        [],
    ),
    (
        "form",
        "Forms served to ODK Collect and the Iaso app.",
        [
            "fid {PK}",
            "form_id TEXT NOT NULL UNIQUE",
            "title TEXT NOT NULL",
            "project_id {INT} REFERENCES project(fid) ON DELETE SET NULL",
            "org_unit_field TEXT",
            "entity_dataset TEXT",
            "active BOOLEAN NOT NULL DEFAULT {TRUE}",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "updated_at {TS} NOT NULL DEFAULT {NOW}",
        ],
        [],
    ),
    (
        "form_version",
        "Versions of a form: source XLSForm, XForm served, md5 of the XForm bytes.",
        [
            "fid {PK}",
            "form_fid {INT} NOT NULL REFERENCES form(fid) ON DELETE CASCADE",
            "version TEXT NOT NULL",
            "source_name TEXT",
            "xlsform {BLOB}",
            "xform {BLOB} NOT NULL",
            "md5 TEXT NOT NULL",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "created_by TEXT",
            "UNIQUE (form_fid, version)",
        ],
        [],
    ),
    (
        "form_media",
        "Media files of a form version.",
        [
            "fid {PK}",
            "form_version_fid {INT} NOT NULL REFERENCES form_version(fid) ON DELETE CASCADE",
            "filename TEXT NOT NULL",
            "content_type TEXT NOT NULL DEFAULT 'application/octet-stream'",
            "content {BLOB} NOT NULL",
            "md5 TEXT NOT NULL",
            "UNIQUE (form_version_fid, filename)",
        ],
        [],
    ),
    (
        "submission",
        "Submissions from ODK Collect and the Iaso app (one row per instanceID).",
        [
            "fid {PK}",
            "instance_id TEXT NOT NULL UNIQUE",
            "form_fid {INT} REFERENCES form(fid) ON DELETE SET NULL",
            "form_id TEXT NOT NULL",
            "form_version TEXT",
            "org_unit_uuid TEXT",
            "xml {BLOB} NOT NULL",
            "xml_md5 TEXT NOT NULL",
            "data {JSON}",
            "longitude {REAL}",
            "latitude {REAL}",
            "altitude {REAL}",
            "accuracy {REAL}",
            "status TEXT NOT NULL DEFAULT 'complete'"
            " CHECK (status IN ('complete', 'incomplete', 'superseded', 'deleted'))",
            "encrypted BOOLEAN NOT NULL DEFAULT {FALSE}",
            "deprecated_id TEXT",
            "device_id TEXT",
            "submitted_by TEXT",
            "source TEXT NOT NULL DEFAULT 'openrosa'",
            "received_at {TS} NOT NULL DEFAULT {NOW}",
            "updated_at {TS} NOT NULL DEFAULT {NOW}",
            "export_status TEXT NOT NULL DEFAULT 'pending'"
            " CHECK (export_status IN ('pending', 'exported', 'failed', 'skipped'))",
            "exported_at {TS}",
            "export_ref TEXT",
        ],
        [
            "CREATE INDEX submission_form_idx ON submission (form_id, fid)",
            "CREATE INDEX submission_unit_idx ON submission (org_unit_uuid)",
            "CREATE INDEX submission_received_idx ON submission (received_at)",
        ],
    ),
    (
        "iaso_upload",
        "Iaso app uploads: submission metadata and XML paired by file name.",
        [
            "fid {PK}",
            "file_name TEXT NOT NULL UNIQUE",
            "instance_uuid TEXT",
            "app_id TEXT",
            "metadata {JSON}",
            "submission_id {INT}",
            "received_by TEXT",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
        ],
        [],
    ),
    (
        "entity",
        "ODK entities (spec 2024.1) created and updated by submissions.",
        [
            "fid {PK}",
            "dataset TEXT NOT NULL",
            "uuid TEXT NOT NULL",
            "label TEXT",
            "properties {JSON}",
            "version {INT} NOT NULL DEFAULT 1",
            "deleted BOOLEAN NOT NULL DEFAULT {FALSE}",
            "submission_fid {INT} REFERENCES submission(fid) ON DELETE SET NULL",
            "created_at {TS} NOT NULL DEFAULT {NOW}",
            "updated_at {TS} NOT NULL DEFAULT {NOW}",
            "UNIQUE (dataset, uuid)",
        ],
        [],
    ),
    (
        "attachment",
        "Files of a submission (bytes inside the registry).",
        [
            "fid {PK}",
            "submission_fid {INT} NOT NULL REFERENCES submission(fid) ON DELETE CASCADE",
            "filename TEXT NOT NULL",
            "content_type TEXT NOT NULL DEFAULT 'application/octet-stream'",
            "size {INT} NOT NULL",
            "md5 TEXT NOT NULL",
            "content {BLOB} NOT NULL",
            "received_at {TS} NOT NULL DEFAULT {NOW}",
            "UNIQUE (submission_fid, filename)",
        ],
        [],
    ),
]


def upgrade() -> None:
    create(TABLES)


def downgrade() -> None:
    drop(TABLES)
