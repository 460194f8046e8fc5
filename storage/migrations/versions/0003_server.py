"""Local server: users, projects, forms, submissions, attachments (owned by the LAN-server work).

Revision ID: 0003
Revises: 0002

Reserved slot in the migration chain, so work on several surfaces can add tables
in parallel without forking the chain.  Its owner replaces this docstring and
the body with the real tables (imitate 0002_sync_state.py).
"""

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
