"""Submission exports to DHIS2 (owned by the sync work).

Revision ID: 0005
Revises: 0004

Reserved slot in the migration chain, so work on several surfaces can add tables
in parallel without forking the chain.  Its owner replaces this docstring and
the body with the real tables (imitate 0002_sync_state.py).
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
