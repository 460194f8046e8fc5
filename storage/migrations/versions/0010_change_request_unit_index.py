"""Change requests are found by the unit they are about and the parent they name, and
submissions by the instance an edit replaces.

Revision ID: 0010
Revises: 0009

Frozen SQL (never edit once released), the same on every backend.

Several reads look change requests up by unit: where a unit made on a phone and still
waiting for review lies (the area checks of the server, for each request listed), the
requests about the units a delete removes, the request a phone sends again.  Without
an index each lookup reads every request: on PostgreSQL, listing 10,000 requests for a
reviewer limited to one area took 6.5-18 s that way.  ``new_parent_uuid`` is indexed
too: the same checks follow a new unit up to the parent its creation names.

``submission.deprecated_id``: each submission stored asks whether an edit of it came
first (phones retry, the Iaso app uploads in its own order); without the index that
read every stored XML (it comes after them in the row), a third of the submissions
benchmark's throughput.
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEXES = (
    ("change_request_unit_idx", "change_request (unit_uuid)"),
    ("change_request_parent_idx", "change_request (new_parent_uuid)"),
    ("submission_deprecated_idx", "submission (deprecated_id)"),
)


def upgrade() -> None:
    for name, on in INDEXES:
        op.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {on}")


def downgrade() -> None:
    for name, _on in INDEXES:
        op.execute(f"DROP INDEX IF EXISTS {name}")
