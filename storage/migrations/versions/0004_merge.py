"""Merge: merge runs and conflicts (owned by the compare-and-merge work).

Revision ID: 0004
Revises: 0003

Reserved slot in the migration chain, so work on several surfaces can add tables
in parallel without forking the chain.  Its owner replaces this docstring and
the body with the real tables (imitate 0002_sync_state.py).
"""

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
