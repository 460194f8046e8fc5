"""Change requests are found by the unit they are about, and by the parent they name.

Revision ID: 0010
Revises: 0009

Frozen SQL (never edit once released), the same on every backend.

Several reads look change requests up by unit: where a unit made on a phone and still
waiting for review lies (the area checks of the server, for each request listed), the
requests about the units a delete removes, the request a phone sends again.  Without
an index each lookup reads every request: on PostgreSQL, listing 10,000 requests for a
reviewer limited to one area took 6.5-18 s that way.  ``new_parent_uuid`` is indexed
too: the same checks follow a new unit up to the parent its creation names.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEXES = (
    ("change_request_unit_idx", "change_request (unit_uuid)"),
    ("change_request_parent_idx", "change_request (new_parent_uuid)"),
)


def upgrade() -> None:
    for name, on in INDEXES:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")


def downgrade() -> None:
    for name, _on in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
