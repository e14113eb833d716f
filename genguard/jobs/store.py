"""The jobs store: SQLAlchemy Core over SQLite (WAL, one file: the default) or PostgreSQL (psycopg 3).

Every call is one short transaction (blocking: the gateway runs them in a thread). Claiming is one
`UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED LIMIT 1)`: on PostgreSQL concurrent workers skip each
other's rows; SQLite has a single writer, and the statement's own `WHERE status ...` re-check makes a claim
atomic there. A claim holds a lease that the worker renews; an expired lease (its worker was killed) makes the job
claimable again. Results are rows keyed by (job, item), inserted with ON CONFLICT DO NOTHING: an item is never
answered twice, whoever retries it.
"""

from __future__ import annotations

import json
import secrets
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import (Column, Float, ForeignKey, Index, Integer, MetaData, String, Table, Text, UniqueConstraint,
                        create_engine, delete, event, func, or_, select, update)
from sqlalchemy.exc import IntegrityError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINISHED = (SUCCEEDED, FAILED, CANCELLED)
# a job's webhook: none (no callback_url), pending (to deliver), delivered, failed (attempts exhausted)
NO_HOOK, HOOK_PENDING, HOOK_DELIVERED, HOOK_FAILED = "none", "pending", "delivered", "failed"

metadata = MetaData()
jobs = Table(
    "jobs", metadata,
    Column("id", String(32), primary_key=True),
    Column("owner", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("idempotency_key", String(255)),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float),
    Column("finished_at", Float),
    Column("total", Integer, nullable=False),
    Column("done", Integer, nullable=False, default=0),
    Column("names", Text, nullable=False),             # JSON list, one per item
    Column("options", Text, nullable=False),           # JSON: explain, explain_labels
    Column("metadata", Text),                          # JSON, the caller's, echoed back
    Column("callback_url", Text),
    Column("error", Text),
    Column("worker", String(64)),
    Column("lease_until", Float),
    Column("claims", Integer, nullable=False, default=0),
    Column("hook_status", String(16), nullable=False),
    Column("hook_next_at", Float),
    Column("hook_lease_until", Float),
    UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
)
Index("ix_jobs_claim", jobs.c.status, jobs.c.created_at)
Index("ix_jobs_owner", jobs.c.owner, jobs.c.created_at)
results = Table(
    "job_results", metadata,
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("item", Integer, primary_key=True),
    Column("document", Text, nullable=False),          # JSON: the item's /v1/detect document
)
deliveries = Table(
    "job_deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(32), ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("at", Float, nullable=False),
    Column("status_code", Integer),                    # the receiver's HTTP status; null when it was not reached
    Column("ok", Integer, nullable=False),
    Column("error", Text),
)
webhook_secrets = Table(
    "webhook_secrets", metadata,
    Column("owner", String(64), primary_key=True),
    Column("secret", String(128), nullable=False),     # whsec_<base64>: the Standard Webhooks form
)


@dataclass
class Claim:
    id: str
    owner: str
    total: int
    names: list[str]
    options: dict
    answered: set[int]                                 # items that already have a result (an earlier claim's)


def _connect_sqlite(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")        # another process (gateway, worker) holds the write lock
    cursor.close()


def engine_for(url: str):
    """A SQLAlchemy engine for a jobs URL: sqlite:///path, or postgresql://... (driven by psycopg 3)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    if url.startswith("sqlite"):
        from pathlib import Path

        path = url.split("///", 1)[1] if "///" in url else ""
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _connect_sqlite)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)


def _loads(text: str | None):
    return json.loads(text) if text else None


class Store:
    def __init__(self, url: str):
        self.url = url
        self.engine = engine_for(url)
        self.postgres = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def migrate(self) -> None:
        from .migrations import upgrade

        upgrade(self.engine)

    def _insert(self, table):
        if self.postgres:
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    # -- submission and reading ---------------------------------------------------------------------

    @staticmethod
    def new_id() -> str:
        return uuid.uuid4().hex

    def create(self, job_id: str, owner: str, names: list[str], options: dict, metadata_: object | None,
               callback_url: str | None, idempotency_key: str | None) -> tuple[str, bool]:
        """(job id, created): an existing job of this owner with the same idempotency key is returned as it is."""
        row = dict(id=job_id, owner=owner, status=QUEUED, idempotency_key=idempotency_key, created_at=time.time(),
                   total=len(names), done=0, names=json.dumps(names), options=json.dumps(options),
                   metadata=None if metadata_ is None else json.dumps(metadata_), callback_url=callback_url,
                   claims=0, hook_status=NO_HOOK)
        try:
            with self.engine.begin() as db:
                db.execute(jobs.insert().values(**row))
        except IntegrityError:
            existing = self.find_idempotent(owner, idempotency_key)
            if existing is None:
                raise
            return existing, False
        return job_id, True

    def find_idempotent(self, owner: str, idempotency_key: str | None) -> str | None:
        if not idempotency_key:
            return None
        with self.engine.connect() as db:
            return db.execute(select(jobs.c.id).where(jobs.c.owner == owner,
                                                      jobs.c.idempotency_key == idempotency_key)).scalar()

    def get(self, job_id: str, owner: str | None = None, with_results: bool = True) -> dict | None:
        """The job as the API shows it (None: no such job, or another owner's)."""
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self.engine.connect() as db:
            row = db.execute(query).mappings().first()
            if row is None:
                return None
            attempts = db.execute(select(deliveries).where(deliveries.c.job_id == job_id)
                                  .order_by(deliveries.c.attempt)).mappings().all()
            docs = db.execute(select(results.c.document).where(results.c.job_id == job_id)
                              .order_by(results.c.item)).scalars().all() if with_results else None
        return _job(row, attempts, [json.loads(d) for d in docs] if docs is not None else None)

    def list(self, owner: str, status: str | None, limit: int, before: tuple[float, str] | None) -> list[dict]:
        """The owner's jobs, newest first; `before`: (created_at, id) of the last job of the previous page."""
        query = select(jobs).where(jobs.c.owner == owner)
        if status:
            query = query.where(jobs.c.status == status)
        if before:
            query = query.where(or_(jobs.c.created_at < before[0],
                                    (jobs.c.created_at == before[0]) & (jobs.c.id < before[1])))
        query = query.order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit)
        with self.engine.connect() as db:
            rows = db.execute(query).mappings().all()
        return [_job(r, None, None) for r in rows]

    def cancel(self, job_id: str, owner: str) -> str | None:
        """The job's status after the request (None: not found): queued or running jobs become cancelled."""
        with self.engine.begin() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.owner == owner,
                                                    jobs.c.status.in_((QUEUED, RUNNING)))
                                 .values(status=CANCELLED, finished_at=time.time(), lease_until=None,
                                         hook_status=_hook_after(jobs), hook_next_at=time.time()))
            return db.execute(select(jobs.c.status).where(jobs.c.id == job_id, jobs.c.owner == owner)).scalar()

    # -- workers ------------------------------------------------------------------------------------------

    def claim(self, worker: str, lease_s: float) -> Claim | None:
        """The oldest queued job (or a running one whose lease expired), now this worker's for lease_s."""
        now = time.time()
        claimable = or_(jobs.c.status == QUEUED, (jobs.c.status == RUNNING) & (jobs.c.lease_until < now))
        candidate = select(jobs.c.id).where(claimable).order_by(jobs.c.created_at).limit(1)
        if self.postgres:
            candidate = candidate.with_for_update(skip_locked=True)
        claim = (update(jobs).where(jobs.c.id == candidate.scalar_subquery()).where(claimable)
                 .values(status=RUNNING, worker=worker, lease_until=now + lease_s, claims=jobs.c.claims + 1,
                         started_at=func.coalesce(jobs.c.started_at, now))
                 .returning(jobs.c.id, jobs.c.owner, jobs.c.total, jobs.c.names, jobs.c.options))
        with self.engine.begin() as db:
            row = db.execute(claim).first()
            if row is None:
                return None
            answered = set(db.execute(select(results.c.item).where(results.c.job_id == row.id)).scalars())
        return Claim(row.id, row.owner, row.total, json.loads(row.names), json.loads(row.options), answered)

    def claims(self, job_id: str) -> int:
        with self.engine.connect() as db:
            return db.execute(select(jobs.c.claims).where(jobs.c.id == job_id)).scalar() or 0

    def renew(self, job_id: str, worker: str, lease_s: float) -> bool:
        """Extend the lease; False when the job is no longer this worker's (cancelled, or taken over)."""
        with self.engine.begin() as db:
            return db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                 jobs.c.status == RUNNING)
                              .values(lease_until=time.time() + lease_s)).rowcount == 1

    def record(self, job_id: str, worker: str, documents: dict[int, dict]) -> bool:
        """Write item results (an item already answered keeps its first result); False when the job is no longer
        this worker's (its results are still kept: they are correct answers)."""
        with self.engine.begin() as db:
            if documents:
                db.execute(self._insert(results).values([{"job_id": job_id, "item": i, "document": json.dumps(d)}
                                                         for i, d in documents.items()]).on_conflict_do_nothing())
            done = select(func.count()).select_from(results).where(results.c.job_id == job_id).scalar_subquery()
            db.execute(update(jobs).where(jobs.c.id == job_id).values(done=done))
            return db.execute(select(jobs.c.status, jobs.c.worker).where(jobs.c.id == job_id)).first() == \
                (RUNNING, worker)

    def finish(self, job_id: str, worker: str, status: str, error: str | None = None) -> bool:
        with self.engine.begin() as db:
            return db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker,
                                                 jobs.c.status == RUNNING)
                              .values(status=status, error=error, finished_at=time.time(), lease_until=None,
                                      hook_status=_hook_after(jobs), hook_next_at=time.time())).rowcount == 1

    def release(self, job_id: str, worker: str) -> None:
        """Back to the queue (a stopping worker, or Triton unavailable): its answered items stay answered."""
        with self.engine.begin() as db:
            db.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.worker == worker, jobs.c.status == RUNNING)
                       .values(status=QUEUED, worker=None, lease_until=None))

    # -- webhooks --------------------------------------------------------------------------------------------

    def claim_delivery(self, lease_s: float) -> dict | None:
        """A finished job whose webhook is due, held for lease_s (one deliverer at a time)."""
        now = time.time()
        due = (jobs.c.hook_status == HOOK_PENDING) & (jobs.c.hook_next_at <= now) & \
            or_(jobs.c.hook_lease_until.is_(None), jobs.c.hook_lease_until < now)
        candidate = select(jobs.c.id).where(due).order_by(jobs.c.hook_next_at).limit(1)
        if self.postgres:
            candidate = candidate.with_for_update(skip_locked=True)
        with self.engine.begin() as db:
            job_id = db.execute(update(jobs).where(jobs.c.id == candidate.scalar_subquery()).where(due)
                                .values(hook_lease_until=now + lease_s).returning(jobs.c.id)).scalar()
        return None if job_id is None else self.get(job_id)

    def record_delivery(self, job_id: str, ok: bool, status_code: int | None, error: str | None,
                        max_attempts: int, backoff_s: float) -> int:
        """Record one attempt; the webhook is delivered, failed (attempts exhausted) or due again after backoff."""
        with self.engine.begin() as db:
            attempt = 1 + (db.execute(select(func.count()).select_from(deliveries)
                                      .where(deliveries.c.job_id == job_id)).scalar() or 0)
            db.execute(deliveries.insert().values(job_id=job_id, attempt=attempt, at=time.time(), ok=int(ok),
                                                  status_code=status_code, error=error))
            status = HOOK_DELIVERED if ok else HOOK_FAILED if attempt >= max_attempts else HOOK_PENDING
            delay = min(backoff_s * 2 ** (attempt - 1), 3600.0)
            db.execute(update(jobs).where(jobs.c.id == job_id)
                       .values(hook_status=status, hook_lease_until=None, hook_next_at=time.time() + delay))
        return attempt

    def webhook_secret(self, owner: str) -> str:
        """The owner's signing secret (made on first use; shared by every replica through the store)."""
        import base64

        with self.engine.begin() as db:
            fresh = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
            db.execute(self._insert(webhook_secrets).values(owner=owner, secret=fresh).on_conflict_do_nothing())
            return db.execute(select(webhook_secrets.c.secret).where(webhook_secrets.c.owner == owner)).scalar_one()

    # -- retention -------------------------------------------------------------------------------------------

    def expired(self, retention_s: float, limit: int = 100) -> list[str]:
        """Finished jobs older than the retention time whose webhook is settled."""
        with self.engine.connect() as db:
            return list(db.execute(select(jobs.c.id).where(jobs.c.status.in_(FINISHED),
                                                           jobs.c.finished_at < time.time() - retention_s,
                                                           jobs.c.hook_status != HOOK_PENDING).limit(limit)).scalars())

    def delete(self, job_ids: list[str]) -> None:
        with self.engine.begin() as db:
            for table in (results, deliveries):
                db.execute(delete(table).where(table.c.job_id.in_(job_ids)))
            db.execute(delete(jobs).where(jobs.c.id.in_(job_ids)))


def _hook_after(table):
    """The webhook status a job takes when it finishes: pending when it has a callback URL."""
    from sqlalchemy import case

    return case((table.c.callback_url.is_not(None), HOOK_PENDING), else_=NO_HOOK)


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _job(row, attempts, docs: list[dict] | None) -> dict:
    names = json.loads(row["names"])
    job = {"id": row["id"], "url": f"/v1/jobs/{row['id']}", "status": row["status"],
           "created_at": iso(row["created_at"]), "started_at": iso(row["started_at"]),
           "finished_at": iso(row["finished_at"]), "progress": {"done": row["done"], "total": row["total"]},
           "metadata": _loads(row["metadata"]), "callback_url": row["callback_url"], "error": row["error"],
           "webhook": {"status": row["hook_status"]}}
    if attempts is not None:
        job["webhook"]["attempts"] = [{"attempt": a["attempt"], "at": iso(a["at"]), "ok": bool(a["ok"]),
                                       "status_code": a["status_code"], "error": a["error"]} for a in attempts]
    if docs is not None:
        job["data"] = [{**d, "index": d.get("index"), "name": names[d["index"]]} for d in docs]
    job["_cursor"] = (row["created_at"], row["id"])
    job["_owner"] = row["owner"]
    return job
