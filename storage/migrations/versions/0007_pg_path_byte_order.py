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

from storage.migrations.attribute_tables import run_on_postgis

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPGRADE = ['ALTER TABLE org_unit ALTER COLUMN path TYPE text COLLATE "C"']
DOWNGRADE = ['ALTER TABLE org_unit ALTER COLUMN path TYPE text COLLATE pg_catalog."default"']


def upgrade() -> None:
    run_on_postgis(UPGRADE)


def downgrade() -> None:
    run_on_postgis(DOWNGRADE)
