"""The first registry schema: sources, versions, units, groups, audit, links, change requests.

Revision ID: 0001
Revises:
"""

from alembic import op

from storage.migrations import schema_0001

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    schema_0001.create(bind, bind.dialect.georeg_backend.value)  # type: ignore[attr-defined]


def downgrade() -> None:
    raise NotImplementedError("The first schema cannot be downgraded: delete the registry instead.")
