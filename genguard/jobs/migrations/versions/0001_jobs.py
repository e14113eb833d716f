"""jobs, their per-item results, webhook deliveries, per-owner webhook secrets

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(255)),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("total", sa.Integer, nullable=False),
        sa.Column("done", sa.Integer, nullable=False),
        sa.Column("names", sa.Text, nullable=False),
        sa.Column("options", sa.Text, nullable=False),
        sa.Column("metadata", sa.Text),
        sa.Column("callback_url", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("worker", sa.String(64)),
        sa.Column("lease_until", sa.Float),
        sa.Column("claims", sa.Integer, nullable=False),
        sa.Column("hook_status", sa.String(16), nullable=False),
        sa.Column("hook_next_at", sa.Float),
        sa.Column("hook_lease_until", sa.Float),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )
    op.create_index("ix_jobs_claim", "jobs", ["status", "created_at"])
    op.create_index("ix_jobs_owner", "jobs", ["owner", "created_at"])
    op.create_table(
        "job_results",
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("item", sa.Integer, primary_key=True),
        sa.Column("document", sa.Text, nullable=False),
    )
    op.create_table(
        "job_deliveries",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("status_code", sa.Integer),
        sa.Column("ok", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
    )
    op.create_index("ix_job_deliveries_job_id", "job_deliveries", ["job_id"])
    op.create_table(
        "webhook_secrets",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("secret", sa.String(128), nullable=False),
    )


def downgrade() -> None:
    for table in ("webhook_secrets", "job_deliveries", "job_results", "jobs"):
        op.drop_table(table)
